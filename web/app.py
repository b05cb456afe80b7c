"""The web server: the search page, the runs page and the JSON API under ``/api``.

``create_app`` builds it on one ``Service`` (one store, one search client).
FastAPI serves the OpenAPI schema at ``/api/openapi.json``. Errors are JSON
``{"detail": ...}`` with a 4xx status that says whose fault it was; a store
held by another process is a 503 that names the holder and what to do.

With a token (``--token`` / ``MEDIABIND_UI_TOKEN``) every request needs it:
``Authorization: Bearer <token>``, or ``?token=`` once, which the server turns
into a cookie so the page's images and players carry it.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError

from schemas import Settings, get_settings
from search import Hit, ModelMismatchError, Moment
from search.backends.lock import StoreLockedError
from search.records import check_id
from web.api import RunRequest, SearchRequest, Service, UploadTooLarge, saved_uploads
from web.media import SAFE_HEADERS, TRANSCODED, MediaRefused, StoredFile, served_type

STATIC = Path(__file__).parent / "static"
TOKEN_COOKIE = "mediabind_token"
FORM_OVERHEAD = 1 << 20  # multipart boundaries and the request field, beyond the files
MAX_UPLOADS = 8
RUN_SECRET_HEADER = "X-Mediabind-Run-Secret"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def _import_before_threads() -> None:
    """Import what request and run threads import lazily, here on the starting thread.

    Two threads importing one package's modules in opposite orders (a search loading
    the model while a handed run imports ``flows.run``) deadlock in importlib; the
    run thread then died with ``_DeadlockError`` (seen in tests/test_handoff.py).
    """
    import embed_workers.encoder  # noqa: F401
    import flows.run  # noqa: F401
    import search.store  # noqa: F401


def create_app(settings: Settings | None = None, *, token: str | None = None,
               service: Service | None = None, run_secret: str | None = None) -> FastAPI:
    """The app on ``service`` (default: a new one on ``settings``, closed with the app;
    one handed in stays open for its owner). ``run_secret``: what a run handed to this
    server (``flows.handoff``) must carry; None: it takes no runs."""
    settings = settings or get_settings()
    _import_before_threads()
    owned = service is None
    service = service or Service(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if owned:
            service.close()

    app = FastAPI(title="mediabind", summary="Cross-modal search of media archives",
                  openapi_url="/api/openapi.json", docs_url=None, redoc_url=None,
                  lifespan=lifespan)
    app.state.service = service
    app.add_middleware(Guard, token=token, run_secret=run_secret,
                       max_body=settings.max_query_bytes * MAX_UPLOADS + FORM_OVERHEAD)
    _errors(app)
    _pages(app)
    _api(app, service)
    return app


# --- requests that get no further ----------------------------------------------------------


class Guard:
    """Refuses, before any route runs: a body of unknown or excessive size; without a
    token, a request to a name other than loopback's (a page elsewhere reaching this one
    through DNS rebinding); with one, a request without it; a handed run without the
    run secret. Plain ASGI: it adds nothing to the requests it lets through."""

    def __init__(self, app: Any, token: str | None, run_secret: str | None,
                 max_body: int) -> None:
        self.app, self.token, self.run_secret, self.max_body = app, token, run_secret, max_body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        refusal = self._refusal(request)
        if refusal is not None:
            return await refusal(scope, receive, send)
        if self.token is None or not request.query_params.get("token"):
            return await self.app(scope, receive, send)
        cookie = Response()
        cookie.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
        extra = [h for h in cookie.raw_headers if h[0] == b"set-cookie"]

        async def send_with_cookie(message: Any) -> None:  # the page's images carry it
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    def _refusal(self, request: Request) -> Response | None:
        length = request.headers.get("content-length")
        if request.method in ("POST", "PUT", "PATCH"):
            if length is None or not length.isdigit():
                return _error(411, "send a Content-Length (uploads are size-checked first)")
            if int(length) > self.max_body:
                return _error(413, f"the request is {length} bytes; the most is "
                                   f"{self.max_body} (MEDIABIND_MAX_QUERY_BYTES per upload)")
        if request.url.path == "/api/runs" and request.method == "POST":
            secret = request.headers.get(RUN_SECRET_HEADER, "")
            if self.run_secret is None or not hmac.compare_digest(secret.encode(),
                                                                  self.run_secret.encode()):
                return _error(403, "runs are handed here only by mediabind itself "
                                   "(flows.handoff, with the secret in MEDIABIND_HOME)")
        if self.token is None:
            if request.url.hostname not in LOOPBACK_NAMES:
                return _error(421, f"this page answers at loopback names only, not "
                                   f"{request.url.hostname!r}; serve it with --token to "
                                   "reach it by other names")
            return None
        given = _given_token(request)
        if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
            return _error(401, "this server needs its token: open the page as "
                               "/?token=TOKEN, or send Authorization: Bearer TOKEN")
        return None


def _given_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE)


def _errors(app: FastAPI) -> None:
    statuses: tuple[tuple[type[Exception], int], ...] = (
        (StoreLockedError, 503), (ModelMismatchError, 409), (MediaRefused, 404),
        (UploadTooLarge, 413),
        (KeyError, 404), (LookupError, 404), (FileNotFoundError, 404), (ValueError, 400),
        (ValidationError, 422),
    )
    for error, status in statuses:
        app.add_exception_handler(error, _handler(status))


def _handler(status: int) -> Any:
    async def handle(_: Request, exc: Exception) -> Response:
        code = exc.status if isinstance(exc, MediaRefused) else status
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        if isinstance(exc, StoreLockedError):
            message = (f"{message}. While it runs, this page cannot read the store: let that "
                       "run finish, or stop it, and reload")
        return _error(code, message)
    return handle


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


# --- pages -----------------------------------------------------------------------------


def _pages(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def search_page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/runs", include_in_schema=False)
    def runs_page() -> FileResponse:
        return FileResponse(STATIC / "runs.html", media_type="text/html")


# --- the JSON API ------------------------------------------------------------------------


def _api(app: FastAPI, service: Service) -> None:
    @app.get("/api/info", summary="The collection searched: model, policy, counts, archives")
    def info() -> dict[str, Any]:
        return service.info()

    @app.get("/api/search", summary="Search by text, by stored points, with filters")
    def search_get(text: Annotated[list[str], Query()] = [],  # noqa: B006 (FastAPI's form)
                   like: Annotated[list[str], Query()] = [],  # noqa: B006
                   negative_text: Annotated[list[str], Query()] = [],  # noqa: B006
                   kind: Annotated[list[str], Query()] = [],  # noqa: B006
                   modality: Annotated[list[str], Query()] = [],  # noqa: B006
                   archive: str | None = None, from_s: float | None = None,
                   to_s: float | None = None, limit: int = 12, offset: int = 0,
                   moments: int = 3) -> JSONResponse:
        request = SearchRequest(text=text, like=like, negative_text=negative_text, kinds=kind,
                                modalities=modality, archive=archive, from_s=from_s,
                                to_s=to_s, limit=limit, offset=offset, moments=moments)
        return _results(service, request, service.search(request))

    @app.post("/api/search", summary="Search with uploads: a JSON `request` plus files")
    def search_post(request: Annotated[str, Form()] = "{}",
                    file: Annotated[list[UploadFile], File()] = [],  # noqa: B006
                    negative_file: Annotated[list[UploadFile], File()] = [],  # noqa: B006
                    ) -> JSONResponse:
        try:
            parsed = SearchRequest.model_validate(json.loads(request))
        except json.JSONDecodeError as exc:
            raise ValueError(f"the request field is not JSON: {exc}") from None
        files = [(f.filename or "upload", False, f.file) for f in file]
        files += [(f.filename or "upload", True, f.file) for f in negative_file]
        if len(files) > MAX_UPLOADS:
            raise ValueError(f"at most {MAX_UPLOADS} files per search")
        with saved_uploads(files, service.settings.max_query_bytes,
                           service.settings.home) as uploads:
            return _results(service, parsed, service.search(parsed, uploads))

    @app.get("/api/points/{point_id}", summary="One stored point's payload")
    def point(point_id: str) -> dict[str, Any]:
        return service.point(point_id)

    @app.get("/api/points/{point_id}/thumb", summary="The picture of a point's moment (PNG)")
    def thumb(point_id: str) -> FileResponse:
        point_id = check_id(point_id)  # one spelling per point: one cached picture
        path = service.thumbs.of(point_id, service.point(point_id))
        return FileResponse(path, media_type="image/png",
                            headers={"Cache-Control": "private, max-age=86400", **SAFE_HEADERS})

    @app.get("/api/points/{point_id}/media",
             summary="The file of a point, playable (Range requests served)")
    def media(point_id: str, original: bool = False) -> FileResponse:
        stored = StoredFile.of(service.point(point_id))
        path = service.media.original(stored) if original else service.media.playable(stored)
        name = Path(stored.member).name or "media"
        if path.suffix in TRANSCODED:
            name = f"{Path(name).stem}{path.suffix}"
        media_type, disposition = served_type(stored, path)
        return FileResponse(path, media_type=media_type, filename=name,
                            content_disposition_type=disposition,
                            headers={"Cache-Control": "private, max-age=3600", **SAFE_HEADERS})

    @app.post("/api/runs", status_code=202,
              summary="Take a run over (flows.handoff): it runs in this process")
    def hand_run(body: RunRequest) -> dict[str, Any]:
        return service.start_run(body)

    @app.get("/api/runs/active", summary="Runs under way in this process, with progress")
    def active_runs() -> list[dict[str, Any]]:
        return service.active_runs()

    @app.get("/api/runs/{run_id}/state", summary="A handed run's state and progress")
    def run_state(run_id: str) -> dict[str, Any]:
        return service.run_state(run_id)

    @app.get("/api/runs", summary="Run reports, newest first")
    def runs() -> list[dict[str, Any]]:
        return service.runs()

    @app.get("/api/runs/{run_id}", summary="One run's report, with the CLI's summary text")
    def run(run_id: str) -> dict[str, Any]:
        return service.run(run_id)


def _results(service: Service, request: SearchRequest, results: Any) -> JSONResponse:
    hits = [hit_json(hit) for hit in results]
    # Plain JSON values already: a JSONResponse skips FastAPI's generic re-encoding.
    return JSONResponse({"collection": service.settings.collection,
                         "request": request.model_dump(), "offset": request.offset,
                         "limit": request.limit, "more": len(hits) == request.limit,
                         "hits": hits})


def hit_json(hit: Hit) -> dict[str, Any]:
    """One result as the page draws it: the file, its best moment, its other moments."""
    p = hit.payload
    return {"rank": hit.rank, "score": hit.score, "item_id": hit.item_id, "kind": hit.kind,
            "source_uri": hit.source_uri, "source_uris": list(hit.source_uris),
            "archive": p.get("archive"), "member": p.get("member"),
            "duration_s": p.get("duration_s"), **moment_json(_best(hit)),
            "moments": [moment_json(m) for m in hit.moments]}


def moment_json(m: Moment) -> dict[str, Any]:
    base = f"/api/points/{m.point_id}"
    return {"point_id": m.point_id, "modality": m.modality, "segment_index": m.segment_index,
            "start_s": m.start_s, "end_s": m.end_s, "score": m.score, "text": m.text,
            "label": _label(m), "thumb_url": f"{base}/thumb", "media_url": f"{base}/media"}


def _best(hit: Hit) -> Moment:
    return Moment(hit.score, hit.modality, hit.segment_index, hit.start_s, hit.end_s, hit.text,
                  hit.point_id)


def _label(m: Moment) -> str:
    from search.results import moment_label

    return moment_label(m.start_s, m.end_s)
