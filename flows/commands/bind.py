"""`mediabind bind NAME --pairs PAIRS`: bind a new sensor modality to the joint space.

Trains a new encoder against the frozen vision encoder's vectors of the paired
images (ImageBind's recipe), evaluates it on a held-out split, and registers
it under ``HOME/extensions/NAME``. Run the same command again to resume a
stopped training from its last checkpoint. See docs/bind.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from schemas import get_settings
from schemas.extension import Geometry, TrunkSpec


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("bind", help="train and register a new modality (your own sensor)")
    parser.add_argument("name", help="the new modality's name, e.g. radar (not a built-in name)")
    parser.add_argument("--pairs", type=Path, required=True,
                        help="CSV/Parquet/JSONL manifest: sample, image (or video), "
                        "optional time_s, label, audio")
    parser.add_argument("--layout", choices=("series", "map"),
                        help="series (N-channel time series) or map (2-D); default: from "
                        "the samples' file type")
    geometry = parser.add_argument_group("geometry (defaults: IMU-like series, depth-like maps)")
    defaults = Geometry()
    for field, help_text in (("channels", "series channels"), ("samples", "series samples per view"),
                             ("window", "series samples per token"), ("height", "map height"),
                             ("width", "map width"), ("patch", "map patch size")):
        geometry.add_argument(f"--{field}", type=int, default=getattr(defaults, field),
                              help=f"{help_text} (default {getattr(defaults, field)})")
    model = parser.add_argument_group("encoder and training")
    model.add_argument("--trunk", default="64,2,4", metavar="WIDTH,DEPTH,HEADS",
                       help="the new trunk (default 64,2,4)")
    model.add_argument("--temperature", type=float, default=0.05,
                       help="fixed InfoNCE temperature (default 0.05)")
    model.add_argument("--epochs", type=int, default=30)
    model.add_argument("--batch-size", type=int, default=128)
    model.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW)")
    model.add_argument("--holdout", type=float, default=0.2, help="held-out fraction (default 0.2)")
    model.add_argument("--seed", type=int, default=0)
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="local: this process; ray: Ray Train over the cluster's workers")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers (--executor ray)")
    parser.add_argument("--run-dir", type=Path, help="training folder (default HOME/bind/NAME)")
    parser.add_argument("--restart", action="store_true",
                        help="discard the run folder's checkpoint and start again")
    parser.add_argument("--eval", action="store_true",
                        help="only evaluate the registered NAME on the manifest's held-out pairs")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def request_from(args: argparse.Namespace):
    from embed_workers.bind import BindRequest
    from embed_workers.bind.train import TrainOptions

    geometry = Geometry(args.channels, args.samples, args.window, args.height, args.width, args.patch)
    return BindRequest(
        name=args.name, pairs=args.pairs, layout=args.layout, geometry=geometry,
        trunk=_trunk(args.trunk), temperature=args.temperature, holdout=args.holdout,
        options=TrainOptions(epochs=args.epochs, batch_size=args.batch_size,
                             learning_rate=args.lr, seed=args.seed),
        executor=args.executor, workers=args.workers, run_dir=args.run_dir, restart=args.restart)


def _trunk(text: str) -> TrunkSpec:
    try:
        width, depth, heads = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--trunk {text!r}: expected WIDTH,DEPTH,HEADS, e.g. 64,2,4") from None
    return TrunkSpec(width, depth, heads)


def run(args: argparse.Namespace) -> int:
    from embed_workers.bind import bind, evaluate_registered

    settings = get_settings()
    request = request_from(args)
    say = (lambda _m: None) if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    if args.eval:
        report = evaluate_registered(request, settings, say)
    else:
        result = bind(request, settings, say)
        report = result.report
        say(f"registered {result.spec.name} version {result.spec.version} in "
            f"{settings.home / 'extensions' / result.spec.name}; training folder {result.run_dir}")
        print(f"licence: {result.spec.license}", file=sys.stderr)
    print(json.dumps(asdict(report), indent=2) if args.json else report.text())
    return 0
