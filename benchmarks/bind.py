"""Training throughput of ``mediabind bind``: samples/s, against recomputing the targets.

The recipe computes the frozen image targets once and caches them; training then
touches only the small new encoder. The baseline measured in the same run is the
naive loop that re-encodes each pair's image with the frozen vision tower every
epoch. Printed: training samples/s with cached targets, the frozen tower's
images/s, the naive loop's samples/s (its cost per sample is the two measured costs
added: one training step's share and one image encode), and the ratio cached / naive.

CPU (default): the tiny preset and a 64-wide, 2-block series encoder.

    .venv/bin/python benchmarks/bind.py              # ~1 min on 2 cores
    .venv/bin/python benchmarks/bind.py --quick      # smoke run

GPU, one process (no Ray on the GPU machine): ImageBind-huge's vision tower with
random weights in bf16 (a throughput figure, never vectors to keep), and an
IMU-sized encoder (512 wide, 6 blocks) trained under bf16 autocast:

    python benchmarks/bind.py --device cuda --preset imagebind_huge --trunk 512,6,8 \\
        --pairs 8192 --batch-size 512 --json bind_gpu.json

Inputs are random tensors already in model layout: decoding is ingest's cost,
measured by benchmarks/decode.py, not this one's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from embed_workers.bind.train import Data, TrainOptions, Worker, fit  # noqa: E402
from embed_workers.model import build_model, get_preset  # noqa: E402
from schemas.extension import ExtensionSpec, Geometry, TrunkSpec  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="imagebind_tiny")
    parser.add_argument("--trunk", default="64,2,4", help="WIDTH,DEPTH,HEADS of the new encoder")
    parser.add_argument("--pairs", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 256 pairs, 1 epoch")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def frozen_targets(preset_name: str, images: torch.Tensor, device: torch.device,
                   batch: int) -> tuple[torch.Tensor, float]:
    """Unit vectors of ``images`` from the frozen vision tower, and its images/s."""
    preset = get_preset(preset_name)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_model(preset, ["vision"], device=device, dtype=dtype,
                        random_init=preset.needs_checkpoint)
    out = []
    synchronise(device)
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch].to(device, dtype)
            out.append(F.normalize(model.embed("vision", chunk).float(), dim=-1).cpu())
    synchronise(device)
    elapsed = time.perf_counter() - started
    del model
    return torch.cat(out), len(images) / elapsed


def train_rate(spec: ExtensionSpec, data: Data, options: TrainOptions,
               device: torch.device) -> float:
    """Training samples per second over ``options.epochs`` epochs (first epoch included)."""
    with tempfile.TemporaryDirectory() as run_dir:
        synchronise(device)
        started = time.perf_counter()
        fit(spec, data, options, Path(run_dir), Worker(device=device))
        synchronise(device)
        elapsed = time.perf_counter() - started
    return len(data.train_x) * options.epochs / elapsed


def main() -> int:
    args = parse_args()
    if args.quick:
        args.pairs, args.epochs = 256, 1
    device = torch.device(args.device)
    width, depth, heads = (int(v) for v in args.trunk.split(","))
    geometry = Geometry(channels=6, samples=2000, window=8)
    preset = get_preset(args.preset)
    spec = ExtensionSpec("bench", "series", preset.name, preset.model_id, geometry,
                         TrunkSpec(width, depth, heads), out_dim=preset.config.out_dim)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.pairs, 3, 224, 224, generator=g)
    views = torch.randn(args.pairs, 6, 2000, generator=g)
    targets, images_per_s = frozen_targets(args.preset, images, device, args.batch_size)
    held = max(2, args.pairs // 8)
    data = Data(views[held:], targets[held:], views[:held], targets[:held])
    options = TrainOptions(epochs=args.epochs, batch_size=args.batch_size)
    cached = train_rate(spec, data, options, device)
    naive = 1 / (1 / cached + 1 / images_per_s)  # each sample also re-encodes its image
    figures = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "preset": args.preset, "trunk": args.trunk, "pairs": args.pairs,
               "batch_size": args.batch_size, "epochs": args.epochs,
               "train_samples_per_s": round(cached, 1),
               "frozen_vision_images_per_s": round(images_per_s, 1),
               "naive_samples_per_s": round(naive, 1), "cached_over_naive": round(cached / naive, 2)}
    print(f"bind training on {figures['device']} ({args.preset} base, trunk {args.trunk}, "
          f"{args.pairs} pairs, batch {args.batch_size}, {args.epochs} epochs)")
    print(f"  training, cached targets:        {cached:10.1f} samples/s")
    print(f"  frozen vision tower:             {images_per_s:10.1f} images/s")
    print(f"  naive, targets every epoch:      {naive:10.1f} samples/s")
    print(f"  cached / naive:                  {cached / naive:10.2f}x")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
