"""Write the README's performance table from the benchmarks' records (docs/performance/).

    python benchmarks/performance_report.py           # rewrite the table in README.md
    python benchmarks/performance_report.py --check   # exit 1 if the README differs

The table sits between ``<!-- performance:start -->`` and
``<!-- performance:end -->``. Each row is one ``docs/performance/NAME.json``,
written by a benchmark run with ``--record`` (``benchmarks/bench_record.py``), in the
order of ``ORDER``; a benchmark with no record is named below the table with
its command, never given a figure.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RECORDS = ROOT / "docs" / "performance"
MARKERS = re.compile(r"(<!-- performance:start -->\n)(.*?)(<!-- performance:end -->)", re.S)

# Row order, and what to run for a benchmark that has no record yet.
ORDER: dict[str, str] = {
    "encode": "python benchmarks/encode.py --device cuda --dtype bf16 --preset imagebind_huge "
              "--record",
    "pipeline_gpu": "python benchmarks/pipeline.py --preset imagebind_huge --random-weights "
                    "--device cuda --dtype bf16 --record",
    "pipeline_cpu": "python benchmarks/pipeline.py --record",
    "decode": "python benchmarks/decode.py --record",
    "scale": "python benchmarks/scale.py --record",
    "store": "python benchmarks/store.py --record",
    "memory": "python benchmarks/memory.py --record",
    "members": "python benchmarks/members.py --dir /dev/shm --record",
    "load": "python benchmarks/load.py --record",
}


def load(records: Path = RECORDS) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(records.glob("*.json"))}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(records: dict[str, dict[str, Any]]) -> str:
    names = [n for n in ORDER if n in records] + sorted(set(records) - set(ORDER))
    lines = ["| what | figure | where | when | command |", "|---|---|---|---|---|"]
    for name in names:
        r = records[name]
        lines.append(f"| {_cell(r['what'])} | {_cell(r['figure'])} | {_cell(r['where'])} | "
                     f"{r['date']}, `{r['commit']}` | `{_cell(r['command'])}` |")
    missing = [n for n in ORDER if n not in records]
    if missing:
        lines += ["", "No record yet, so no figure (the command that records one):"]
        lines += [f"- `{n}`: `{ORDER[n]}`" for n in missing]
    return "\n".join(lines) + "\n"


def rewrite(text: str, records: dict[str, dict[str, Any]]) -> str:
    if not MARKERS.search(text):
        raise SystemExit("README.md has no <!-- performance:start/end --> markers")
    table = render(records)
    return MARKERS.sub(lambda m: m.group(1) + table + m.group(3), text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    args = parser.parse_args()
    text = README.read_text()
    new = rewrite(text, load())
    if args.check:
        if new != text:
            print("README.md's performance table differs from docs/performance/: "
                  "run python benchmarks/performance_report.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
