"""Security checks: no shell near file names, weights-only checkpoint loading, the Qdrant
API key and TLS honoured and never logged, nothing written outside the configured folders.
Each check records what it scanned or saw (``figures``, case = the check)."""

from __future__ import annotations

import ast
import logging
import socket
import tarfile
import tempfile
import threading
import traceback
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile import add_tar_file, add_tar_special, image_bytes, nested_archives
from pipeline_helpers import open_ready_store

from embed_workers.pipeline import run_ingest
from schemas import Settings

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "ingest", "embed_workers", "search", "flows")
SUBPROCESS_CALLS = {"run", "call", "check_call", "check_output", "Popen", "getoutput",
                    "getstatusoutput"}
SHELL_FUNCTIONS = {("os", "system"), ("os", "popen"), ("asyncio", "create_subprocess_shell"),
                   ("subprocess", "getoutput"), ("subprocess", "getstatusoutput")}


# --- static checks -------------------------------------------------------------------------

def package_sources() -> Iterator[tuple[Path, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            yield path, ast.parse(path.read_text(), filename=str(path))


def calls(tree: ast.Module) -> Iterator[ast.Call]:
    return (node for node in ast.walk(tree) if isinstance(node, ast.Call))


def dotted(func: ast.expr) -> tuple[str, str] | None:
    """(module, name) of a call like ``os.system(...)``; None for other shapes."""
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return func.value.id, func.attr
    return None


def is_string_command(arg: ast.expr) -> bool:
    """A command given as one string (a literal, an f-string, a concatenation, a format)."""
    if isinstance(arg, ast.Constant):
        return isinstance(arg.value, str)
    if isinstance(arg, ast.JoinedStr):
        return True
    if isinstance(arg, ast.BinOp):
        return is_string_command(arg.left) or is_string_command(arg.right)
    return isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute) and \
        arg.func.attr == "format"


def shell_findings(path: Path, tree: ast.Module) -> list[str]:
    found = []
    for call in calls(tree):
        where = f"{path.relative_to(REPO)}:{call.lineno}"
        name = dotted(call.func)
        for kw in call.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant)
                                          and kw.value.value is False):
                found.append(f"{where}: shell={ast.unparse(kw.value)}")
        if name in SHELL_FUNCTIONS:
            found.append(f"{where}: {'.'.join(name)}()")
        if name and name[0] == "subprocess" and name[1] in SUBPROCESS_CALLS and call.args \
                and is_string_command(call.args[0]):
            found.append(f"{where}: subprocess.{name[1]} with a string command")
    return found


def test_the_scanner_finds_what_it_looks_for(figures) -> None:
    bad = ast.parse("import os, subprocess\nos.system('x')\nsubprocess.run(f'ls {n}')\n"
                    "subprocess.Popen(['a'], shell=True)\nos.popen('x')\n")
    found = shell_findings(REPO / "x.py", bad)
    figures("security", case="scanner_self_test", planted=4, found=len(found))
    assert len(found) == 4
    good = ast.parse("import subprocess\nsubprocess.run(['ffprobe', str(p)], shell=False)\n")
    assert shell_findings(REPO / "x.py", good) == []


def test_no_shell_anywhere_in_the_packages(figures) -> None:
    sources = list(package_sources())
    found = [f for path, tree in sources for f in shell_findings(path, tree)]
    figures("security", case="no_shell", files_scanned=len(sources), findings=len(found))
    assert found == []


def torch_load_findings(path: Path, tree: ast.Module) -> list[str]:
    found = []
    for call in calls(tree):
        if dotted(call.func) != ("torch", "load"):
            continue
        weights_only = next((kw.value for kw in call.keywords if kw.arg == "weights_only"), None)
        if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
            found.append(f"{path.relative_to(REPO)}:{call.lineno}")
    return found


def test_every_torch_load_is_weights_only(figures) -> None:
    loads = [path for path, tree in package_sources() for call in calls(tree)
             if dotted(call.func) == ("torch", "load")]
    found = [f for path, tree in package_sources() for f in torch_load_findings(path, tree)]
    figures("security", case="torch_load_weights_only", torch_loads=len(loads),
            findings=len(found))
    assert loads, "no torch.load found: the scan is looking in the wrong place"
    assert found == []
    # numpy never unpickles file contents either (archive .npy files are hostile input).
    pickled = [f"{path.relative_to(REPO)}:{call.lineno}" for path, tree in package_sources()
               for call in calls(tree) if dotted(call.func) in (("np", "load"), ("numpy", "load"))
               and any(kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant)
                                                         and kw.value.value is False)
                       for kw in call.keywords)]
    assert pickled == []


# --- the Qdrant API key and TLS ----------------------------------------------------------------

class FirstBytes:
    """A localhost TCP server that records the first bytes of each connection, then hangs up."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(10)
        try:
            while True:
                conn, _ = self.sock.accept()
                with conn:
                    conn.settimeout(5)
                    try:
                        self.received.append(conn.recv(65536))
                    except OSError:
                        self.received.append(b"")
        except OSError:
            return

    def close(self) -> None:
        self.sock.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_server_store(monkeypatch, tmp_path: Path, url: str, key: str,
                      caplog) -> tuple[BaseException, Settings]:
    monkeypatch.setenv("QDRANT_URL", url)
    monkeypatch.setenv("QDRANT_API_KEY", key)
    monkeypatch.setenv("MEDIABIND_HOME", str(tmp_path / "home"))
    caplog.set_level(logging.DEBUG)  # every logger, every level
    settings = Settings()
    assert settings.store_kind == "server"
    from search.store import open_store

    with warnings.catch_warnings(record=True) as seen, \
            pytest.raises(Exception) as info:  # noqa: PT011 - any failure; its text is checked
        warnings.simplefilter("always")
        open_store(settings)
    assert all(key not in str(w.message) for w in seen)
    return info.value, settings


def assert_secret_absent(key: str, error: BaseException, settings: Settings, caplog) -> None:
    text = "".join(traceback.format_exception(error))
    assert key not in text
    assert key not in caplog.text and all(key not in r.getMessage() for r in caplog.records)
    assert key not in repr(settings) and key not in str(settings)
    assert key not in settings.model_dump_json() and key not in repr(Settings())


def test_api_key_never_logged_with_the_server_down(monkeypatch, tmp_path, caplog,
                                                    figures) -> None:
    key = f"key-{uuid.uuid4().hex}"
    error, settings = open_server_store(monkeypatch, tmp_path,
                                        f"http://127.0.0.1:{closed_port()}", key, caplog)
    assert isinstance(error, ConnectionError) and "cannot reach" in str(error)
    assert settings.qdrant_api_key is not None
    assert settings.qdrant_api_key.get_secret_value() == key  # read, just never shown
    figures("security", case="api_key_server_down", log_records=len(caplog.records))
    assert_secret_absent(key, error, settings, caplog)


def test_api_key_is_sent_as_a_header_over_http(monkeypatch, tmp_path, caplog, figures) -> None:
    key = f"key-{uuid.uuid4().hex}"
    server = FirstBytes()
    try:
        error, settings = open_server_store(monkeypatch, tmp_path,
                                            f"http://127.0.0.1:{server.port}", key, caplog)
    finally:
        server.close()
    request = b"".join(server.received).lower()
    figures("security", case="api_key_header_http",
            header_sent=f"api-key: {key}".encode() in request, log_records=len(caplog.records))
    assert f"api-key: {key}".encode() in request  # honoured: the server gets it
    assert_secret_absent(key, error, settings, caplog)


def test_https_url_speaks_tls(monkeypatch, tmp_path, caplog, figures) -> None:
    key = f"key-{uuid.uuid4().hex}"
    server = FirstBytes()
    try:
        error, settings = open_server_store(monkeypatch, tmp_path,
                                            f"https://127.0.0.1:{server.port}", key, caplog)
    finally:
        server.close()
    first = [b for b in server.received if b]
    figures("security", case="https_tls", connections=len(first),
            tls_hellos=sum(1 for b in first if b[:2] == b"\x16\x03"))
    assert first and all(b[:2] == b"\x16\x03" for b in first)  # a TLS ClientHello
    assert all(key.encode() not in b for b in first)  # never in clear text
    assert_secret_absent(key, error, settings, caplog)


# --- nothing written outside the configured folders ------------------------------------------

def snapshot(root: Path) -> dict[Path, float]:
    return {p: p.lstat().st_mtime for p in root.rglob("*")}


def hostile_archive(path: Path, outside: Path) -> Path:
    inner_name, inner = nested_archives(3, {"../../../../escape_nested.txt": b"x",
                                            "deep.txt": b"deep words"})
    with tarfile.open(path, "w:gz") as archive:
        add_tar_file(archive, "ok/photo.png", image_bytes("PNG"))
        add_tar_file(archive, "ok/notes.txt", b"words worth keeping\n")
        for name in ("../escape.txt", "../../escape2.txt", str(outside / "absolute.txt"),
                     "ok/../../escape3.txt", "ok\\..\\..\\escape4.txt"):
            add_tar_file(archive, name, b"escaped")
        add_tar_special(archive, "ok/link", tarfile.SYMTYPE, str(outside / "linked.txt"))
        add_tar_special(archive, "ok/hard", tarfile.LNKTYPE, str(outside / "hard.txt"))
        add_tar_file(archive, "ok/link", b"write through the link?")  # same name as the link
        add_tar_file(archive, f"nest/{inner_name}", inner)
    return path


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_nothing_is_written_outside_home_and_tmpdir(monkeypatch, tmp_path: Path,
                                                    figures) -> None:
    root = tmp_path / "sandbox"
    home, tmpdir, outside = root / "home", root / "tmpdir", root / "outside"
    for folder in (tmpdir, outside):
        folder.mkdir(parents=True)
    source = hostile_archive(root / "hostile.tgz", outside)
    monkeypatch.setenv("MEDIABIND_HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", None)  # recomputed from TMPDIR
    for name in ("QDRANT_URL", "QDRANT_API_KEY", "MEDIABIND_QDRANT_PATH", "MEDIABIND_RUNS_DIR",
                 "MEDIABIND_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(preset="imagebind_tiny", device="cpu", dtype="float32", store="edge",
                        executor="local", ffmpeg_timeout_s=10)
    assert settings.home == home
    before = snapshot(tmp_path)
    with open_ready_store(settings) as store:
        report = run_ingest(str(source), store, settings=settings)
        stored = store.count()
    assert stored > 0
    assert report.error is None and len(report.rejected) >= 8
    after = snapshot(tmp_path)
    changed = {p for p in after if before.get(p) != after[p]} | (set(before) - set(after))
    stray = sorted(str(p) for p in changed
                   if p != root and not any(p == a or a in p.parents for a in (home, tmpdir)))
    figures("security", case="writes_only_home_and_tmpdir", rejected=len(report.rejected),
            points_stored=stored, stray_writes=len(stray))
    assert stray == []
    assert list(outside.iterdir()) == []
    assert list((home / "tmp").iterdir()) == []  # spool files released
    # Relative escapes climb from the spool folder or the working directory.
    for folder in (tmp_path.parent, tmp_path.parent.parent, REPO, REPO.parent):
        assert not list(folder.glob("escape*")), folder
