"""Throughput against the number of worker nodes, on a real local Ray cluster.

For N = 1 and 2, a fresh ``ray.cluster_utils.Cluster`` gets a head with no CPU
(the driver's node) and N worker nodes of one CPU each, every worker node
pinned to a core of its own (``sched_setaffinity`` on its raylet, which its
workers and their ffmpeg processes inherit). The head's processes (this
driver, the GCS, the committer) are pinned to the first worker node's core,
so N nodes have N cores in all. The same folder of generated videos
(decode-bound with the tiny model) is ingested with the Ray executor into a
fresh embedded store, then ingested again unchanged. Printed, all from this
run:

- media-s/s on 1 and 2 nodes, the ratio and the parallel efficiency;
- the driver's CPU-seconds and bytes read through read() per media-second;
- the unchanged rerun's wall time against the first run's;
- with ``--audio-decoders auto,ffmpeg``, each node count once per audio decoder
  and their throughput ratio (``auto`` decodes sound in each decode actor).

    python benchmarks/scale.py                          # 400 x 10-s videos, ~8 min
    python benchmarks/scale.py --videos 32 --seconds 6  # a quick look
    python benchmarks/scale.py --nodes 2                # one configuration only

A run has a fixed cost that does not shrink with nodes: Ray Data's start-up,
and a new process per decode actor and per encode actor that imports torch
(and builds the model), seconds each on a small machine, paid on every node at
once. A small archive is mostly that cost, so it understates the ratio;
the default archive (4,000 media-s) is large enough for the per-node work to
dominate. Only 8 of the videos are encoded; the rest are remuxed copies with
a comment of their own (other bytes, the same decode cost).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_record as record  # noqa: E402

from embed_workers.executors import preset_model_id  # noqa: E402
from embed_workers.pipeline import run_ingest  # noqa: E402
from schemas import Settings  # noqa: E402
from search.store import open_store  # noqa: E402


def make_videos(root: Path, count: int, seconds: float, distinct: int = 8) -> Path:
    """``count`` videos: ``distinct`` encodes, the rest remuxed copies of them with a
    comment of their own (different bytes, so no copy is a duplicate, at the same
    decode cost; remuxing takes a fraction of a second where encoding takes seconds)."""
    root.mkdir(parents=True)
    for i in range(count):
        out = root / f"clip{i:04d}.mp4"
        if i < distinct:
            subprocess.run(
                ["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                 f"testsrc2=size=640x360:rate=25:duration={seconds}", "-f", "lavfi", "-i",
                 f"sine=frequency={300 + 40 * i}:sample_rate=16000:duration={seconds}",
                 "-c:v", "libx264", "-g", "25", "-pix_fmt", "yuv420p", "-c:a", "aac",
                 "-shortest", str(out)], check=True)
        else:
            subprocess.run(["ffmpeg", "-v", "error", "-i", str(root / f"clip{i % distinct:04d}.mp4"),
                            "-c", "copy", "-metadata", f"comment=copy {i}", str(out)],
                           check=True)
    return root


def rchar() -> int:
    line = next(x for x in Path("/proc/self/io").read_text().splitlines() if x.startswith("rchar"))
    return int(line.split()[1])


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


CORES = sorted(os.sched_getaffinity(0))


def start_cluster(nodes: int):
    import ray
    from ray.cluster_utils import Cluster

    cores = CORES
    # The head's processes (this driver, the GCS, the committer) share the first worker
    # node's core in every configuration, so N nodes have N cores in all: a head left
    # unpinned would give the 1-node run a second core of its own and understate the ratio.
    os.sched_setaffinity(0, {cores[0]})
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0,
                                                            "include_dashboard": False})
    for i in range(nodes):
        node = cluster.add_node(num_cpus=1)
        os.sched_setaffinity(node.all_processes["raylet"][0].process.pid, {cores[i % len(cores)]})
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    return cluster


def one_run(folder: Path, home: Path, nodes: int, audio: str = "auto") -> dict[str, float]:
    import ray

    cluster = start_cluster(nodes)
    settings = Settings(home=home, preset="imagebind_tiny", store="edge", device="cpu",
                        dtype="float32", decode_workers=nodes, encode_actors=nodes,
                        shard_files=1, optimize_after_points=0, audio_decoder=audio)
    try:
        with open_store(settings) as store:
            store.ensure_collection(preset_model_id(settings.preset), settings.policy)
            warm = folder.parent / "warm"
            run_ingest(str(warm), store, settings=settings, executor="ray",
                       ledger=store.ledger())
            read0, cpu0, started = rchar(), cpu_seconds(), time.perf_counter()
            report = run_ingest(str(folder), store, settings=settings, executor="ray",
                                ledger=store.ledger())
            wall = time.perf_counter() - started
            read, cpu = rchar() - read0, cpu_seconds() - cpu0
            started = time.perf_counter()
            again = run_ingest(str(folder), store, settings=settings, executor="ray",
                               ledger=store.ledger())
            rerun = time.perf_counter() - started
    finally:
        ray.shutdown()
        cluster.shutdown()
        os.sched_setaffinity(0, set(CORES))
    assert report.rejected == [] and again.items_unchanged == report.items_completed
    media = report.media_seconds
    return {"media_s_per_s": media / wall, "wall": wall, "media": media, "rerun": rerun,
            "driver_cpu_per_media_s": cpu / media, "driver_bytes_per_media_s": read / media,
            "decode_nodes": len(report.decode_nodes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2],
                        help="worker-node counts to run (the ratio needs 1 and 2)")
    parser.add_argument("--audio-decoders", default="auto",
                        help="MEDIABIND_AUDIO_DECODER per run; a list (auto,ffmpeg) runs each "
                             "node count once per value and prints their ratio (auto: PyAV "
                             "in each decode actor)")
    record.add_flag(parser)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_enable_worker_prestart", "0")
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_videos(Path(tmp) / "videos", args.videos, args.seconds)
        make_videos(Path(tmp) / "warm", 1, 1.0)
        audios = args.audio_decoders.split(",")
        by_audio = {a: {n: one_run(folder, Path(tmp) / f"home{n}-{a}", n, a) for n in args.nodes}
                    for a in audios}
    for audio, runs in by_audio.items():
        if len(audios) > 1:
            print(f"--- MEDIABIND_AUDIO_DECODER={audio}")
        report_runs(runs)
    for n in args.nodes if len(audios) > 1 else ():
        rates = [by_audio[a][n]["media_s_per_s"] for a in audios]
        print(f"{n} worker node(s), audio {audios[0]} / {audios[1]}: {rates[0] / rates[1]:.2f}x")
    runs = by_audio[audios[0]]
    if 1 not in runs or 2 not in runs:
        return
    ratio = runs[2]["media_s_per_s"] / runs[1]["media_s_per_s"]
    if args.record:
        one, two = runs[1], runs[2]
        record.save("scale", "Ray executor, 1 and 2 worker nodes of one core each, tiny model",
                    f"{two['media_s_per_s']:.1f} media-s/s on 2 nodes against "
                    f"{one['media_s_per_s']:.1f} on 1: {ratio:.2f}x (parallel efficiency "
                    f"{ratio / 2:.0%}) on {one['media']:.0f} media-s of video; the driver "
                    f"{two['driver_cpu_per_media_s'] * 1000:.1f} CPU-ms and "
                    f"{two['driver_bytes_per_media_s']:.0f} bytes read per media-s; an "
                    f"unchanged rerun {two['rerun'] / two['wall']:.3f}x the first run's time",
                    {"runs": runs, "ratio": ratio, "audio_decoder": audios[0]})


def report_runs(runs: dict[int, dict[str, float]]) -> None:
    for n, r in runs.items():
        print(f"{n} worker node(s): {r['media_s_per_s']:.2f} media-s/s ({r['media']:.0f} media-s "
              f"in {r['wall']:.1f} s; decode on {r['decode_nodes']} node(s)); driver "
              f"{r['driver_cpu_per_media_s'] * 1000:.1f} CPU-ms and "
              f"{r['driver_bytes_per_media_s']:.0f} bytes read per media-s; unchanged rerun "
              f"{r['rerun']:.2f} s ({r['rerun'] / r['wall']:.3f}x the first run)")
    if 1 in runs and 2 in runs:
        ratio = runs[2]["media_s_per_s"] / runs[1]["media_s_per_s"]
        print(f"2 nodes / 1 node: {ratio:.2f}x (parallel efficiency {ratio / 2:.0%})")


if __name__ == "__main__":
    main()
