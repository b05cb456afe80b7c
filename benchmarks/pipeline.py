"""Pipeline throughput against its bottleneck (decode + preprocessing alone), memory, GPU use.

    python benchmarks/pipeline.py --quick                   # CPU, tiny model, ~1-2 min
    python benchmarks/pipeline.py --executor ray
    python benchmarks/pipeline.py --preset imagebind_huge --random-weights \\
        --device cuda --dtype bf16 --videos 48 --workers 12  # GPU run

Everything is measured in the same run on the same generated archive (videos
with a soundtrack, in an uncompressed tar):

1. decode + preprocessing alone: ``iter_source`` + ``decode_events`` on
   ``--workers`` threads, and the whole recipe (``preprocess.to_model_input``:
   pack and finish, on the CPU) for every segment; no model, no store: the
   pipeline's bottleneck on CPU-only machines;
2. encode alone: one video's segments, decoded and packed once, finished and
   encoded over and over on the encode threads (``encode_prepared``, as the
   pipeline calls it): the ceiling a GPU run is held to (goal >= 0.8 of it);
3. the whole pipeline (``run_ingest``: plan, decode, pack, finish on the
   encoder's device, encode, store); ratio = pipeline media-s/s over the
   baseline's media-s/s (1.0 = no overhead; the goal on a CPU is >= 0.9), and
   over the encode-only ceiling; once per ``--decoders`` value (NVDEC on and
   off on a GPU) and per ``--encode-threads`` value, on the same archive;
4. memory: RSS sampled while the pipeline runs, against the volume of decoded
   arrays that flowed through it (flat RSS while GBs flow = streaming works);
5. with ``--device cuda``: GPU busy as the encoder's CUDA-event time (finish +
   model, per batch, on its stream) over wall time, nvidia-smi's utilisation
   beside it, and which stage bounds the run (decode threads or the encoder).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_record as record  # noqa: E402

from embed_workers.encoder import Encoder  # noqa: E402
from embed_workers.executors import preset_model_id  # noqa: E402
from embed_workers.executors.local import encode_threads  # noqa: E402
from embed_workers.model.checkpoint import build_model  # noqa: E402
from embed_workers.pipeline import count_tokens_fn, decode_events, run_ingest  # noqa: E402
from embed_workers.prepare import Preparer  # noqa: E402
from embed_workers.preprocess import PreprocessOptions, to_model_input  # noqa: E402
from ingest.sources import iter_source  # noqa: E402
from schemas import Kind, Modality, Rejected, Segment, Settings  # noqa: E402
from search.store import open_store  # noqa: E402

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


# --- the archive ----------------------------------------------------------------------------


def make_archive(root: Path, videos: int, seconds: float, size: str, copies: int = 1) -> Path:
    """``videos`` distinct videos in an uncompressed tar, each ``copies`` times: a copy is
    the same video with 16 random bytes after its end (demuxers ignore them), so each is
    an item of its own (its own sha256) with the same decoding work: a long GPU run
    without encoding hours of video first."""
    folder = root / "videos"
    folder.mkdir(parents=True)
    for i in range(videos):  # distinct content per video: distinct sha256, nothing skipped
        subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
             f"testsrc2=size={size}:rate=25:duration={seconds}", "-f", "lavfi", "-i",
             f"sine=frequency={300 + 37 * i}:duration={seconds}", "-shortest",
             "-c:v", "libx264", "-preset", "ultrafast", "-g", "50", "-pix_fmt", "yuv420p",
             "-c:a", "aac", str(folder / f"v{i:03d}.mp4")], check=True, timeout=600)
    archive = root / "archive.tar"
    with tarfile.open(archive, "w") as tar:
        for path in sorted(folder.iterdir()):
            data = path.read_bytes()
            for copy in range(copies):
                name = path.name if copies == 1 else f"{path.stem}_{copy:04d}{path.suffix}"
                body = data if copies == 1 else data + os.urandom(16)
                info = tarfile.TarInfo(name)
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    shutil.rmtree(folder)
    return archive


# --- 1. decode alone ------------------------------------------------------------------------


def decode_alone(archive: Path, settings: Settings) -> dict[str, float]:
    """Decode and the whole recipe on the CPU, per segment, on the decode threads."""
    count_tokens = count_tokens_fn()
    options = PreprocessOptions(video_crops=settings.video_crops)
    preparer = Preparer(options)
    first_video(archive, settings)  # untimed: imports and first opens, as the pipeline's are
    started, cpu = time.perf_counter(), cpu_seconds()
    entries = [e for e in iter_source(str(archive), settings) if not isinstance(e, Rejected)]

    def one(entry) -> tuple[float, int, int, int, int, float]:
        media, segments, nbytes, packed, finished, finish_cpu = 0.0, 0, 0, 0, 0, 0.0
        try:
            for event in decode_events(entry.item, entry.path, settings.policy, settings,
                                       count_tokens):
                if isinstance(event, Segment):
                    segments += 1
                    nbytes += getattr(event.data, "nbytes", 0)
                    before = time.thread_time()
                    model_input = to_model_input(event, options)
                    finish_cpu += time.thread_time() - before
                    finished += model_input.element_size() * model_input.nelement()
                    packed += preparer(event).nbytes
                elif hasattr(event, "duration_s"):
                    media = event.duration_s or 0.0
        finally:
            entry.release()
        return media, segments, nbytes, packed, finished, finish_cpu

    with ThreadPoolExecutor(settings.decode_workers) as pool:
        results = list(pool.map(one, entries))
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    media = sum(r[0] for r in results)
    return {"wall_s": wall, "cpu_s": cpu, "media_s": media, "media_s_per_s": media / wall,
            "segments": sum(r[1] for r in results), "decoded_bytes": sum(r[2] for r in results),
            "packed_bytes": sum(r[3] for r in results),
            "finished_bytes": sum(r[4] for r in results),
            "finish_cpu_s": sum(r[5] for r in results)}  # the recipe on the CPU, within cpu_s


# --- 2. encode alone ------------------------------------------------------------------------


def first_video(archive: Path, settings: Settings) -> tuple[list, float]:
    """The archive's first video decoded and packed (as the decode threads pack), and its
    duration."""
    preparer = Preparer(PreprocessOptions(video_crops=settings.video_crops))
    count_tokens = count_tokens_fn()
    packs, media = [], 0.0
    for entry in iter_source(str(archive), settings):
        if isinstance(entry, Rejected):
            continue
        try:
            for event in decode_events(entry.item, entry.path, settings.policy, settings,
                                       count_tokens):
                if isinstance(event, Segment):
                    packs.append(preparer(event))
                elif hasattr(event, "duration_s"):
                    media = event.duration_s or 0.0
        finally:
            entry.release()
        break
    return packs, media


def encode_alone(archive: Path, settings: Settings, encoder: Encoder, threads: int,
                 min_s: float) -> dict[str, float]:
    """The encode-only ceiling: the first video's segments packed once, then encoded
    again and again by ``threads`` threads for at least ``min_s`` seconds; media-s/s
    counts each round as that video's duration."""
    packs, media = first_video(archive, settings)
    # As many copies of the video as fill every modality's batch, as the pipeline's are.
    counts = Counter(Modality(p.segment.modality).value for p in packs)
    budgets = {Modality(m).value: n for m, n in encoder.batch_sizes.items()}
    copies = max((math.ceil(budgets.get(m, n) / n) for m, n in counts.items()), default=1)
    packs, media = packs * copies, media * copies
    encoder.encode_prepared(packs)  # warm: every layout built once
    rounds, lock, started, cpu = [0], threading.Lock(), time.perf_counter(), cpu_seconds()

    def loop() -> None:
        while time.perf_counter() - started < min_s:
            encoder.encode_prepared(packs)
            with lock:
                rounds[0] += 1

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(loop) for _ in range(threads)]:
            future.result()
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    return {"media_s_per_s": rounds[0] * media / wall, "rounds": rounds[0], "wall_s": wall,
            "segments": len(packs), "media_s": media, "copies": copies,
            "cpu_s_per_media_s": cpu / max(rounds[0] * media, 1e-9)}


# --- 3-5. the pipeline, sampled ------------------------------------------------------------


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (ffmpeg), user + system."""
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class Sampler:
    """RSS of this process (and its children), and GPU utilisation when asked, every 0.5 s."""

    def __init__(self, gpu: bool) -> None:
        self.rss: list[int] = []
        self.gpu: list[float] = []
        self._stop = threading.Event()
        self._smi = (subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
             "-lms", "500"], stdout=subprocess.PIPE, text=True) if gpu else None)
        self._threads = [threading.Thread(target=self._sample_rss, daemon=True)]
        if self._smi is not None:
            self._threads.append(threading.Thread(target=self._read_gpu, daemon=True))
        for t in self._threads:
            t.start()

    def _sample_rss(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.5):
            procs = [me, *me.children(recursive=True)]
            self.rss.append(sum(_rss(p) for p in procs))

    def _read_gpu(self) -> None:
        for line in self._smi.stdout:
            if line.strip().isdigit():
                self.gpu.append(float(line.strip()))

    def stop(self) -> None:
        self._stop.set()
        if self._smi is not None:
            self._smi.terminate()
        for t in self._threads:
            t.join(timeout=5)


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.Error:
        return 0


class RandomWeightsEncoder(Encoder):
    """A checkpoint preset (huge) with random weights: speed only, vectors mean nothing."""

    def _model(self, modality: Modality):
        cache = self.__dict__.setdefault("_random_models", {})
        if modality not in cache:
            cache[modality] = build_model(self.preset, [modality], device=self.device,
                                          dtype=self.dtype, random_init=True)
        return cache[modality]


class EventTimed:
    """Mixin: CUDA-event time of each batch's finishing and model call, on the current
    stream; ``busy_s`` over wall time is GPU busy. Exact with one encode thread; with
    several, one batch's events can bracket another's kernels on the shared stream,
    so the figure is an upper bound (run ``--encode-threads 1,4`` to see both)."""

    def finish_batch(self, layout, packs):
        import torch

        start = torch.cuda.Event(enable_timing=True)
        start.record()
        batch = super().finish_batch(layout, packs)
        self.__dict__.setdefault("_starts", {})[id(batch)] = start
        return batch

    def encode_batch(self, modality, batch):
        import torch

        out = super().encode_batch(modality, batch)  # its .cpu() waits for the GPU
        start = self.__dict__.get("_starts", {}).pop(id(batch), None)
        if start is not None:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            with _EVENT_LOCK:
                self.__dict__["busy_s"] = self.__dict__.get("busy_s", 0.0) + \
                    start.elapsed_time(end) / 1000.0
        return out


_EVENT_LOCK = threading.Lock()


def encoder_class(args: argparse.Namespace) -> type[Encoder]:
    base = RandomWeightsEncoder if args.random_weights else Encoder
    if not args.device.startswith("cuda"):
        return base
    return type(f"EventTimed{base.__name__}", (EventTimed, base), {})


def warm_up(encoder: Encoder) -> float:
    """Build the towers a video needs before timing (a fixed cost, reported apart)."""
    started = time.perf_counter()
    clip = np.zeros((2, 224, 224, 3), np.uint8)
    sound = np.zeros(32000, np.float32)
    encoder.encode_segments([Segment("warm", Modality.VISION, Kind.VIDEO, 0, 0.0, 2.0, clip),
                             Segment("warm", Modality.AUDIO, Kind.VIDEO, 0, 0.0, 2.0, sound)])
    return time.perf_counter() - started


def run_pipeline(archive: Path, settings: Settings, args: argparse.Namespace) -> dict:
    encoder = encoder_class(args)(settings=settings)
    ceiling = None
    if args.executor == "local":  # Ray actors build their own model; that stays in the timing
        print(f"model build + first batch: {warm_up(encoder):.1f} s (not in the timings)")
        threads = encode_threads(settings.encode_threads, encoder)
        ceiling = encode_alone(archive, settings, encoder, threads,
                               min_s=3.0 if args.quick else 10.0)
        print(f"encode alone ({threads} threads, {ceiling['segments']} segments x "
              f"{ceiling['rounds']}): {ceiling['media_s_per_s']:.2f} media s/s")
        encoder.__dict__["busy_s"] = 0.0
    sampler = Sampler(gpu=settings.device.startswith("cuda"))
    with open_store(settings) as store:
        store.ensure_collection(preset_model_id(settings.preset), settings.policy)
        started, cpu = time.perf_counter(), cpu_seconds()
        try:
            report = run_ingest(str(archive), store, settings=settings, executor=args.executor,
                                encoder=encoder)
        finally:
            sampler.stop()
        wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    threads = encode_threads(settings.encode_threads, encoder) if args.executor == "local" else 1
    return {"report": report, "wall_s": wall, "rss": sampler.rss, "gpu": sampler.gpu,
            "encode_threads": threads, "cpu_s": cpu, "gpu_busy_s": encoder.__dict__.get("busy_s"),
            "encode_alone": ceiling}


def overhead(decode: dict, pipe: dict) -> dict[str, float]:
    """The pipeline's CPU per media-second against its parts' measured alone: decode and
    pack (decode alone less its CPU finishing, which the pipeline does on the encoder's
    device instead), plus finishing and encoding alone."""
    media = pipe["report"].media_seconds
    mine = pipe["cpu_s"] / max(media, 1e-9)
    decode_and_pack = decode["cpu_s"] - decode["finish_cpu_s"]
    parts = decode_and_pack / max(decode["media_s"], 1e-9) + pipe["encode_alone"]["cpu_s_per_media_s"]
    # Decode alone's CPU per media-s over the pipeline's: where decode alone already
    # keeps the cores busy, the pipeline's ratio to it can reach only about this.
    share = decode["cpu_s"] / max(decode["media_s"], 1e-9) / mine
    return {"pipeline": mine, "parts": parts, "ratio": mine / parts, "decode_share": share}


def print_results(decode: dict, pipe: dict, settings: Settings, executor: str) -> None:
    report = pipe["report"]
    media_rate = report.media_seconds / pipe["wall_s"]
    print(f"\narchive: {report.items_completed} videos, {decode['media_s']:.0f} media s, "
          f"{decode['segments']} segments, {decode['decoded_bytes'] / 1e9:.2f} GB decoded arrays")
    print(f"decode + preprocessing alone ({settings.decode_workers} threads): "
          f"{decode['media_s_per_s']:.2f} media s/s ({decode['wall_s']:.1f} s, "
          f"{decode['cpu_s']:.1f} CPU-s)")
    segments = max(decode["segments"], 1)
    print(f"bytes per segment to the encoder: {decode['packed_bytes'] / segments / 1e6:.3f} MB packed "
          f"(uint8 frames, waveforms) vs {decode['finished_bytes'] / segments / 1e6:.3f} MB "
          f"finished float32 model input")
    print(f"pipeline ({executor}, {settings.preset}, {settings.device}/{settings.dtype}): "
          f"{media_rate:.2f} media s/s ({pipe['wall_s']:.1f} s, {pipe['cpu_s']:.1f} CPU-s), "
          f"{report.points_written} points; videos decoded by "
          + (", ".join(f"{k} {v}" for k, v in sorted(report.video_decoders.items())) or "none"))
    print(f"ratio pipeline / (decode + preprocessing alone): "
          f"{media_rate / decode['media_s_per_s']:.2f} (goal on a CPU >= 0.9)")
    if pipe.get("encode_alone"):
        print(f"ratio pipeline / encode alone: "
              f"{media_rate / pipe['encode_alone']['media_s_per_s']:.2f} (goal on a GPU >= 0.8)")
        print(f"CPU-s per media-s: pipeline {overhead(decode, pipe)['pipeline']:.4f} against "
              f"{overhead(decode, pipe)['parts']:.4f} for decode alone plus encode alone: "
              f"{overhead(decode, pipe)['ratio']:.2f}x (the pipeline's own cost; on a CPU the "
              f"two share the cores, so the ratio above is at most decode's share)")
        print(f"decode's share of the pipeline's CPU: {overhead(decode, pipe)['decode_share']:.2f} "
              f"(decode alone's CPU per media-s over the pipeline's; with the cores busy in both, "
              f"the ratio to decode alone is bound by it)")
    stages = report.stage_seconds
    print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    # The decode threads/tasks also pack (checks, uint8 frames); the encoder finishes.
    worker_s = stages["decode"] + stages.get("preprocess", 0.0)
    decode_busy = worker_s / (settings.decode_workers * pipe["wall_s"])
    encode_busy = stages["encode"] / (pipe["encode_threads"] * pipe["wall_s"])
    bound = "decode" if decode_busy >= encode_busy else "encode"
    print(f"busy: decode+preprocess threads {decode_busy:.0%}, encode threads ({pipe['encode_threads']}) "
          f"{encode_busy:.0%} -> bound by {bound}")
    rss = np.array(pipe["rss"] or [0]) / 2**20
    quarter = max(len(rss) // 4, 1)
    print(f"RSS: peak {rss.max():.0f} MiB; peak in first quarter {rss[:quarter].max():.0f} MiB, "
          f"in last quarter {rss[-quarter:].max():.0f} MiB "
          f"(vs {decode['decoded_bytes'] / 2**20:.0f} MiB of arrays streamed through)")
    if pipe.get("gpu_busy_s") is not None and settings.device.startswith("cuda"):
        print(f"GPU busy (CUDA events, finish + model): {pipe['gpu_busy_s']:.1f} s of "
              f"{pipe['wall_s']:.1f} s = {pipe['gpu_busy_s'] / pipe['wall_s']:.0%} (goal >= 80%)")
    if pipe["gpu"]:
        gpu = np.array(pipe["gpu"])
        print(f"GPU utilisation: mean {gpu.mean():.0f}%, median {np.median(gpu):.0f}%, "
              f"max {gpu.max():.0f}% over {len(gpu)} samples")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small archive (CI smoke)")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--preset", default="imagebind_tiny")
    p.add_argument("--random-weights", action="store_true",
                   help="random weights for a checkpoint preset (speed only)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--videos", type=int, help="videos in the archive (default 6, quick 3)")
    p.add_argument("--seconds", type=float, help="seconds per video (default 20, quick 8)")
    p.add_argument("--size", default="640x360", help="video frame size")
    p.add_argument("--copies", type=int, default=1,
                   help="items per generated video (each with its own trailing bytes)")
    p.add_argument("--workers", type=int, default=2, help="decode threads / tasks")
    p.add_argument("--encode-threads", default="0",
                   help="0 = auto (4 on CUDA, 1 on CPU); a list (1,4) runs the pipeline once per value")
    p.add_argument("--decoders", default="auto",
                   help="MEDIABIND_VIDEO_DECODER per run, a list (nvdec,pyav: NVDEC on and off) "
                        "runs the pipeline once per value on the same archive")
    record.add_flag(p)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    videos = args.videos or (3 if args.quick else 6)
    seconds = args.seconds or (8.0 if args.quick else 20.0)
    with tempfile.TemporaryDirectory(prefix="mb-bench-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        archive = make_archive(root, videos, seconds, args.size, args.copies)
        print(f"made {videos} x {args.copies} x {seconds:g} s videos "
              f"({archive.stat().st_size / 1e6:.1f} MB tar) "
              f"in {time.perf_counter() - started:.1f} s; cpu cores {os.cpu_count()}")
        recorded = False
        for decoder in args.decoders.split(","):
            decode = None  # each decoder's own baseline
            for threads in (int(t) for t in args.encode_threads.split(",")):
                settings = Settings(home=root / f"home-{decoder}-{threads}", preset=args.preset,
                                    device=args.device, dtype=DTYPES[args.dtype],
                                    decode_workers=args.workers, store="edge", encode_actors=1,
                                    encode_threads=threads, video_decoder=decoder)
                decode = decode or decode_alone(archive, settings)
                print(f"\n--- video decoder {decoder}, {threads or 'auto'} encode threads")
                pipe = run_pipeline(archive, settings, args)
                print_results(decode, pipe, settings, args.executor)
                if args.record and not recorded:  # the first decoder and thread count
                    keep(decode, pipe, settings, args, videos, seconds)
                    recorded = True


def keep(decode: dict, pipe: dict, settings: Settings, args: argparse.Namespace,
         videos: int, seconds: float) -> None:
    """This run's figures for the README (``--record``)."""
    report = pipe["report"]
    rate = report.media_seconds / pipe["wall_s"]
    cuda = settings.device.startswith("cuda")
    figure = (f"{rate:.1f} media-s/s against {decode['media_s_per_s']:.1f} for decode + "
              f"preprocessing alone: {rate / decode['media_s_per_s']:.2f} of it")
    ceiling = pipe.get("encode_alone")
    if not cuda and ceiling:
        figure += (f"; CPU per media-s {overhead(decode, pipe)['ratio']:.2f}x decode alone "
                   f"plus encode alone (the two share {os.cpu_count()} cores); decode's share "
                   f"of the pipeline's CPU {overhead(decode, pipe)['decode_share']:.2f}")
    if cuda and ceiling:
        used = ", ".join(f"{k} {v}" for k, v in sorted(report.video_decoders.items()))
        figure += (f"; {rate / ceiling['media_s_per_s']:.2f} of encoding alone "
                   f"({ceiling['media_s_per_s']:.0f} media-s/s); videos decoded by {used or 'none'}")
    if cuda and pipe.get("gpu_busy_s") is not None:
        figure += f"; GPU busy {pipe['gpu_busy_s'] / pipe['wall_s']:.0%} (CUDA events)"
    gpu = None
    if cuda:
        import torch

        gpu = torch.cuda.get_device_name()
    record.save("pipeline_gpu" if cuda else "pipeline_cpu",
                f"whole pipeline, `{settings.preset}` {settings.device}/{settings.dtype}, "
                f"{args.executor} executor, {videos * args.copies} x {seconds:g}-s {args.size} videos",
                figure, {"media_s_per_s": rate, "decode_alone_media_s_per_s": decode["media_s_per_s"],
                         "encode_alone_media_s_per_s": ceiling and ceiling["media_s_per_s"],
                         "cpu_overhead": ceiling and overhead(decode, pipe),
                         "video_decoder": settings.video_decoder,
                         "video_decoders_used": dict(report.video_decoders),
                         "wall_s": pipe["wall_s"], "gpu_busy_s": pipe.get("gpu_busy_s"),
                         "stage_seconds": dict(report.stage_seconds)}, gpu=gpu)


if __name__ == "__main__":
    main()
