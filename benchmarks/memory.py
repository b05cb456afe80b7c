"""Peak memory of a whole ingest run on an archive larger than the memory it is given.

Builds a tar of incompressible photos (noise JPEGs; each decodes to a full-size
array) plus a few short videos, larger than ``--cap-mb``, then runs
``mediabind ingest`` (tiny model, embedded store, local executor) in a memory
cgroup limited to ``--cap-mb``. The kernel kills the run if it needs more, so
"completed" is the result; the cgroup's peak usage (page cache included) and
the archive size are printed, with their ratio. Needs root and a cgroup v1
memory controller (``/sys/fs/cgroup/memory``) or cgroup v2; without one it
runs uncapped and reports the process's peak RSS instead.

    python benchmarks/memory.py                 # ~1.6 GB archive, 1 GiB cap
    python benchmarks/memory.py --archive-mb 400 --cap-mb 900 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import bench_record as record
import numpy as np
from PIL import Image

V1 = Path("/sys/fs/cgroup/memory")
V2 = Path("/sys/fs/cgroup")


def build_archive(folder: Path, target_mb: int, seed: int = 0) -> Path:
    """Noise JPEGs (incompressible, ~4 MB each) until the tar reaches ``target_mb``."""
    rng = np.random.default_rng(seed)
    archive = folder / "big.tar"
    written = 0
    with tarfile.open(archive, "w") as tar:
        index = 0
        while written < target_mb << 20:
            photo = folder / f"photo_{index:05d}.jpg"
            pixels = rng.integers(0, 256, (1536, 2048, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(photo, quality=95)
            written += photo.stat().st_size
            tar.add(photo, f"photos/{photo.name}")
            photo.unlink()
            index += 1
    return archive


def cgroup_dir(cap_mb: int) -> Path | None:
    """A fresh memory cgroup limited to ``cap_mb``, or None where none can be made."""
    name = f"mediabind-bench-{os.getpid()}"
    try:
        if V1.is_dir():
            group = V1 / name
            group.mkdir()
            (group / "memory.limit_in_bytes").write_text(str(cap_mb << 20))
            return group
        if (V2 / "cgroup.controllers").is_file():
            group = V2 / name
            group.mkdir()
            (group / "memory.max").write_text(str(cap_mb << 20))
            return group
    except OSError:
        return None
    return None


def peak_bytes(group: Path) -> int | None:
    for name in ("memory.max_usage_in_bytes", "memory.peak"):
        if (group / name).is_file():
            return int((group / name).read_text())
    return None


def run_ingest(archive: Path, home: Path, group: Path | None) -> tuple[int, float, str]:
    env = os.environ | {"MEDIABIND_HOME": str(home), "MEDIABIND_PRESET": "imagebind_tiny",
                        "MEDIABIND_STORE": "edge", "MEDIABIND_DEVICE": "cpu"}
    # The child joins the cgroup before it execs, so everything it starts is capped.
    join = (f"open('{group / 'cgroup.procs'}', 'w').write(str(__import__('os').getpid())); "
            if group else "")
    code = join + "import sys; from flows.cli import main; sys.exit(main())"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, "ingest", str(archive), "--json"],
                          env=env, capture_output=True, text=True)
    return done.returncode, time.perf_counter() - started, done.stdout or done.stderr[-2000:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive-mb", type=int, default=1600)
    parser.add_argument("--cap-mb", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="400 MB archive, 900 MB cap")
    parser.add_argument("--json", help="write the figures here")
    record.add_flag(parser)
    args = parser.parse_args()
    if args.quick:
        args.archive_mb, args.cap_mb = 400, 900
    with tempfile.TemporaryDirectory(prefix="mb-mem-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        archive = build_archive(folder, args.archive_mb)
        size = archive.stat().st_size
        print(f"archive: {size / 2**20:.0f} MiB in {time.perf_counter() - started:.0f} s")
        group = cgroup_dir(args.cap_mb)
        print(f"memory cap: {args.cap_mb} MiB ({group or 'no cgroup: uncapped'})")
        try:
            code, seconds, out = run_ingest(archive, folder / "home", group)
            peak = peak_bytes(group) if group else None
        finally:
            if group is not None:
                group.rmdir()
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss << 10
    report = json.loads(out) if code == 0 else {}
    figures = {"archive_bytes": size, "cap_bytes": args.cap_mb << 20, "capped": group is not None,
               "completed": code == 0, "seconds": round(seconds, 1), "peak_bytes": peak,
               "peak_over_archive": round(peak / size, 3),
               "items_completed": report.get("items_completed"),
               "points_written": report.get("points_written")}
    print(f"run: {'completed' if code == 0 else f'FAILED (rc {code})'} in {seconds:.0f} s, "
          f"{figures['items_completed']} items, {figures['points_written']} points")
    print(f"peak memory {peak / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB archive: "
          f"ratio {figures['peak_over_archive']} (cap {args.cap_mb} MiB)")
    if code != 0:
        print(out, file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    if args.record and code == 0:
        cap = f"under a {args.cap_mb} MiB memory cgroup" if group is not None else "uncapped (no cgroup)"
        record.save("memory", "memory on an archive larger than the run's memory, tiny model",
                    f"a {size / 2**20:,.0f} MiB tar ingests {cap}, peak {peak / 2**20:.0f} MiB "
                    f"(page cache included): {figures['peak_over_archive']} of the archive",
                    figures)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
