"""``mediabind bind --executor ray``: the same ``train.fit`` on a Ray Train group.

Ray Train's ``TorchTrainer`` starts ``workers`` processes (one GPU each where
the cluster has GPUs, else CPU with the gloo backend) and sets up
``torch.distributed``; each runs ``fit`` on its share of every batch, with the
model wrapped in DistributedDataParallel so gradients are averaged. Rank 0
writes the per-epoch checkpoint into the run folder, so the run folder must be
one path every worker can reach (on one machine it is; on a cluster put it on
shared storage with ``--run-dir``). A stopped run resumes from that checkpoint
whichever executor runs it next. The driver connects like ingest does
(``RAY_ADDRESS``, or a local Ray).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from embed_workers.bind.train import Data, History, Worker, epochs_done, fit, read_checkpoint
from embed_workers.model.extension import ExtensionEncoder
from schemas.extension import ExtensionError, ExtensionSpec


def _worker_loop(config: dict) -> None:
    """Runs in each Ray Train worker."""
    import ray.train
    import ray.train.torch as ray_torch

    context = ray.train.get_context()
    worker = Worker(rank=context.get_world_rank(), world=context.get_world_size(),
                    device=ray_torch.get_device(), wrap=ray_torch.prepare_model)
    say = config["say"] if context.get_world_rank() == 0 else None
    _, history = fit(config["spec"], config["data"], config["options"], Path(config["run_dir"]),
                     worker, say)
    ray.train.report({"epochs": history.epochs_done, "loss": history.train_loss[-1]})


def train_on_ray(request, spec: ExtensionSpec, data: Data, run_dir: Path,
                 say: Callable[[str], None]) -> tuple[ExtensionEncoder, History, int]:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if request.workers < 1:
        raise ExtensionError(f"--workers must be >= 1, got {request.workers}")
    started = epochs_done(run_dir)
    if not ray.is_initialized():
        ray.init()
    use_gpu = ray.cluster_resources().get("GPU", 0) >= request.workers
    say(f"training on Ray: {request.workers} worker(s), {'GPU' if use_gpu else 'CPU'}"
        + (f", resuming after epoch {started}" if started else ""))
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"spec": spec, "data": data, "options": request.options,
                           "run_dir": str(run_dir), "say": _printer()},
        scaling_config=ScalingConfig(num_workers=request.workers, use_gpu=use_gpu),
        run_config=RunConfig(name=f"bind-{spec.name}", storage_path=str(Path(run_dir) / "ray")))
    trainer.fit()
    return _load_trained(spec, run_dir), _history(run_dir), started


def _printer() -> Callable[[str], None]:
    def say(message: str) -> None:
        print(message, flush=True)  # Ray forwards worker stdout to the driver

    return say


def _load_trained(spec: ExtensionSpec, run_dir: Path) -> ExtensionEncoder:
    state = read_checkpoint(run_dir)
    if state is None:
        raise ExtensionError(f"the Ray Train run wrote no checkpoint into {run_dir}: is the "
                             "run folder reachable from every worker?")
    model = ExtensionEncoder(spec)
    model.load_state_dict(state["model"])
    return model.eval()


def _history(run_dir: Path) -> History:
    return History(**read_checkpoint(run_dir)["history"])
