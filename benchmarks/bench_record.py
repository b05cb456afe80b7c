"""What a benchmark run measured, kept for the README: no figure there is typed by hand.

A benchmark run with ``--record`` writes ``docs/performance/NAME.json``: the
figure as a sentence it formats from its own measurements, the raw numbers
beside it, the machine it ran on, the command, the commit and the date.
``benchmarks/performance_report.py`` writes the README's performance table from
those files, and ``tests/test_performance_doc.py`` checks that the README says
what the records say. A run without ``--record`` changes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "docs" / "performance"


def add_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--record", action="store_true",
                        help="keep this run's figures for the README (docs/performance/)")


def machine(gpu: str | None = None) -> str:
    """The machine in words: the GPU when one ran the benchmark, else the CPU and cores."""
    cores = len(os.sched_getaffinity(0))
    if gpu:
        return f"{gpu}, {cores} cores"
    model = platform.processor() or "CPU"
    with contextlib.suppress(OSError, StopIteration):
        model = next(line.split(":", 1)[1].strip() for line in
                     Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    return f"{cores}-core CPU ({model})"


def _commit() -> str:
    """This checkout's commit (``+changes`` when its code differs), or the one a copy
    without git was made from (``MEDIABIND_BENCH_COMMIT``: the GPU session's kit)."""
    if os.environ.get("MEDIABIND_BENCH_COMMIT"):
        return os.environ["MEDIABIND_BENCH_COMMIT"]
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        # the records themselves do not count: one benchmark run after another would
        # otherwise call the second's code changed
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no",
                                "--", ".", ":(exclude)docs/performance"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return out + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def save(name: str, what: str, figure: str, figures: dict[str, Any], *,
         gpu: str | None = None) -> Path:
    """Write one benchmark's record; ``figure`` is the README's sentence for it."""
    RECORDS.mkdir(parents=True, exist_ok=True)
    script = Path(sys.argv[0]).resolve()
    args = [a for a in sys.argv[1:] if a != "--record"]
    command = " ".join(["python", f"benchmarks/{script.name}", *map(shlex.quote, args)])
    record = {"what": what, "figure": figure, "where": machine(gpu), "command": command,
              "commit": _commit(), "date": datetime.date.today().isoformat(), "figures": figures}
    path = RECORDS / f"{name}.json"
    path.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    print(f"recorded in {path.relative_to(ROOT)}; now run python benchmarks/performance_report.py")
    return path
