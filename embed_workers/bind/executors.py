"""Where ``train.fit`` runs: this process (``local``) or a Ray Train group (``ray``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from embed_workers.bind.train import Data, History, Worker, epochs_done, fit
from embed_workers.model.extension import ExtensionEncoder
from schemas.extension import ExtensionError, ExtensionSpec

EXECUTORS = ("local", "ray")


def train_with(request, spec: ExtensionSpec, data: Data, run_dir: Path,
               say: Callable[[str], None]) -> tuple[ExtensionEncoder, History, int]:
    """(trained model, history, the epoch it started from: 0 unless resumed)."""
    if request.executor == "local":
        return _local(request, spec, data, run_dir, say)
    if request.executor == "ray":
        from embed_workers.bind.ray_train import train_on_ray

        return train_on_ray(request, spec, data, run_dir, say)
    raise ExtensionError(f"executor {request.executor!r}: expected one of {', '.join(EXECUTORS)}")


def _local(request, spec, data, run_dir, say):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = epochs_done(run_dir)
    if started:
        say(f"resuming from the checkpoint after epoch {started}")
    model, history = fit(spec, data, request.options, run_dir, Worker(device=device), say)
    return model.cpu(), history, started
