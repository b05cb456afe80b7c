"""What planning costs: listing a source and anti-joining it with the ledger.

Three timings over one generated folder of N small files, in one run:

1. baseline: a bare recursive listing with a stat of every file (``os.walk`` + ``lstat``),
   the least any planner must do;
2. ``plan_source`` with no ledger (listing + shard cutting);
3. ``plan_source`` against a ledger that holds every file as settled and unchanged
   (a rerun of an unchanged source: everything is looked up, nothing is left to read).

Printed as seconds, microseconds per object and ratios against the baseline.

    python benchmarks/plan.py --objects 100000 --dir /dev/shm
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embed_workers.executors import preset_model_id  # noqa: E402
from ingest.shards import uri_of  # noqa: E402
from ingest.sources import normalise_source, plan_source  # noqa: E402
from schemas import Settings  # noqa: E402
from schemas.ledger import EntryKind, LedgerEntry  # noqa: E402
from search.store import open_store  # noqa: E402

PER_FOLDER = 1000


def make_tree(root: Path, objects: int) -> Path:
    for i in range(objects):
        folder = root / f"d{i // PER_FOLDER:04d}"
        if i % PER_FOLDER == 0:
            folder.mkdir(parents=True)
        (folder / f"f{i:07d}.txt").write_bytes(b"x")
    return root


def bare_listing(root: Path) -> int:
    count = 0
    for folder, _, names in os.walk(root):
        for name in names:
            os.lstat(os.path.join(folder, name))
            count += 1
    return count


def timed(step):
    started = time.perf_counter()
    result = step()
    return time.perf_counter() - started, result


def settle_all(settings: Settings, source: str) -> None:
    """Record every file of the source in the ledger, as a finished run would."""
    plan = plan_source(source, settings)
    entries = [LedgerEntry(uri_of(source, m), source, m.size, m.version, EntryKind.ITEM,
                           item_id=f"{n:064x}", points=2)
               for n, m in enumerate(m for s in plan.shards for m in s.members)]
    with open_store(settings) as store:
        store.ensure_collection(preset_model_id(settings.preset), settings.policy)
        store.ledger().record(entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--dir", default=None, help="where to build the tree (tmpfs is best)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = make_tree(Path(tmp) / "src", args.objects)
        settings = Settings(home=Path(tmp) / "home", preset="imagebind_tiny", store="edge")
        source = normalise_source(root)
        bare_s, listed = timed(lambda: bare_listing(root))
        plain_s, plan = timed(lambda: plan_source(source, settings))
        settle_s, _ = timed(lambda: settle_all(settings, source))
        with open_store(settings) as store:
            store.ensure_collection(preset_model_id(settings.preset), settings.policy)
            ledger = store.ledger()
            rerun_s, rerun = timed(lambda: plan_source(source, settings, ledger))
    assert listed == plan.members == args.objects and len(rerun.unchanged) == args.objects
    print(f"{args.objects} objects in {len(plan.shards)} shards "
          f"(ledger filled in {settle_s:.1f} s, not part of planning)")
    for name, seconds in (("bare listing (baseline)", bare_s), ("plan, no ledger", plain_s),
                          ("plan against the ledger (rerun)", rerun_s)):
        print(f"  {name:32s} {seconds:7.2f} s  {seconds / args.objects * 1e6:7.1f} us/object  "
              f"{seconds / bare_s:6.2f}x baseline")


if __name__ == "__main__":
    main()
