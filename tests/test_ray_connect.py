"""Joining a real token-authenticated Ray cluster through RAY_ADDRESS (ray_connect.connect).

One `ray start --head --block` per module, with token auth on, on free ports,
in a temp dir and with a HOME of its own (so neither the user's
~/.ray/auth_token nor their Ray instances are touched). Each driver is a
fresh Python process, because ray.init holds for the life of a process.

The cluster is stopped by process id, never with `ray stop`: `ray stop` kills
every Ray process on the machine by name, whoever started it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
START_WAIT_S = 240  # generous: the other tests may be loading the same two cores
DRIVER_WAIT_S = 300

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DRIVER = """
import json, sys
import ray
from embed_workers.executors.ray_connect import connect
from schemas import Settings

try:
    joined = connect(Settings(home=sys.argv[1]))
except Exception as error:
    print(json.dumps({"error": type(error).__name__, "message": str(error),
                      "runtime_error": isinstance(error, RuntimeError)}))
    sys.exit(0)

@ray.remote(num_cpus=0.5)
def square(x):
    return x * x

print(json.dumps({"joined": joined, "value": ray.get(square.remote(7), timeout=120)}))
ray.shutdown()
"""


@dataclass(frozen=True)
class Cluster:
    address: str
    token: str
    temp_dir: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without any RAY_* setting, with its own HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", RAY_enable_worker_prestart="0",
               PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def head_command(temp_dir: Path, port: int) -> list[str]:
    """A one-CPU head, dashboard off, every port it would take by default chosen free."""
    ports = {flag: free_port() for flag in (
        "--ray-client-server-port", "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
        "--node-manager-port", "--object-manager-port")}
    return [str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
            f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
            f"--temp-dir={temp_dir}", "--disable-usage-stats",
            *(f"{flag}={value}" for flag, value in ports.items())]


def wait_started(head: subprocess.Popen, log: Path) -> None:
    """Until `ray start` says the runtime started (printed before it blocks)."""
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        if "Ray runtime started" in log.read_text():
            return
        if head.poll() is not None:
            break
        time.sleep(1)
    pytest.fail(f"ray start --head did not come up:\n{log.read_text()[-4000:]}")


def stop_head(head: subprocess.Popen, temp_dir: Path) -> None:
    """SIGTERM the blocking `ray start` (it stops its own processes), then kill any leftover.

    Leftovers are found by the temp dir in their command line: only this
    cluster's processes carry it.
    """
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=90)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=30)
    for proc in psutil.process_iter(["cmdline"]):
        if str(temp_dir) in " ".join(proc.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):  # gone since it was listed
                proc.kill()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # Short and outside tmp_path: Ray's socket paths under it must stay under 108 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="mbray", dir="/tmp"))
    home = temp_dir / "home"
    home.mkdir()
    token, port = secrets.token_hex(32), free_port()
    log = temp_dir / "start.log"
    with log.open("w") as out:
        head = subprocess.Popen(
            head_command(temp_dir, port), stdout=out, stderr=subprocess.STDOUT,
            env=clean_env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token),
            start_new_session=True)
    try:
        wait_started(head, log)
        yield Cluster(f"127.0.0.1:{port}", token, temp_dir)
    finally:
        stop_head(head, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def run_driver(tmp_path: Path, address: str, **env: str) -> dict:
    """connect() in a fresh Python with RAY_ADDRESS=address; what it printed, as a dict."""
    home = tmp_path / "home"
    home.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, str(home / "mediabind")], cwd=ROOT,
        env=clean_env(home, RAY_ADDRESS=address, **env), capture_output=True, text=True,
        timeout=DRIVER_WAIT_S)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.returncode == 0 and lines, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(lines[-1])


def assert_names_what_to_set(outcome: dict, address: str) -> None:
    assert outcome["error"] == "RayAuthError" and outcome["runtime_error"], outcome
    message = outcome["message"]
    for needed in ("RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                   "~/.ray/auth_token", "ray get-auth-token", address):
        assert needed in message, (needed, message)


def test_right_token_joins_and_runs_a_task(cluster, tmp_path):
    outcome = run_driver(tmp_path, cluster.address, RAY_AUTH_MODE="token",
                         RAY_AUTH_TOKEN=cluster.token)
    assert outcome == {"joined": True, "value": 49}


def test_token_in_a_file_named_by_the_path_variable_joins(cluster, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(cluster.token)
    outcome = run_driver(tmp_path, cluster.address, RAY_AUTH_MODE="token",
                         RAY_AUTH_TOKEN_PATH=str(token_file))
    assert outcome == {"joined": True, "value": 49}


def test_no_token_and_no_mode_names_what_to_set(cluster, tmp_path):
    outcome = run_driver(tmp_path, cluster.address)
    assert_names_what_to_set(outcome, cluster.address)
    assert "RAY_AUTH_MODE is not set" in outcome["message"]


def test_token_mode_without_a_token_names_what_to_set(cluster, tmp_path):
    outcome = run_driver(tmp_path, cluster.address, RAY_AUTH_MODE="token")
    assert_names_what_to_set(outcome, cluster.address)
    assert "no token was found" in outcome["message"]


def test_token_without_the_mode_is_refused_and_says_so(cluster, tmp_path):
    """Ray sends no token from a driver joining an explicit address unless the mode is token."""
    outcome = run_driver(tmp_path, cluster.address, RAY_AUTH_TOKEN=cluster.token)
    assert_names_what_to_set(outcome, cluster.address)
    assert "RAY_AUTH_MODE is not set" in outcome["message"]


def test_wrong_token_names_what_to_set(cluster, tmp_path):
    outcome = run_driver(tmp_path, cluster.address, RAY_AUTH_MODE="token",
                         RAY_AUTH_TOKEN=secrets.token_hex(32))
    assert_names_what_to_set(outcome, cluster.address)
    assert "the token from RAY_AUTH_TOKEN does not match" in outcome["message"]


def test_unreachable_head_is_not_reported_as_an_auth_problem(tmp_path):
    """Nothing listens there: Ray's own ConnectionError, not advice about tokens.

    The port stays bound (not listening) so nothing else can take it. Ray tries
    a dead GCS ``RAY_gcs_server_port_wait_time_s`` times (default: its
    ``NUM_REDIS_GET_RETRIES``, each try waiting out its GCS connect timeouts);
    one try is enough to see which error comes out.
    """
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        outcome = run_driver(tmp_path, f"127.0.0.1:{held.getsockname()[1]}",
                             RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
                             RAY_gcs_server_port_wait_time_s="1")
    assert outcome["error"] == "ConnectionError" and not outcome["runtime_error"], outcome
