"""mediabind package (see DESIGN.md §2)."""
