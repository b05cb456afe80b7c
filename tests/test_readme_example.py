"""The README's Python example runs as written, and the columns it names are the frame's.

The example searches the default store: here that is an embedded store under a
temporary ``MEDIABIND_HOME`` holding a few generated files, with the tiny
preset, and the files the example names are made in the working folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from media import MediaLibrary, ffmpeg
from pipeline_helpers import PRESET

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python: search in ten lines", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def named_columns(example: str) -> list[str]:
    """The frame's columns as the example's comment names them (before the "...")."""
    comment = next(line for line in example.splitlines() if "to_pandas()" in line)
    names = comment.split("#", 1)[1].split("...", 1)[0]
    return [n.strip() for n in names.split(",") if n.strip()]


def test_the_readme_example_runs_and_names_the_frames_columns(tmp_path):
    library = MediaLibrary(tmp_path / "library")
    media = tmp_path / "media"
    media.mkdir()
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:duration=3:rate=8", "-pix_fmt",
           "yuv420p", str(media / "clip.mp4"))
    (media / "note.txt").write_text("a dog barking at the sea\n")
    work = tmp_path / "work"
    work.mkdir()
    ffmpeg("-f", "lavfi", "-i", "color=c=blue:size=40x30", "-frames:v", "1",
           str(work / "bird.jpg"))
    for name in ("waves.wav", "fire.wav"):
        (work / name).write_bytes(library.get("tone_wav").read_bytes())
    env = {**os.environ, "MEDIABIND_HOME": str(tmp_path / "home"), "MEDIABIND_PRESET": PRESET,
           "MEDIABIND_DEVICE": "cpu", "MEDIABIND_DTYPE": "float32"}
    subprocess.run([sys.executable, "-c", "import sys; from flows.cli import main; "
                    "sys.exit(main())", "ingest", str(media)], env=env,
                   check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    example = readme_example()
    check = textwrap.dedent(f"""
        missing = [c for c in {named_columns(example)!r} if c not in df.columns]
        assert not missing, f"the README names columns the frame lacks: {{missing}}"
        assert len(df) == len(hits)
        print("ok", len(df))
    """)
    done = subprocess.run([sys.executable, "-c", example + check], env={
        **env, "PYTHONPATH": str(REPO)}, cwd=work, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1].startswith("ok")
