"""Training a new modality's encoder against frozen image vectors (ImageBind's recipe).

The new encoder starts from scratch; the paired images' (or video frames')
vectors from the frozen base vision encoder are the targets. The loss is the
symmetric InfoNCE over a batch with a fixed temperature: each sample should
pick out its own image among the batch's images, and each image its own
sample. Mixed precision (bf16 autocast) on CUDA. After every epoch the whole
state (model, optimiser, schedule, RNG, loss history) is written to
``checkpoint.pt`` by rename; a run started again in the same folder with the
same settings continues after the last finished epoch.

``fit`` is the one training loop. ``run_local`` calls it in this process; the
Ray executor (``embed_workers.bind.ray_train``) calls it in each Ray Train
worker, with gradients averaged across them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from embed_workers.model.extension import ExtensionEncoder, init_weights_
from schemas.extension import ExtensionError, ExtensionSpec

CHECKPOINT_FILE = "checkpoint.pt"
RUN_FILE = "run.json"


@dataclass(frozen=True, slots=True)
class TrainOptions:
    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    seed: int = 0

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ExtensionError("epochs must be >= 1 and batch size >= 2 (InfoNCE needs "
                                 "negatives in the batch)")
        if not self.learning_rate > 0 or self.weight_decay < 0:
            raise ExtensionError("learning rate must be > 0 and weight decay >= 0")


@dataclass(slots=True)
class History:
    """Per finished epoch: mean training loss, held-out loss and held-out Recall@1."""

    workers: int = 1  # data-parallel processes that trained it
    train_loss: list[float] = field(default_factory=list)
    held_loss: list[float] = field(default_factory=list)
    held_recall1: list[float] = field(default_factory=list)

    @property
    def epochs_done(self) -> int:
        return len(self.train_loss)


@dataclass(frozen=True, slots=True)
class Data:
    """Training and held-out views and their unit targets, as tensors."""

    train_x: Tensor
    train_t: Tensor
    held_x: Tensor
    held_t: Tensor


@dataclass(frozen=True, slots=True)
class Worker:
    """Where ``fit`` runs: this process alone (rank 0 of 1), or one of a Ray Train group."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m  # DDP under Ray Train

    @property
    def writes(self) -> bool:
        return self.rank == 0


def info_nce(z: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE: z and targets are [B, D] unit rows; row i of each is a pair."""
    logits = (z @ targets.T) / temperature
    labels = torch.arange(z.shape[0], device=z.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def fit(spec: ExtensionSpec, data: Data, options: TrainOptions, run_dir: Path,
        worker: Worker = Worker(), progress: Callable[[str], None] | None = None
        ) -> tuple[ExtensionEncoder, History]:
    """Train (or resume) to ``options.epochs``; checkpoint after each epoch."""
    options.check()
    torch.manual_seed(options.seed)
    model = init_weights_(ExtensionEncoder(spec), options.seed).to(worker.device)
    trained = worker.wrap(model)
    optimizer = torch.optim.AdamW(_groups(model, options.weight_decay), lr=options.learning_rate)
    steps = _steps_per_epoch(len(data.train_x), options.batch_size, worker.world)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(options, steps))
    generator = torch.Generator().manual_seed(options.seed)
    history = resume(run_dir, model, optimizer, schedule, generator, worker.device)
    history.workers = worker.world
    for epoch in range(history.epochs_done, options.epochs):
        loss = _epoch(trained, optimizer, schedule, data, options, worker, generator, spec)
        held_loss, recall1 = held_out(model, data, spec.temperature, worker.device)
        history.train_loss.append(loss)
        history.held_loss.append(held_loss)
        history.held_recall1.append(recall1)
        if worker.writes:
            save_checkpoint(run_dir, model, optimizer, schedule, generator, history)
        if progress:
            progress(f"epoch {epoch + 1}/{options.epochs}: loss {loss:.4f}, held-out loss "
                     f"{held_loss:.4f}, held-out R@1 {recall1:.3f}")
    return model.eval(), history


def _groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No decay on norms, biases, tokens and positions (the usual ViT recipe)."""
    decay, plain = [], []
    for name, param in model.named_parameters():
        no_decay = param.ndim < 2 or name.endswith(("cls_token", "pos_embed", "bias_k", "bias_v"))
        (plain if no_decay else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def _steps_per_epoch(rows: int, batch_size: int, world: int) -> int:
    per_worker = math.ceil(rows / world)
    return max(1, per_worker // max(2, batch_size // world))


def _warmup_cosine(options: TrainOptions, steps: int) -> Callable[[int], float]:
    warmup, total = options.warmup_epochs * steps, options.epochs * steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor


def _epoch(model, optimizer, schedule, data: Data, options: TrainOptions, worker: Worker,
           generator: torch.Generator, spec: ExtensionSpec) -> float:
    model.train()
    order = torch.randperm(len(data.train_x), generator=generator)
    # Every rank takes the same number of rows, so all run the same number of steps: an
    # extra step on one rank would wait forever for the others' gradients.
    order = order[:len(order) // worker.world * worker.world][worker.rank::worker.world]
    size = max(2, options.batch_size // worker.world)
    losses = []
    for start in range(0, len(order) - size + 1, size):  # full batches only: equal negatives
        rows = order[start:start + size]
        x, t = data.train_x[rows].to(worker.device), data.train_t[rows].to(worker.device)
        with _autocast(worker.device):
            z = F.normalize(model(x).float(), dim=-1)
        loss = info_nce(z, t, spec.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    if not losses:
        raise ExtensionError(f"{len(data.train_x)} training pairs are fewer than one batch "
                             f"of {size}: lower --batch-size or add pairs")
    return sum(losses) / len(losses)


def _autocast(device: torch.device):
    import contextlib

    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def embed_views(model: ExtensionEncoder, x: Tensor, device: torch.device,
                batch: int = 512) -> Tensor:
    model.eval()
    parts = []
    for start in range(0, len(x), batch):
        with _autocast(device):
            parts.append(model.embed(x[start:start + batch].to(device)).float().cpu())
    return torch.cat(parts)


@torch.no_grad()
def held_out(model: ExtensionEncoder, data: Data, temperature: float,
             device: torch.device) -> tuple[float, float]:
    """Held-out InfoNCE over the whole held-out set, and new → image Recall@1."""
    z = embed_views(model, data.held_x, device)
    loss = info_nce(z, data.held_t, temperature).item()
    recall1 = (z @ data.held_t.T).argmax(dim=1).eq(torch.arange(len(z))).float().mean().item()
    return loss, recall1


# --- checkpoints ---------------------------------------------------------------------------

def save_checkpoint(run_dir: Path, model, optimizer, schedule, generator, history: History) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "schedule": schedule.state_dict(), "rng": generator.get_state(),
             "history": asdict(history)}
    path = Path(run_dir) / CHECKPOINT_FILE
    partial = path.with_name(f".{CHECKPOINT_FILE}.{os.getpid()}")
    torch.save(state, partial)
    partial.replace(path)  # a kill mid-write leaves the previous epoch's checkpoint


def resume(run_dir: Path, model, optimizer, schedule, generator,
           device: torch.device) -> History:
    """The history so far, with every state restored from the last checkpoint; or a new one."""
    state = read_checkpoint(run_dir, device)
    if state is None:
        return History()
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    generator.set_state(state["rng"].cpu())
    return History(**state["history"])


def read_checkpoint(run_dir: Path, device: torch.device | str = "cpu") -> dict | None:
    """The last checkpoint's state (tensors and plain values only), or None."""
    path = Path(run_dir) / CHECKPOINT_FILE
    return torch.load(path, map_location=device, weights_only=True) if path.is_file() else None


def epochs_done(run_dir: Path) -> int:
    state = read_checkpoint(run_dir)
    return 0 if state is None else len(state["history"]["train_loss"])


def claim_run_dir(run_dir: Path, identity: dict) -> bool:
    """Create the run folder, or check that the run in it is this same run.

    ``identity`` holds everything that shapes the training (spec, options, the pairs'
    key); resuming a run that differs would mix two trainings, so it is refused.
    Returns True when a checkpoint is there to resume from.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RUN_FILE
    text = json.dumps(identity, indent=2, sort_keys=True)
    if path.is_file() and json.loads(path.read_text()) != json.loads(text):
        raise ExtensionError(f"{run_dir} holds another training run (different pairs or "
                             "settings); use a new --run-dir, or --restart to discard it")
    path.write_text(text)
    return (run_dir / CHECKPOINT_FILE).is_file()
