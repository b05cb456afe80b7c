"""Joining a Ray cluster (``RAY_ADDRESS``) or starting a local Ray, with token auth explained.

How Ray 2.60's token authentication decides things (read in the installed
package: ``ray/_private/authentication/authentication_token_setup.py``,
``ray/_private/worker.py`` ``init()``, ``ray/scripts/scripts.py`` ``start()``,
``ray/exceptions.py`` ``AuthenticationError``), and why this module checks what
it checks:

- The mode is the environment variable ``RAY_AUTH_MODE`` (``token`` or
  ``disabled``). A head started with ``ray start --head`` requires tokens when
  ``RAY_AUTH_MODE=token`` is set there, or when the variable is unset and the
  head finds a token anyway. ``ray start`` never creates or prints a token;
  ``ray.init()`` starting a local Ray does create ``~/.ray/auth_token``.
- The token is read from ``RAY_AUTH_TOKEN``, else the file named by
  ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``. ``ray get-auth-token``
  prints the one a process with that environment would use.
- A driver sends the token only in token mode. Joining an explicit address
  (``RAY_ADDRESS=host:port``) never switches the mode on by itself, so a
  driver that has ``RAY_AUTH_TOKEN`` but not ``RAY_AUTH_MODE=token`` is refused.
- A refused driver gets, after the GCS client's retries, a ``ConnectionError``
  whose cause's text names ``InvalidAuthToken`` (for a missing and for a wrong
  token alike); in token mode with no token at all, ``ray.init`` raises
  ``ray.exceptions.AuthenticationError`` before it connects.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import ray
from ray.exceptions import AuthenticationError

from schemas import Settings

AUTH_MODE_VAR = "RAY_AUTH_MODE"
TOKEN_VAR = "RAY_AUTH_TOKEN"
TOKEN_PATH_VAR = "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_FILE = "~/.ray/auth_token"
# What the GCS client's last error says when the head refused the token (or its absence).
REFUSED_TOKEN_MARK = "InvalidAuthToken"


class RayAuthError(RuntimeError):
    """The cluster at RAY_ADDRESS refused this driver's token, or its lack of one."""


def connect(settings: Settings) -> bool:
    """Join RAY_ADDRESS / settings.ray_address, else start a local Ray; True if this call did.

    True means Ray was initialised here, so the caller's ``ray.shutdown()``
    undoes exactly this call: it leaves the cluster it joined, or stops the
    local Ray it started. False: Ray was already up and belongs to the caller.
    """
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_enable_worker_prestart", "0")
    if settings.ray_address:
        join(settings.ray_address)
    else:
        start_local(settings)
    return True


def start_local(settings: Settings) -> None:
    """Start a local Ray with at least one CPU more than the decode and encode actors ask for.

    Pools whose CPUs add up to all of the machine's leave Ray Data's own tasks (the input
    blocks, the listing) none, and the run then waits forever.
    """
    cpus = max(os.cpu_count() or 1, settings.decode_workers + settings.encode_actors + 1)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)


def join(address: str) -> None:
    """Connect this process to the cluster at ``address`` as a driver.

    An auth refusal becomes a ``RayAuthError`` that says what to set, because
    Ray's own message does not say that a driver needs ``RAY_AUTH_MODE=token``
    too. Every other failure (unreachable head, bad address) propagates as is.
    """
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except (AuthenticationError, ConnectionError, RuntimeError) as error:
        if not is_auth_refusal(error):
            raise
        raise RayAuthError(auth_advice(address, os.environ)) from error


def is_auth_refusal(error: BaseException) -> bool:
    """Whether ``error`` or anything in its cause chain is Ray refusing a token."""
    return any(isinstance(e, AuthenticationError) or REFUSED_TOKEN_MARK in str(e)
               for e in _chain(error))


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then its causes (or contexts), each once."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def token_source(env: Mapping[str, str], home: Path | None = None) -> str | None:
    """Where Ray would read this process's token from, in Ray's own order; None if nowhere."""
    if env.get(TOKEN_VAR):
        return TOKEN_VAR
    if env.get(TOKEN_PATH_VAR):
        return f"{TOKEN_PATH_VAR}={env[TOKEN_PATH_VAR]}"
    default_file = (home or Path.home()) / ".ray" / "auth_token"
    return DEFAULT_TOKEN_FILE if default_file.is_file() else None


def auth_advice(address: str, env: Mapping[str, str], home: Path | None = None) -> str:
    """The RayAuthError message: what was wrong in this process, and what to set."""
    return (f"the Ray cluster at {address} requires token authentication and refused this "
            f"driver: {_diagnosis(env, home)}. On the driver set {AUTH_MODE_VAR}=token and the "
            f"head's token in {TOKEN_VAR} (or in a file named by {TOKEN_PATH_VAR}, or in "
            f"{DEFAULT_TOKEN_FILE}). `ray start --head` neither creates nor prints a token: the "
            f"head uses its own {TOKEN_VAR}, {TOKEN_PATH_VAR} or {DEFAULT_TOKEN_FILE}, and "
            f"`ray get-auth-token` run on the head prints it. In the compose stack it is "
            f"{TOKEN_VAR} in .env.")


def _diagnosis(env: Mapping[str, str], home: Path | None) -> str:
    """Which of the driver's settings is missing or wrong, as far as this process can tell."""
    mode = env.get(AUTH_MODE_VAR)
    source = token_source(env, home)
    if (mode or "").lower() != "token":
        shown = f"{AUTH_MODE_VAR} is {mode!r}" if mode else f"{AUTH_MODE_VAR} is not set"
        return f"{shown}, so no token was sent"
    if source is None:
        return f"{AUTH_MODE_VAR}=token but no token was found"
    return f"the token from {source} does not match the head's"
