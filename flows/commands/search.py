"""`mediabind search`: query the collection from the shell (a thin layer over MediaSearch).

    mediabind search "a dog barking"
    mediabind search --image bird.jpg --audio waves.wav --weights image=0.5,audio=0.5
    mediabind search "city at night" --negative-text rain --kind video --limit 5 --json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from schemas import Settings
from search.query import KEYWORDS

# Keywords whose value is a file; text comes as words (positional or --text).
FILE_KEYWORDS = tuple(k for k in KEYWORDS if not KEYWORDS[k].text_is_value)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "search", help="search the collection by text, image, audio, video, depth, thermal or IMU",
        description="Cross-modal search. Inputs are combined as in the ImageBind paper "
                    "(each normalised, weighted, summed, renormalised).")
    parser.add_argument("query", nargs="*", help="query text (words are joined with spaces)")
    parser.add_argument("--text", action="append", default=[], help="another text input")
    for name in FILE_KEYWORDS:
        parser.add_argument(f"--{name}", action="append", default=[], type=Path, metavar="PATH",
                            help=f"{name} file to query with (repeatable)")
    parser.add_argument("--input", action="append", default=[], type=parse_input,
                        metavar="NAME=PATH", help="a file of any modality by name, including "
                        "the extensions bound with `mediabind bind` (e.g. radar=scan.radar.npy)")
    _add_negative_options(parser)
    _add_result_options(parser)
    return parser


def _add_negative_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("negatives (the query moves away from these)")
    group.add_argument("--negative-text", action="append", default=[], metavar="TEXT")
    for name in FILE_KEYWORDS:
        group.add_argument(f"--negative-{name}", action="append", default=[], type=Path,
                           metavar="PATH")
    group.add_argument("--negative-weight", type=float, default=None, metavar="L",
                       help="λ in q − λ·negative (default: MEDIABIND_NEGATIVE_WEIGHT)")


def _add_result_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=parse_weights, default=None, metavar="K=W,...",
                        help="per-input weights, e.g. image=0.5,audio=0.5 (default 1 each)")
    parser.add_argument("--kind", action="append", default=None,
                        help="only files of this kind (image, video, audio, text, ...)")
    parser.add_argument("--modality", action="append", default=None,
                        help="only points of this modality (vision, audio, text, ...)")
    parser.add_argument("--where", type=parse_where_json, default=None, metavar="JSON",
                        help='payload filter, e.g. \'{"start_s": {"gte": 10}}\'')
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--offset", type=int, default=0, help="skip this many results (paging)")
    parser.add_argument("--moments", type=int, default=1, help="moments listed per file")
    parser.add_argument("--flat", action="store_true", help="one row per segment, not per file")
    parser.add_argument("--collection", default=None, help="collection or alias to search")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def parse_weights(text: str) -> dict[str, float]:
    """``image=0.5,audio=0.5`` → {"image": 0.5, "audio": 0.5}."""
    weights: dict[str, float] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = (x.strip() for x in pair.partition("="))
        try:
            weights[key] = float(value)
        except ValueError:
            key = ""
        if not key:
            raise argparse.ArgumentTypeError(f"weights are KEY=NUMBER pairs, got {pair!r}")
    return weights


def parse_input(text: str) -> tuple[str, Path]:
    """``radar=scan.radar.npy`` → ("radar", Path("scan.radar.npy"))."""
    name, _, path = text.partition("=")
    if not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"--input is NAME=PATH, got {text!r}")
    return name.strip(), Path(path.strip())


def named_inputs(pairs: list[tuple[str, Path]]) -> dict[str, list[Path]]:
    inputs: dict[str, list[Path]] = {}
    for name, path in pairs:
        inputs.setdefault(name, []).append(path)
    return inputs


def parse_where_json(text: str) -> dict[str, Any]:
    try:
        where = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--where is not valid JSON: {exc}") from None
    if not isinstance(where, dict):
        raise argparse.ArgumentTypeError("--where is a JSON object of field -> condition")
    return where


def query_inputs(args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    """The keyword inputs given on the command line (one list per keyword, empty left out)."""
    texts = list(getattr(args, f"{prefix}text"))
    if not prefix and args.query:
        texts.insert(0, " ".join(args.query))
    inputs: dict[str, Any] = {"text": texts}
    for name in FILE_KEYWORDS:
        inputs[name] = getattr(args, f"{prefix}{name}")
    return {k: v for k, v in inputs.items() if v}


def run(args: argparse.Namespace) -> int:
    from search.client import MediaSearch

    negative = query_inputs(args, prefix="negative_") or None
    try:
        with MediaSearch(Settings(), collection=args.collection) as client:
            results = client.search(
                **query_inputs(args), inputs=named_inputs(args.input), weights=args.weights, negative=negative,
                negative_weight=args.negative_weight, kinds=args.kind, modalities=args.modality,
                where=args.where, limit=args.limit, offset=args.offset,
                group_by_file=not args.flat, moments=args.moments)
    except LookupError as exc:  # no collection behind the alias yet: a user error, not a crash
        raise RuntimeError(str(exc)) from None
    print(results.to_json(indent=2) if args.json else results)
    return 0
