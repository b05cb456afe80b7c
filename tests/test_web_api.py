"""The JSON API over HTTP (FastAPI's test client): the same ranking as ``MediaSearch``,
the filters, safe media serving, and hostile requests that get a clear 4xx, never a
500, and read nothing the store does not list."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import threading
import uuid

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from search_helpers import TARGET, TEXT, WINDOW_START_S
from web_helpers import web_store

from search import MediaSearch
from web.app import create_app

LOOPBACK = "http://127.0.0.1"  # without a token the page answers at loopback names only
pytestmark = pytest.mark.slow  # ffmpeg + the tiny model ingest: seconds for the module


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return web_store(tmp_path_factory.getbasetemp() / "web-store")


@pytest.fixture(scope="module")
def api(store):
    with TestClient(create_app(store.settings), base_url=LOOPBACK) as client:
        yield client


@pytest.fixture(scope="module")
def reference(api):
    # The app's own client: one process holds the embedded store, so the Python
    # reference goes through the very MediaSearch the server searches with.
    return api.app.state.service.client


def ranked(hits) -> list[tuple[str, float, float | None]]:
    return [(h["item_id"], round(h["score"], 6), h["start_s"]) for h in hits]


def reference_ranked(results) -> list[tuple[str, float, float | None]]:
    return [(h.item_id, round(h.score, 6), h.start_s) for h in results]


def hit_for(api, member: str) -> dict:
    hits = api.get("/api/search", params={"text": TEXT, "limit": 100}).json()["hits"]
    return next(h for h in hits if h["member"] == member)


# --- ranking parity ---------------------------------------------------------------------


def test_text_search_ranks_as_the_python_client_does(api, reference: MediaSearch):
    got = api.get("/api/search", params={"text": TEXT, "limit": 5, "moments": 2}).json()
    want = reference.search(text=TEXT, limit=5, moments=2)
    assert ranked(got["hits"]) == reference_ranked(want) and len(want) == 5
    assert [len(h["moments"]) for h in got["hits"]] == [len(h.moments) for h in want]
    page = api.get("/api/search", params={"text": TEXT, "limit": 5, "offset": 5}).json()
    assert ranked(page["hits"]) == reference_ranked(reference.search(text=TEXT, limit=5,
                                                                     offset=5, moments=3))


def test_an_uploaded_sound_cut_from_a_video_finds_that_video(api, store, reference):
    window = store.queries / "window.wav"
    with window.open("rb") as f:
        got = api.post("/api/search", data={"request": json.dumps({"limit": 4})},
                       files=[("file", ("window.wav", f, "audio/wav"))]).json()
    top = got["hits"][0]
    assert top["member"] == TARGET and top["modality"] == "audio"
    assert top["start_s"] == WINDOW_START_S
    assert ranked(got["hits"]) == reference_ranked(reference.search(audio=window, limit=4,
                                                                    moments=3))


def test_weights_and_a_negative_rank_as_the_python_client_does(api, store, reference):
    request = {"text": [TEXT], "negative_text": ["a red square"], "negative_weight": 0.3,
               "weights": {"text": 0.4, "image": 0.6}, "limit": 6}
    image = store.media / "images/red.png"
    with image.open("rb") as f:
        got = api.post("/api/search", data={"request": json.dumps(request)},
                       files=[("file", ("red.png", f, "image/png"))]).json()
    want = reference.search(text=TEXT, image=image, weights={"text": 0.4, "image": 0.6},
                            negative={"text": "a red square"}, negative_weight=0.3, limit=6,
                            moments=3)
    assert ranked(got["hits"]) == reference_ranked(want)


def test_more_like_this_searches_with_the_points_own_vector(api, reference):
    seed = hit_for(api, "images/red.png")
    got = api.get("/api/search", params={"like": seed["point_id"], "limit": 3}).json()
    assert got["hits"][0]["item_id"] == seed["item_id"]
    assert got["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    vector = reference.stored_vector(seed["point_id"])
    assert ranked(got["hits"]) == reference_ranked(reference.search(vector=vector, limit=3,
                                                                    moments=3))


# --- filters ------------------------------------------------------------------------------


@pytest.mark.parametrize(("params", "holds"), [
    ({"kind": "image"}, lambda h: h["kind"] == "image"),
    ({"kind": ["audio", "video"]}, lambda h: h["kind"] in ("audio", "video")),
    ({"modality": "audio"}, lambda h: all(m["modality"] == "audio" for m in h["moments"])),
    ({"from_s": 2}, lambda h: all(m["start_s"] >= 2 for m in h["moments"])),
    ({"to_s": 2}, lambda h: all(m["end_s"] <= 2 for m in h["moments"])),
])
def test_filters_hold_for_every_hit(api, params, holds):
    hits = api.get("/api/search", params={"text": TEXT, "limit": 50, **params}).json()["hits"]
    everything = api.get("/api/search", params={"text": TEXT, "limit": 50}).json()["hits"]
    assert hits and all(holds(h) for h in hits) and len(hits) < len(everything)


def test_the_archive_filter_keeps_one_source(api, store):
    hits = api.get("/api/search", params={"text": TEXT, "limit": 50,
                                          "archive": str(store.archive)}).json()["hits"]
    assert sorted(h["member"] for h in hits) == ["inside/blue.png", "inside/chime.wav"]
    info = api.get("/api/info").json()
    assert set(info["archives"]) == {str(store.media), str(store.archive)}


# --- media and pictures -------------------------------------------------------------------


@pytest.mark.parametrize("member", ["clips/target.mkv", "images/red.png", "sounds/hum.wav",
                                    "sensors/room.depth.png", "sensors/hand.thermal.png",
                                    "sensors/walk.imu.csv", "inside/blue.png"])
def test_every_kind_but_text_has_a_picture(api, member):
    response = api.get(hit_for(api, member)["thumb_url"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(response.content))
    assert 0 < picture.width <= 320 and picture.height > 0


def test_a_text_has_its_snippet_and_no_picture(api):
    hit = hit_for(api, "notes/dawn.txt")
    assert hit["text"] == TEXT
    assert api.get(hit["thumb_url"]).status_code == 404


def test_a_video_browsers_cannot_play_is_served_as_h264_with_ranges(api, tmp_path):
    hit = hit_for(api, TARGET)  # MPEG-4 part 2 in Matroska
    part = api.get(hit["media_url"], headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and len(part.content) == 100
    assert part.headers["content-type"] == "video/mp4"
    whole = api.get(hit["media_url"])
    (tmp_path / "played.mp4").write_bytes(whole.content)
    codec = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                            "stream=codec_name", "-of", "csv=p=0", str(tmp_path / "played.mp4")],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert codec == "h264" and whole.content[:100] == part.content
    original = api.get(hit["media_url"], params={"original": True})
    assert hashlib.sha256(original.content).hexdigest() == hit["item_id"]


def test_a_member_of_a_compressed_archive_is_served_as_its_ingested_bytes(api):
    hit = hit_for(api, "inside/chime.wav")
    response = api.get(hit["media_url"])
    assert response.status_code == 200 and response.headers["content-type"].startswith("audio/")
    assert hashlib.sha256(response.content).hexdigest() == hit["item_id"]


def test_a_file_changed_or_replaced_by_a_link_is_not_served(tmp_path):
    from search_helpers import settings_for

    from flows.run import start_run

    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "kept.txt").write_text("a note kept as it was\n")
    (folder / "edited.txt").write_text("a note edited after ingest\n")
    (folder / "linked.txt").write_text("a note replaced by a link\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("outside every source\n")
    settings = settings_for(tmp_path / "home")
    start_run(str(folder), settings, executor="local")
    (folder / "edited.txt").write_text("a note edited after ingest, and longer now\n")
    (folder / "linked.txt").unlink()
    (folder / "linked.txt").symlink_to(secret)

    with TestClient(create_app(settings), base_url=LOOPBACK) as api:
        hits = api.get("/api/search", params={"text": "a note", "limit": 10}).json()["hits"]
        served = {h["member"]: api.get(h["media_url"], params={"original": True})
                  for h in hits}

    assert served["kept.txt"].status_code == 200
    assert served["edited.txt"].status_code == 409 and "changed" in served["edited.txt"].text
    assert served["linked.txt"].status_code == 404
    assert all(b"outside every source" not in r.content for r in served.values())


# --- hostile requests ---------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "/api/points/..%2F..%2Fetc%2Fpasswd/media", "/api/points/%2Fetc%2Fpasswd/thumb",
    "/api/points/not-a-uuid", f"/api/points/{uuid.uuid4()}/media", "/api/runs/..%2F..%2Fx",
    "/api/runs/.hidden", "/api/points/../../../etc/passwd",
])
def test_ids_that_name_no_stored_thing_are_refused(api, path):
    response = api.get(path)
    assert 400 <= response.status_code < 500, (path, response.status_code, response.text)
    assert "root:" not in response.text


@pytest.mark.parametrize(("request_field", "status"), [
    ("{not json", 400), ('{"limit": 1000}', 422), ('{"colour": "red"}', 422),
    ('{"text": ["x"], "weights": {"smell": 1}}', 400), ("[]", 422), ("{}", 400),
])
def test_malformed_searches_get_a_clear_error(api, request_field, status):
    response = api.post("/api/search", data={"request": request_field})
    assert response.status_code == status, response.text
    assert response.json()["detail"]


def test_uploads_of_no_media_kind_or_too_large_are_refused(store, reference):
    from web.api import Service

    settings = store.settings.model_copy(update={"max_query_bytes": 10_000})
    service = Service(settings, client=reference)  # the store stays with the module's app
    with TestClient(create_app(settings, service=service), base_url=LOOPBACK) as api:
        junk = api.post("/api/search", files=[("file", ("x.bin", b"\x00\x01" * 100, "x/y"))])
        big = api.post("/api/search", files=[("file", ("big.wav", b"\0" * 2_000_000, "audio/wav"))])
        over = api.post("/api/search", files=[("file", ("w.wav", b"\0" * 20_000, "audio/wav"))])
    assert junk.status_code == 400 and "not a media kind" in junk.json()["detail"]
    assert big.status_code == 413
    assert over.status_code == 413 and "larger than 10000 bytes" in over.json()["detail"]
    assert not list((store.settings.home / "tmp").glob("mediabind-upload-*"))  # cleaned up


def test_a_token_is_required_when_set(store, api):
    service = api.app.state.service
    with TestClient(create_app(store.settings, token="s3cret", service=service), base_url=LOOPBACK) as api:
        assert api.get("/api/info").status_code == 401
        assert api.get("/api/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert api.get("/api/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        first = api.get("/", params={"token": "s3cret"})  # the page's link sets a cookie
        assert first.status_code == 200
        assert api.get("/api/info").status_code == 200  # the cookie carries it now


def test_a_file_named_like_a_page_is_served_as_what_its_bytes_are(tmp_path):
    from search_helpers import settings_for

    from flows.run import start_run

    folder = tmp_path / "drop"
    folder.mkdir()
    picture = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(picture, "PNG")
    (folder / "trick.html").write_bytes(picture.getvalue() + b"<script>alert(1)</script>")
    settings = settings_for(tmp_path / "home")
    start_run(str(folder), settings, executor="local")
    with TestClient(create_app(settings), base_url=LOOPBACK) as api:
        hit, = api.get("/api/search", params={"text": "x"}).json()["hits"]
        served = api.get(hit["media_url"], params={"original": True})
    assert hit["kind"] == "image" and served.status_code == 200
    assert served.headers["content-type"] == "image/png"
    assert served.headers["x-content-type-options"] == "nosniff"
    assert served.headers["content-security-policy"] == "sandbox"


def test_without_a_token_only_loopback_names_are_answered(api):
    rebound = api.get("/api/info", headers={"Host": "attacker.example:8765"})
    assert rebound.status_code == 421 and "--token" in rebound.json()["detail"]
    assert api.get("/api/info", headers={"Host": "localhost:8765"}).status_code == 200


def test_a_run_is_taken_only_with_the_run_secret(api, store):
    body = {"source": str(store.media), "run_id": "r-from-outside"}
    refused = api.post("/api/runs", json=body)
    assert refused.status_code == 403  # this app was made with no run secret
    assert api.get("/api/runs/r-from-outside/state").status_code == 404


def test_the_openapi_schema_is_served(api):
    schema = api.get("/api/openapi.json").json()
    assert {"/api/search", "/api/points/{point_id}/media", "/api/runs"} <= set(schema["paths"])


# --- runs and concurrency -----------------------------------------------------------------


def test_the_runs_carry_the_figures_the_cli_printed(api, store):
    runs = api.get("/api/runs").json()
    assert {r["run_id"] for r in runs} == set(store.summaries)
    for run_id, printed in store.summaries.items():
        assert api.get(f"/api/runs/{run_id}").json()["summary"] == printed


def test_many_requests_at_once_give_the_answers_of_one(api):
    one = ranked(api.get("/api/search", params={"text": TEXT, "limit": 8}).json()["hits"])
    answers, errors = [], []

    def ask() -> None:
        try:
            for _ in range(5):
                response = api.get("/api/search", params={"text": TEXT, "limit": 8})
                answers.append((response.status_code, ranked(response.json()["hits"])))
                api.get("/api/info").raise_for_status()
        except Exception as exc:  # noqa: BLE001 - collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(answers) == 80
    assert all(answer == (200, one) for answer in answers)


def test_a_store_held_by_another_process_is_named_not_a_stack_trace(store, tmp_path):
    home = tmp_path / "held"
    shutil.copytree(store.settings.home / "qdrant", home / "qdrant")
    settings = store.settings.model_copy(update={"home": home})
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from schemas import Settings; from search.store import "
         "open_store; s = open_store(Settings(home=sys.argv[1], store='edge')); "
         "print('ready', flush=True); sys.stdin.readline()", str(home)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with TestClient(create_app(settings), base_url=LOOPBACK) as api:
            response = api.get("/api/info")
        assert response.status_code == 503
        detail = response.json()["detail"]
        assert f"pid {holder.pid}" in detail and "let that run finish" in detail
    finally:
        holder.communicate("done\n", timeout=30)


def test_a_member_of_a_plain_tar_is_read_by_range_not_through_the_archive(tmp_path):
    import os
    import tarfile

    import psutil
    from search_helpers import settings_for

    from flows.run import start_run

    work = tmp_path / "work"
    work.mkdir()
    (work / "big.bin").write_bytes(os.urandom(8 << 20))  # read through, it would cost 8 MiB
    Image.new("RGB", (40, 30), "green").save(work / "green.png")
    archive = tmp_path / "plain.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(work / "big.bin", arcname="big.bin")
        tar.add(work / "green.png", arcname="late/green.png")
    settings = settings_for(tmp_path / "home")
    start_run(str(archive), settings, executor="local")

    with TestClient(create_app(settings), base_url=LOOPBACK) as api:
        hit = api.get("/api/search", params={"text": "green", "kind": "image"}).json()["hits"][0]
        before = psutil.Process().io_counters().read_chars
        served = api.get(hit["media_url"], params={"original": True})
        read = psutil.Process().io_counters().read_chars - before

    assert hit["member"] == "late/green.png" and served.status_code == 200
    assert hashlib.sha256(served.content).hexdigest() == hit["item_id"]
    assert read < 1 << 20, f"read {read} bytes to serve a {len(served.content)}-byte member"


def test_a_member_of_a_zip_inside_a_folder_is_served_as_its_ingested_bytes(tmp_path):
    import zipfile

    from search_helpers import settings_for

    from flows.run import start_run

    folder = tmp_path / "drop"
    folder.mkdir()
    picture = io.BytesIO()
    Image.new("RGB", (30, 20), "orange").save(picture, "PNG")
    with zipfile.ZipFile(folder / "shots.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("day1/orange.png", picture.getvalue())
    settings = settings_for(tmp_path / "home")
    start_run(str(folder), settings, executor="local")
    with TestClient(create_app(settings), base_url=LOOPBACK) as api:
        hit, = api.get("/api/search", params={"text": "x"}).json()["hits"]
        served = api.get(hit["media_url"])
        picture_of_it = api.get(hit["thumb_url"])
    assert hit["source_uri"].endswith("shots.zip!/day1/orange.png")
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert hashlib.sha256(served.content).hexdigest() == hit["item_id"]
    assert picture_of_it.status_code == 200


def test_a_file_of_an_fsspec_source_is_fetched_once_and_checked(tmp_path):
    import fsspec
    from search_helpers import settings_for

    from flows.run import start_run

    memory = fsspec.filesystem("memory")  # an object store in this process: fsspec's own
    prefix = f"/bucket-{tmp_path.name}/shots"
    picture = io.BytesIO()
    Image.new("RGB", (20, 20), "teal").save(picture, "PNG")
    memory.pipe(f"{prefix}/teal.png", picture.getvalue())
    memory.pipe(f"{prefix}/note.txt", b"a note in the bucket\n")
    settings = settings_for(tmp_path / "home")
    start_run(f"memory:/{prefix}", settings, executor="local")
    with TestClient(create_app(settings), base_url=LOOPBACK) as api:
        hits = {h["member"]: h for h in api.get("/api/search", params={"text": "x"}).json()["hits"]}
        served = api.get(hits["teal.png"]["media_url"])
        memory.pipe(f"{prefix}/note.txt", b"a note changed since its ingest\n")
        changed = api.get(hits["note.txt"]["media_url"])
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert hashlib.sha256(served.content).hexdigest() == hits["teal.png"]["item_id"]
    assert changed.status_code == 409
