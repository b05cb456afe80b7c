"""The production stack files: docker-compose.yml, .env.example, Dockerfile, prefect.yaml.

No Docker engine runs here, so these tests read the files and check what the
stack depends on: services, ports, volumes, health checks, the GPU
reservation, and that every variable compose reads is documented.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("qdrant", "prefect-server", "worker", "ray-head", "ray-gpu-worker")
MEDIABIND_SERVICES = ("worker", "ray-head", "ray-gpu-worker", "pool-worker")
# ${VAR}, ${VAR:-default}, ${VAR:?message}; `$${VAR}` is left to the container's shell.
COMPOSE_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?]([^}]*))?\}")


def read_env_example() -> dict[str, str]:
    pairs = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip().strip('"')  # compose drops the quotes
    return pairs


def interpolate(text: str, env: dict[str, str]) -> str:
    """What compose renders: ${VAR} from the env file (or its default), $$ -> $."""
    text = COMPOSE_VAR.sub(lambda m: env.get(m.group(1), m.group(2) or ""), text)
    return text.replace("$$", "$")


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_example()


@pytest.fixture(scope="module")
def compose(env_example) -> dict[str, Any]:
    """docker-compose.yml as compose would see it with .env.example as .env."""
    return yaml.safe_load(interpolate((ROOT / "docker-compose.yml").read_text(), env_example))


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    return env if isinstance(env, dict) else dict(e.split("=", 1) for e in env)


def test_all_services_are_defined(compose):
    assert set(SERVICES) <= set(compose["services"])


@pytest.mark.parametrize("name", ["qdrant", "prefect-server", "ray-head"])
def test_servers_have_health_checks(compose, name):
    check = compose["services"][name]["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1
    assert check["retries"] >= 3


def test_qdrant_is_persistent_keyed_and_probed(compose, env_example):
    qdrant = compose["services"]["qdrant"]
    assert qdrant["image"].split(":")[0].endswith("qdrant/qdrant")
    key = service_env(qdrant)["QDRANT__SERVICE__API_KEY"]
    assert key == env_example["QDRANT_API_KEY"]
    assert key == service_env(compose["services"]["worker"])["QDRANT_API_KEY"]
    assert any(v.endswith(":/qdrant/storage") for v in qdrant["volumes"])
    assert any(p.endswith(":6333") for p in qdrant["ports"])
    assert "/readyz" in " ".join(qdrant["healthcheck"]["test"])


def test_prefect_server_keeps_sqlite_on_a_volume(compose):
    server = compose["services"]["prefect-server"]
    assert server["command"][:3] == ["prefect", "server", "start"]
    env = service_env(server)
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    db_path = env["PREFECT_API_DATABASE_CONNECTION_URL"].split(":///")[1]
    assert any(db_path.startswith(v.split(":")[1]) for v in server["volumes"])
    assert "/api/health" in " ".join(server["healthcheck"]["test"])
    assert any(p.endswith(":4200") for p in server["ports"])


def test_gpu_worker_reserves_an_nvidia_gpu_and_joins_the_head(compose):
    worker = compose["services"]["ray-gpu-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "--address=ray-head:6379" in worker["command"]
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"


def test_ray_head_blocks_and_exposes_its_dashboard(compose):
    head = compose["services"]["ray-head"]
    assert {"--head", "--block"} <= set(head["command"])
    assert any(p.endswith(":8265") for p in head["ports"])
    assert head["build"] == "."


def test_worker_serves_against_the_whole_stack(compose):
    worker = compose["services"]["worker"]
    env = service_env(worker)
    for key in ("QDRANT_URL", "QDRANT_API_KEY", "PREFECT_API_URL", "RAY_ADDRESS",
                "MEDIABIND_ACCEPT_LICENSE", "MEDIABIND_PRESET", "MEDIABIND_CACHE_DIR"):
        assert key in env, key
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert "mediabind serve" in " ".join(worker["command"])
    for dependency in ("qdrant", "prefect-server", "ray-head"):
        assert worker["depends_on"][dependency]["condition"] == "service_healthy"


def ray_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every service that is a Ray node (`ray start`) or a Ray driver (RAY_ADDRESS)."""
    return {name: service for name, service in compose["services"].items()
            if "ray start" in " ".join(service.get("command") or [])
            or "RAY_ADDRESS" in service_env(service)}


def test_ray_nodes_and_drivers_are_the_expected_services(compose):
    assert set(ray_services(compose)) == {"ray-head", "ray-gpu-worker", "worker", "pool-worker"}


def test_every_ray_node_and_driver_shares_one_token_in_token_mode(compose, env_example):
    """Ray 2.60 refuses a node or driver without the head's token; a driver joining an
    explicit address sends it only with RAY_AUTH_MODE=token."""
    token = env_example["RAY_AUTH_TOKEN"]
    assert token
    for name, service in ray_services(compose).items():
        env = service_env(service)
        assert env.get("RAY_AUTH_MODE") == "token", name
        assert env.get("RAY_AUTH_TOKEN") == token, name


def test_the_ray_token_is_required_not_defaulted():
    """An unset RAY_AUTH_TOKEN must stop compose, not start nodes that cannot join."""
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name in ("ray-head", "ray-gpu-worker", "worker", "pool-worker"):
        value = service_env(raw["services"][name])["RAY_AUTH_TOKEN"]
        assert value.startswith("${RAY_AUTH_TOKEN:?"), (name, value)


@pytest.mark.parametrize("name", MEDIABIND_SERVICES)
def test_model_cache_and_archive_are_mounted_where_settings_look(compose, name):
    service = compose["services"][name]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in service["volumes"]}
    assert mounts["model-cache"] == service_env(service)["MEDIABIND_CACHE_DIR"]
    assert mounts["archive"] == "/archive"
    assert service["image"] == compose["services"]["ray-head"]["image"]
    assert service["build"] == "."  # built here, never pulled


def test_named_volumes_are_declared(compose):
    used = {v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", [])}
    assert {"model-cache", "archive", "qdrant-storage", "prefect-db"} <= used
    assert used <= set(compose["volumes"])


def test_every_compose_variable_is_documented(env_example):
    text = (ROOT / "docker-compose.yml").read_text()
    referenced = {name for name, _ in COMPOSE_VAR.findall(text)}
    assert referenced, "the pattern found no ${VAR} at all"
    assert referenced - set(env_example) == set()


def test_env_example_explains_every_variable():
    """Each variable, or the block of variables it belongs to, has a comment above it."""
    lines = (ROOT / ".env.example").read_text().splitlines()
    for number, line in enumerate(lines):
        if line.strip() and not line.startswith("#"):
            above = number - 1
            while above >= 0 and "=" in lines[above] and not lines[above].startswith("#"):
                above -= 1
            assert above >= 0 and lines[above].startswith("#"), f"{line!r} is not explained"


@pytest.mark.parametrize("name", ["worker", "pool-worker"])
def test_shell_variables_of_commands_are_set(compose, name):
    service = compose["services"][name]
    used = {var for var, _ in COMPOSE_VAR.findall(" ".join(service["command"]))}
    assert used and used <= set(service_env(service))


def test_env_example_explains_the_licence_flag(env_example):
    text = (ROOT / ".env.example").read_text()
    assert env_example["MEDIABIND_ACCEPT_LICENSE"] == "false"
    assert "CC BY-NC-SA 4.0" in text and "non-commercial" in text.lower()


def test_dockerfile_installs_ffmpeg_the_package_and_drops_root():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"apt-get install[^\n]*ffmpeg", text)
    assert re.search(r"pip install[^\n]* \.(\s|$)", text)
    assert "pyproject.toml" in text
    users = re.findall(r"^USER (\S+)", text, flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0")


def test_prefect_yaml_is_valid_and_limits_concurrency():
    from prefect import Flow
    from prefect.cli.deploy._models import PrefectYamlModel

    raw = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    model = PrefectYamlModel.model_validate(raw)
    assert model.deployments
    for deployment in model.deployments:
        path, _, name = deployment.entrypoint.partition(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert isinstance(getattr(module, name), Flow), deployment.entrypoint
        assert deployment.work_pool and deployment.work_pool.name
        limit = deployment.concurrency_limit
        assert (limit if isinstance(limit, int) else limit.limit) == 1


def test_prefect_yaml_parameters_match_the_flows():
    import inspect

    raw = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    for deployment in raw["deployments"]:
        path, _, name = deployment["entrypoint"].partition(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        accepted = inspect.signature(getattr(module, name).fn).parameters
        assert set(deployment["parameters"]) <= set(accepted), deployment["name"]
