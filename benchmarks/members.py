"""Memory against the number of members: a run's peak RSS on tars of N small texts.

For each N, a fresh process ingests a .tar of N distinct one-line notes (tiny
model, local executor, embedded edge store) through the one run entry and
reports its peak RSS. A second fresh process then only opens the resulting store
and searches it once: its RSS above a bare interpreter with the same imports is
the engine's own memory for the points it holds. The growth per member between
the smallest and the largest N is printed with and without the engine's share,
so what the pipeline keeps per member shows apart from what the store keeps per
point.

    python benchmarks/members.py                       # 20,000 and 200,000: ~11 min
    python benchmarks/members.py --members 2000 5000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import bench_record as record

ROOT = Path(__file__).resolve().parents[1]

INGEST = r"""
import json, resource, sys
from flows.run import start_run
from schemas import Settings
settings = Settings(home=sys.argv[2], preset="imagebind_tiny", store="edge", device="cpu",
                    optimize_after_points=0)
report = start_run(sys.argv[1], settings, executor="local").report
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak": peak, "points": report.points_written,
                  "items": report.items_completed, "seconds": report.wall_seconds}))
"""

OPEN_STORE = r"""
import json, resource, sys
import numpy as np
from schemas import Settings
from search.store import open_store
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
settings = Settings(home=sys.argv[1], preset="imagebind_tiny", store="edge")
before = rss()
if sys.argv[2] == "open":
    with open_store(settings) as store:
        points = store.count()
        store.search(np.ones(1024, np.float32) / 32.0, limit=5)
        after = rss()
else:
    points, after = 0, rss()
print(json.dumps({"rss": after - before, "points": points}))
"""


def make_tar(path: Path, members: int) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        note = Path(tmp) / "note.txt"
        with tarfile.open(path, "w") as tar:
            for i in range(members):
                note.write_text(f"note {i}: a bird over the sea at dawn\n")
                tar.add(note, f"notes/n{i:07d}.txt")
    return path


def child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(members: int, work: Path) -> dict:
    archive = make_tar(work / f"notes{members}.tar", members)
    home = work / f"home{members}"
    run = child(INGEST, str(archive), str(home))
    engine = child(OPEN_STORE, str(home), "open")["rss"] - child(OPEN_STORE, str(home), "bare")["rss"]
    return run | {"members": members, "engine": engine}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--dir", default=None,
                        help="where the tars and stores go (/dev/shm keeps disk out of it)")
    record.add_flag(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = [measure(n, Path(tmp)) for n in sorted(args.members)]
    for r in rows:
        print(f"{r['members']:>8} members: peak RSS {r['peak'] / 2**20:7.0f} MiB, "
              f"{r['points']} points, engine {r['engine'] / 2**20:6.0f} MiB "
              f"({r['engine'] / max(r['points'], 1):.0f} B/point), {r['seconds']:.0f} s")
    low, high = rows[0], rows[-1]
    extra = high["members"] - low["members"]
    if extra > 0:
        total = (high["peak"] - low["peak"]) / extra
        engine = (high["engine"] - low["engine"]) / extra
        print(f"growth per member: {total / 1024:.1f} KiB in all, {engine / 1024:.1f} KiB of it "
              f"the engine's, {(total - engine) / 1024:.1f} KiB the pipeline's")
        if args.record:
            record.save("members", "peak RSS of a run against the members of a tar of small "
                        "texts, local executor, embedded store",
                        f"{low['members']:,} and {high['members']:,} members peaked at "
                        f"{low['peak'] / 2**20:,.0f} and {high['peak'] / 2**20:,.0f} MiB: "
                        f"{total / 1024:.1f} KiB more per member, of which "
                        f"{engine / 1024:.1f} KiB is the embedded engine's memory for its "
                        f"points and {(total - engine) / 1024:.1f} KiB the pipeline's",
                        {"runs": rows, "per_member": total, "engine_per_member": engine})


if __name__ == "__main__":
    main()
