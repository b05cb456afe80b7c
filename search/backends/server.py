"""A Qdrant server through qdrant-client: the backend for many processes at once.

The API key comes from ``QDRANT_API_KEY`` as a ``SecretStr`` and is unwrapped
only in the call that builds the client: it never reaches a repr, a log line
or an exception message of ours (messages name the URL only).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from schemas.settings import Settings
from search.backends.local import ClientBackend

RETRY_STATUS = {408, 429, 500, 502, 503, 504}  # overload and gateway blips


class ServerBackend(ClientBackend):
    one_process = False

    def is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, UnexpectedResponse):
            return exc.status_code in RETRY_STATUS
        if isinstance(exc, ResponseHandlingException | ConnectionError | TimeoutError):
            return True
        return _is_transient_grpc(exc)


def _is_transient_grpc(exc: BaseException) -> bool:
    try:
        import grpc
    except ImportError:  # grpc is only there with prefer_grpc installs
        return False
    transient = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                 grpc.StatusCode.RESOURCE_EXHAUSTED}
    return isinstance(exc, grpc.RpcError) and exc.code() in transient  # type: ignore[attr-defined]


def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def server_client_args(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of QdrantClient for the configured server (key included)."""
    if not settings.qdrant_url:
        raise ValueError("the server store needs QDRANT_URL (e.g. https://qdrant.example:6333)")
    url = settings.qdrant_url
    key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
    return {"url": url, "api_key": key, "https": urlsplit(url).scheme == "https",
            "prefer_grpc": settings.qdrant_prefer_grpc, "timeout": 60}


def open_server(settings: Settings) -> ServerBackend:
    args = server_client_args(settings)
    client = QdrantClient(**args)
    try:
        client.get_collections()  # fail here, with a message we control
    except Exception as exc:
        client.close()
        detail = _scrub(f"{type(exc).__name__}: {exc}", args["api_key"])
        # from None: the chained exception is the client's, which we cannot vouch for.
        raise ConnectionError(f"cannot reach the Qdrant server at {args['url']}: {detail}") from None
    return ServerBackend(client, "server", args["url"])
