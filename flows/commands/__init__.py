"""Subcommands of the `mediabind` CLI (see flows/cli.py)."""
