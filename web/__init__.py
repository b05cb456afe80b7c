"""The analysts' web page and JSON API (``mediabind ui``), a client of ``search``.

``web.app.create_app`` builds the FastAPI app; ``web.api`` turns its requests into
``MediaSearch`` calls; ``web.media`` serves only what the store lists;
``web.thumbs`` draws a picture per point. It may import ``schemas``, ``ingest``
(decoders, for pictures) and ``search``; ``flows`` starts it.
"""
