"""Everything issue #11 measures on a GPU, as one prepared session on a lent machine.

That machine (see ``scripts/gpu_kit.sh``) starts bare: torch, pyarrow, pandas,
pytest and psutil, none of our other packages, no ffmpeg, no network, and each
carry holds 64 MiB. So the session comes in two parts, run one straight after
the other while the machine is warm, each with its own carry:

    bash scripts/gpu_kit.sh                       # here, once: fills .gpu/a and .gpu/b
    # device run, carry [".gpu/a"]:
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_session.py a
    # device run, carry [".gpu/b"], at once:
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_session.py b

Part a installs its wheels and ffmpeg under /tmp (they stay while the machine is
warm), prints the preflight (what the machine has: the card, torch, ffmpeg,
NVDEC's library, each package we import), and runs the bf16 GEMM, the vision
encoder at batch 64 and 256 (``encode.py``) and the CUDA tests (device
preprocessing against the CPU's, bf16 against fp32), then the encoder compiled
(``torch.compile``, CUDA graphs) at batch 256 beside the eager one. Part b adds PyNvVideoCodec
and the embedded Qdrant engine, runs the NVDEC decoder tests and the pipeline
(``pipeline.py``) with NVDEC on and off on the same archive. Every step has its
own time limit, and one that cannot run says why (preflight) instead of
failing the rest. Logs, the figures' JSON and the benchmark records
(``record_encode.json``, ``record_pipeline_gpu.json``: copy them to
``docs/performance/`` without the prefix, then run ``performance_report.py``) go
to ``$OUT`` (or ``--out``). Runs here too, where it reports what is missing and
runs what it can.
"""

from __future__ import annotations

import argparse
import glob
import json
import lzma
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SITE = Path("/tmp/mediabind-site")  # the carried wheels, installed; kept while warm
BIN = Path("/tmp/mediabind-bin")  # the carried ffmpeg


def install(part: str) -> None:
    """The part's wheels into SITE, and its ffmpeg into BIN (part a)."""
    kit = REPO / ".gpu" / part
    wheels = sorted(glob.glob(str(kit / "*.whl")))
    if not wheels:
        print(f"install: no wheels under {kit} (carry .gpu/{part}; scripts/gpu_kit.sh makes it)")
        return
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(SITE),
                    *wheels], check=False)
    packed = kit / "ffmpeg.xz"
    if packed.exists():
        BIN.mkdir(parents=True, exist_ok=True)
        try:
            with lzma.open(packed) as source, open(BIN / "ffmpeg.part", "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            (BIN / "ffmpeg.part").chmod(0o755)
            (BIN / "ffmpeg.part").rename(BIN / "ffmpeg")
        except (OSError, lzma.LZMAError) as e:
            print(f"install: ffmpeg not unpacked ({e})")
    print(f"install: {len(wheels)} wheels from .gpu/{part} in {time.perf_counter() - started:.0f} s")


def environment(home: Path, part: str) -> dict[str, str]:
    env = dict(os.environ)
    commit = REPO / ".gpu" / part / "commit"
    if commit.exists():  # the records name the commit the kit was made from
        env["MEDIABIND_BENCH_COMMIT"] = commit.read_text().strip()
    env["PYTHONPATH"] = os.pathsep.join([str(SITE), str(REPO), env.get("PYTHONPATH", "")])
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env["MEDIABIND_HOME"] = str(home)
    return env


PREFLIGHT = r"""
import importlib, json, shutil, subprocess, sys
facts = {"python": sys.version.split()[0]}
try:
    import torch
    facts["torch"] = torch.__version__
    facts["cuda"] = torch.cuda.is_available()
    if facts["cuda"]:
        p = torch.cuda.get_device_properties(0)
        facts["card"] = p.name
        facts["memory_gib"] = round(p.total_memory / 2**30, 1)
        facts["capability"] = f"{p.major}.{p.minor}"
except Exception as e:
    facts["torch"] = f"missing ({e})"
for name in ("av", "PyNvVideoCodec", "qdrant_client", "qdrant_edge", "pydantic",
             "pydantic_settings", "pyarrow", "psutil", "pytest", "ftfy", "ffmpeg", "schemas"):
    try:
        module = importlib.import_module(name)
        facts[name] = getattr(module, "__version__", "present")
    except Exception as e:
        facts[name] = f"missing ({type(e).__name__}: {e})"[:200]
for tool in ("ffmpeg", "ffprobe", "nvidia-smi"):
    path = shutil.which(tool)
    facts[tool + "_binary"] = path or "missing"
    if path and tool != "nvidia-smi":
        out = subprocess.run([path, "-version"], capture_output=True, text=True).stdout
        facts[tool + "_binary"] = out.splitlines()[0] if out else path
libs = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
facts["libnvcuvid"] = next((l.strip() for l in libs.splitlines() if "libnvcuvid" in l), "missing")
try:
    from ingest.decode.nvdec_frames import unavailable_reason
    facts["nvdec"] = unavailable_reason() or "available"
except Exception as e:
    facts["nvdec"] = f"unknown ({type(e).__name__}: {e})"[:200]
print(json.dumps(facts, indent=1))
"""


def step(name: str, argv: list[str], env: dict[str, str], out: Path, timeout_s: int,
         results: dict) -> None:
    """Run one step, its output to the console and to OUT/NAME.log, within its limit."""
    print(f"\n=== {name}: {' '.join(argv)} (at most {timeout_s} s)", flush=True)
    started = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        try:
            proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            killer = threading.Timer(timeout_s, proc.kill)  # a silent hang too
            killer.start()
            for line in proc.stdout:
                print(line, end="", flush=True)
                log.write(line)
                log.flush()
            code = proc.wait()
            killer.cancel()
        except OSError as e:
            code = f"could not start: {e}"
    seconds = time.perf_counter() - started
    results[name] = {"rc": code, "seconds": round(seconds, 1),
                     "timed_out": seconds > timeout_s}
    print(f"=== {name}: rc {code} in {seconds:.0f} s", flush=True)


def preflight(env: dict[str, str], out: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", PREFLIGHT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    print("=== preflight\n" + done.stdout + done.stderr[-2000:], flush=True)
    try:
        facts = json.loads(done.stdout)
    except json.JSONDecodeError:
        facts = {"error": done.stderr[-2000:]}
    (out / "preflight.json").write_text(json.dumps(facts, indent=1))
    return facts


def has(facts: dict, *names: str) -> str | None:
    """None when every name is present, else what is missing (the step is skipped)."""
    missing = [n for n in names if str(facts.get(n, "missing")).startswith("missing")]
    return f"missing {', '.join(missing)}" if missing else None


def write_session(args: argparse.Namespace, facts: dict, results: dict) -> None:
    (args.out / f"session_{args.part}.json").write_text(
        json.dumps({"preflight": facts, "steps": results}, indent=1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=("a", "b"))
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-out")))
    parser.add_argument("--skip-install", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.skip_install:
        install(args.part)
    home = Path("/tmp/mediabind-home")
    env = environment(home, args.part)
    facts = preflight(env, args.out)
    cuda = facts.get("cuda") is True
    py = sys.executable
    results: dict = {}
    plan: list[tuple[str, list[str], int, str | None]] = []
    if args.part == "a":
        plan += [
            ("encode", [py, "benchmarks/encode.py", "--device", "cuda", "--dtype", "bf16",
                        "--preset", "imagebind_huge", "--batch", "64", "256", "--no-reference",
                        "--json", str(args.out / "encode.json"), "--record"], 240,
             None if cuda else "no CUDA device"),
            ("cuda_tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                            "tests/test_device_preprocess.py::"
                            "test_finishing_on_the_gpu_equals_finishing_on_the_cpu",
                            "tests/test_encoder.py::test_cuda_bf16_vectors_agree_with_cpu_fp32"],
             150,
             has(facts, "pydantic", "av", "ffmpeg_binary") or (None if cuda else "no CUDA device")),
            # Last, so its compile time cannot starve the rest: whether inductor's fusions
            # and CUDA graphs beat the eager trunk at batch 256 (the eager row is "encode").
            ("encode_compiled", [py, "benchmarks/encode.py", "--device", "cuda", "--dtype", "bf16",
                                 "--preset", "imagebind_huge", "--batch", "256", "--no-reference",
                                 "--compile", "reduce-overhead",
                                 "--json", str(args.out / "encode_compiled.json")], 240,
             None if cuda else "no CUDA device"),
        ]
    else:
        # NVDEC on and off where the machine has it; else the CPU decoder alone, said so.
        decoders = "nvdec,pyav" if facts.get("nvdec") == "available" else "pyav"
        plan += [
            ("nvdec_tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                             "tests/test_decode_video.py", "-k", "nvdec or decoder"], 120,
             has(facts, "pydantic", "av", "PyNvVideoCodec", "ffmpeg_binary")),
            ("pipeline", [py, "benchmarks/pipeline.py", "--preset", "imagebind_huge",
                          "--random-weights", "--device", "cuda", "--dtype", "bf16",
                          "--videos", "12", "--copies", "12", "--seconds", "20",
                          "--size", "1280x720",
                          "--workers", str(max(2, (os.cpu_count() or 4) - 4)),
                          "--decoders", decoders, "--record"], 330,
             has(facts, "pydantic", "av", "qdrant_edge", "ffmpeg_binary")
             or (None if cuda else "no CUDA device")),
        ]
    for name, argv, timeout_s, why_not in plan:
        if why_not:
            print(f"\n=== {name}: skipped ({why_not})", flush=True)
            results[name] = {"skipped": why_not}
            continue
        step(name, argv, env, args.out, timeout_s, results)
        write_session(args, facts, results)  # what a later step's hang would lose
    for name in ("encode", "pipeline_gpu"):  # records to bring back into docs/performance
        made = REPO / "docs" / "performance" / f"{name}.json"
        if made.exists() and results.get("encode" if name == "encode" else "pipeline", {}).get("rc") == 0:
            shutil.copy(made, args.out / f"record_{name}.json")
    write_session(args, facts, results)
    print("\n=== summary\n" + json.dumps(results, indent=1))
    shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
