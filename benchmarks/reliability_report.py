"""Render the figure tables of docs/reliability.md from what the reliability tests measured.

    .venv/bin/python benchmarks/reliability_report.py [--figures F.json] [--load L.json]
        [--doc docs/reliability.md] [--allow-failures]

Without ``--figures`` it runs the reliability suite (``pytest tests/reliability -m
"slow or not slow"``, a few minutes on two cores) with ``MEDIABIND_RELIABILITY_OUT``
set to a temporary file, where tests/reliability/conftest.py writes every figure
the tests recorded; without ``--load`` it runs ``benchmarks/load.py --json``.

Then it replaces the text between each ``<!-- figures:NAME:start -->`` and
``<!-- figures:NAME:end -->`` pair in the doc with what it renders from those
figures, and keeps the figures themselves in the ``data`` section, so that
tests/test_reliability_doc.py can render them again and compare: no number in
a generated table can be typed in by hand. Prose outside the markers is left
alone. A failing suite leaves the doc untouched unless ``--allow-failures``
(its figures are still printed, and each row says whether its test passed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"
SUITE = ["tests/reliability", "-m", "slow or not slow"]
SECTIONS = ("run", "summary", "faults", "hostile", "load", "data")
MARKERS = re.compile(r"(<!-- figures:(\w+):start -->\n)(.*?)(<!-- figures:\2:end -->)", re.S)
NOT_MEASURED = "not measured in this run"

Figures = dict[str, Any]
Entry = dict[str, Any]


class Facts(dict):
    """One figure's values; a key an older run did not record reads as None ("–")."""

    def __missing__(self, key: str) -> None:
        return None


# --- reading figures ---------------------------------------------------------------------------

def entry(figs: Figures, name: str) -> Facts | None:
    found = figs.get(name)
    return Facts(found) if found is not None else None


def cases(figs: Figures, name: str) -> dict[str, Facts]:
    """A parametrized test's cases (``figures(name, case=...)``), in recording order."""
    return {c: Facts(e) for c, e in (figs.get(name) or {}).get("cases", {}).items()}


def flat(figs: Figures, names: Iterable[str]) -> list[Entry]:
    """Every recorded entry of ``names``: a plain figure, or each of its cases."""
    out: list[Entry] = []
    for name in names:
        found = figs.get(name)
        if found is not None:
            out.extend(found["cases"].values() if "cases" in found else [found])
    return out


def total(entries: Iterable[Entry], key: str) -> int | float:
    return sum(e.get(key) or 0 for e in entries)


def highest(entries: Iterable[Entry], key: str) -> float | None:
    values = [e[key] for e in entries if e.get(key) is not None]
    return max(values) if values else None


# --- formatting ----------------------------------------------------------------------------------

def num(value: Any) -> str:
    """One figure as the doc shows it: thousands separated, floats to 2-3 digits."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.1f}" if abs(value) >= 1 else f"{value:.2f}"
    return str(value)


def secs(value: Any) -> str:
    return f"{num(value)} s"


def code(name: str) -> str:
    return f"`{name}`"


def table(header: list[str], rows: list[list[str]]) -> str:
    # A "|" inside a cell would split it: figures are free text only in error messages.
    lines = [header, ["---"] * len(header)] + [[c.replace("|", "\\|") for c in r] for r in rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


LOSS_KEYS = ("_lost", "_duplicated", "_stray")


def losses(entries: Iterable[Entry]) -> int:
    """Points lost, doubled or stray, summed over every counter an entry recorded."""
    return sum(v for e in entries for k, v in e.items()
               if k.endswith(LOSS_KEYS) and isinstance(v, int))


def held(figs: Figures, names: list[str]) -> str:
    """Whether the fault was survived: every test passed and the store lost nothing."""
    entries = flat(figs, names)
    if not entries:
        return NOT_MEASURED
    failed = sum(1 for e in entries if not e.get("test_passed"))
    if failed:
        return f"**no**: {failed} of {len(entries)} checks failed"
    if losses(entries):
        return f"**no**: {losses(entries)} points lost, doubled or stray"
    return "yes"


def lost_of(entries: list[Entry], lost: str, expected: str) -> str:
    if not entries:
        return "–"
    return f"{num(total(entries, lost))} of {num(total(entries, expected))}"


# --- the summary table ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One summary row: the figures it reads and how they read as 'what was tried'."""

    what: str
    names: tuple[str, ...]
    tried: Callable[[Figures], str]
    reproduce: str
    lost: tuple[str, str] | None = ("points_lost", "points_expected")
    duplicated: str | None = "points_duplicated"


def _tried_hostile(figs: Figures) -> str:
    corpus = entry(figs, "hostile_corpus") or Facts()
    parts = [
        f"{num(total(flat(figs, ['fuzz_decoders']), 'inputs'))} mutated media files and "
        f"{num(total(flat(figs, ['fuzz_decoder_seeds']), 'inputs'))} seeds",
        f"{num(total(flat(figs, ['fuzz_sources']), 'inputs'))} fuzzed archives and folders",
        f"a {num(corpus.get('entries'))}-entry hostile corpus",
        f"{num(len(cases(figs, 'decompression_bombs')))} bombs",
        f"{num(len(cases(figs, 'hostile_queries')))} query cases",
    ]
    return ", ".join(parts)


def _tried_security(figs: Figures) -> str:
    return f"{num(len(cases(figs, 'security')))} checks (shell, torch.load, API key, TLS, writes)"


def _tried_ray(figs: Figures) -> str:
    e = entry(figs, "ray_encode_worker_killed") or Facts()
    return f"{num(e['items'])} items, Ray executor, the encode worker SIGKILLed mid-run"


def _tried_sigkill(figs: Figures) -> str:
    e = entry(figs, "ingest_process_sigkilled") or Facts()
    return (f"{num(e['items'])} items, the process killed after "
            f"{num(e['killed_after_segments'])} segments")


def _tried_short_outage(figs: Figures) -> str:
    e = entry(figs, "qdrant_unavailable_1.5s") or Facts()
    return f"ConnectionError on every upsert for {secs(e['outage_s'])}"


def _tried_long_outage(figs: Figures) -> str:
    e = entry(figs, "qdrant_unavailable_beyond_retries") or Facts()
    return (f"ConnectionError for {secs(e['outage_s'])}; the store tries "
            f"{num(e['retry_attempts'])} times over {secs(e['retry_budget_s'])}")


def _tried_disk_full(figs: Figures) -> str:
    e = entry(figs, "embedded_store_disk_full") or Facts()
    return (f"tmpfs {num(e['tmpfs_mib'])} MiB, filled to "
            f"{num(e['free_mib_after_fill'])} MiB free")


def _tried_checkpoint(figs: Figures) -> str:
    found = cases(figs, "checkpoint_cache_damaged")
    right = sum(1 for e in found.values() if e["bytes_right"])
    refused = sum(1 for e in found.values() if e["refused_with"])
    return (f"{num(len(found))} damaged caches ({', '.join(code(c) for c in found)}): "
            f"{num(right)} ended with the right bytes, {num(refused)} of them after one clear "
            "refusal")


def _tried_concurrent(figs: Figures) -> str:
    found = cases(figs, "concurrent_searches")  # keyed by str(clients): sort by the number
    clients = " / ".join(num(e["clients"]) for e in sorted(found.values(),
                                                            key=lambda e: e["clients"] or 0))
    points = highest(found.values(), "points")
    return (f"{clients} threads on one guarded handle, {num(points)} points, "
            f"{num(total(found.values(), 'queries'))} queries")


def _tried_while_ingesting(figs: Figures) -> str:
    e = entry(figs, "search_while_ingesting") or Facts()
    return (f"one searcher ({num(e['searches'])} searches) beside a run writing "
            f"{num(e['items'])} items through the same lock")


HOSTILE = ("fuzz_decoders", "fuzz_decoder_seeds", "fuzz_sources", "hostile_corpus",
           "decompression_bombs", "max_members", "hostile_queries")

SUMMARY = (
    Row("Hostile input (fuzzed media and archives, hostile corpus, hostile queries)", HOSTILE,
        _tried_hostile, "`test_fuzz_*.py`, `test_hostile_corpus.py`, `test_query_hostile.py`",
        lost=("good_points_lost", "good_points_expected")),
    Row("Security checks", ("security",), _tried_security, "`test_security.py`", lost=None,
        duplicated=None),
    Row("Ray encode worker SIGKILLed mid-run", ("ray_encode_worker_killed",), _tried_ray,
        "`test_faults_run.py -k ray`"),
    Row("`mediabind ingest` process SIGKILLed mid-run", ("ingest_process_sigkilled",),
        _tried_sigkill, "`test_faults_run.py -k killed_ingest`"),
    Row("Store unavailable briefly mid-run", ("qdrant_unavailable_1.5s",), _tried_short_outage,
        "`test_faults_store.py -k short_outage`"),
    Row("Store unavailable past the retries", ("qdrant_unavailable_beyond_retries",),
        _tried_long_outage, "`test_faults_store.py -k longer_than`"),
    Row("Embedded store's disk full", ("embedded_store_disk_full",), _tried_disk_full,
        "`test_faults_store.py -k full_disk`"),
    Row("Damaged checkpoint download cache", ("checkpoint_cache_damaged",), _tried_checkpoint,
        "`test_faults_checkpoint.py`", lost=None, duplicated=None),
    Row("Concurrent searches", ("concurrent_searches",), _tried_concurrent,
        "`test_load.py -k concurrent`", duplicated=None, lost=("points_lost", "points")),
    Row("Search while ingesting", ("search_while_ingesting",), _tried_while_ingesting,
        "`test_load.py -k while_a_run`"),
)


def _summary_cells(row: Row, figs: Figures) -> list[str]:
    entries = flat(figs, row.names)
    measured = bool(entries)
    tried = row.tried(figs) if measured else NOT_MEASURED
    lost = lost_of(entries, *row.lost) if row.lost and measured else "n/a"
    duplicated = num(total(entries, row.duplicated)) if row.duplicated and measured else "n/a"
    figures_cell = ", ".join(code(n) for n in row.names)
    return [row.what, tried, held(figs, list(row.names)), lost, duplicated, figures_cell,
            row.reproduce]


def _unlisted_cells(name: str, figs: Figures) -> list[str]:
    """A figure no row knows yet: shown raw, so a new test cannot be left out of the doc."""
    values = "; ".join(f"{k}={num(v)}" for e in flat(figs, [name]) for k, v in sorted(e.items()))
    return [f"(new) {code(name)}", values, held(figs, [name]), "–", "–", code(name), "–"]


def listed_names() -> set[str]:
    return {n for row in SUMMARY for n in row.names}


def render_summary(data: dict[str, Any]) -> str:
    figs = data["figures"]
    rows = [_summary_cells(row, figs) for row in SUMMARY]
    unlisted = sorted(n for n in figs if not n.startswith("_") and n not in listed_names())
    rows += [_unlisted_cells(n, figs) for n in unlisted]
    header = ["What", "Tried", "Held?", "Points lost", "Points duplicated", "Figure",
              "Reproduce"]
    return table(header, rows)


# --- faults mid-run ------------------------------------------------------------------------------

def _fault_short_outage(e: Entry) -> list[str]:
    backoff = "+".join(f"{s:g}" for s in e["retry_backoff_s"] or [])
    return [f"Store unavailable {secs(e['outage_s'])}",
            f"{num(e['refused_upserts'])} upserts refused, retried; {num(e['outcome'])}",
            f"{num(e['segments_reencoded'])} segments re-encoded",
            f"run {secs(e['run_s'])}, of which {secs(e['store_stage_s'])} in the store stage "
            f"(retry backoff {backoff} s)"]


def _fault_long_outage(e: Entry) -> list[str]:
    report = "report written with the error" if e.get("report_has_error") else \
        "**no error in the report**"
    return [f"Store unavailable past the retries ({num(e['retry_attempts'])} attempts, "
            f"{secs(e['retry_budget_s'])})",
            f"run failed after {secs(e['failed_run_s'])} with `{num(e['error_type'])}`, "
            f"{report}; "
            f"{num(e['points_kept'])} points ({num(e['items_kept'])} items) kept; rerun: "
            f"{num(e['outcome'])}",
            f"{num(e['segments_reencoded'])} segments encoded but not stored, re-encoded by "
            "the rerun",
            f"failed run {secs(e['failed_run_s'])}, rerun {secs(e['rerun_s'])} (warm model)"]


def _fault_sigkill(e: Entry) -> list[str]:
    return ["Whole process SIGKILLed",
            f"{num(e['points_kept'])} points ({num(e['items_kept'])} items) survived the kill; "
            f"the rerun found {num(e['rerun_skipped_items'])} items stored "
            f"({num(e['rerun_unread_items'])} settled by the ledger, not read again) and "
            f"completed {num(e['rerun_completed_items'])}",
            f"{num(e['points_rewritten'])} points rewritten",
            f"killed at {secs(e['killed_run_s'])}, rerun {secs(e['rerun_s'])} (includes process "
            "start and model load)"]


def _fault_disk_full(e: Entry) -> list[str]:
    probe = f"probe search found its point (score {num(e['probe_score'])})" if \
        e.get("probe_found") else "**probe search missed its point**"
    return ["Embedded store disk full",
            f"refused with `{num(e['error_type'])}` ({num(e['errno'])}); "
            f"{num(e['first_run_points_lost'])} of {num(e['first_run_points_expected'])} points "
            f"stored before lost, {probe}",
            f"rerun after freeing space: {num(e['rerun_skipped_items'])} items skipped, "
            f"{num(e['rerun_completed_items'])} completed",
            "–"]


def _fault_ray(e: Entry) -> list[str]:
    ran = "completed" if e.get("run_finished_by_itself") else "**did not finish by itself**"
    error = f" (error: {num(e['run_error'])})" if e.get("run_error") else ""
    return ["Ray encode worker SIGKILLed",
            f"run {ran} with {num(e['items_completed_by_killed_run'])} of {num(e['items'])} "
            f"items{error}; the rerun skipped {num(e['rerun_skipped_items'])}",
            "the items the dead worker had taken, decoded and encoded again",
            f"run {secs(e['killed_run_s'])} including the kill and the re-decoded items; "
            f"rerun {secs(e['rerun_s'])}"]


FAULTS: tuple[tuple[str, str, Callable[[Entry], list[str]]], ...] = (
    ("qdrant_unavailable_1.5s", "Store unavailable briefly", _fault_short_outage),
    ("qdrant_unavailable_beyond_retries", "Store unavailable past the retries",
     _fault_long_outage),
    ("ingest_process_sigkilled", "Whole process SIGKILLed", _fault_sigkill),
    ("embedded_store_disk_full", "Embedded store disk full", _fault_disk_full),
    ("ray_encode_worker_killed", "Ray encode worker SIGKILLed", _fault_ray),
)


def _failed_mark(e: Entry, cells: list[str]) -> list[str]:
    if not e.get("test_passed"):
        cells[1] = f"**test failed**: {cells[1]}"
    return cells


def render_faults(data: dict[str, Any]) -> str:
    figs = data["figures"]
    rows = []
    for name, label, cells in FAULTS:
        e = entry(figs, name)
        row = _failed_mark(e, cells(e)) if e else [label, NOT_MEASURED, "–", "–"]
        rows.append(row + [code(name)])
    return table(["Fault", "Outcome", "Work redone", "Time", "Figure"], rows)


# --- hostile input --------------------------------------------------------------------------------

def _hostile_decoders(figs: Figures) -> list[str]:
    fuzz, seeds = cases(figs, "fuzz_decoders"), cases(figs, "fuzz_decoder_seeds")
    runs = list(fuzz.values())
    bound = highest(runs, "bound_s")
    return ["Decoder fuzzing: real seeds of every kind, bytes truncated/flipped/inserted/"
            "zeroed/spliced/repeated",
            f"{num(total(runs, 'inputs'))} mutated over {num(len(fuzz))} kinds, "
            f"{num(total(seeds.values(), 'inputs'))} seeds",
            f"{num(total(runs, 'decoded'))} decoded in the documented layout, "
            f"{num(total(runs, 'rejected'))} rejected with a reason; no temp file left",
            f"{secs(highest(runs, 'slowest_s'))} per decode (bound {secs(bound)}, ffmpeg "
            f"timeout {secs(highest(runs, 'ffmpeg_timeout_s'))})",
            "–"]


def _hostile_sources(figs: Figures) -> list[str]:
    found = cases(figs, "fuzz_sources")
    runs = list(found.values())
    per = ", ".join(f"{num(e['inputs'])} {c}" for c, e in found.items())
    return ["Source fuzzing: tar, tgz, zip, folders; names with `..`, absolute, `C:`, "
            "backslashes, RTL, zero-width, control characters, emoji, BOM, invalid UTF-8",
            f"{num(total(runs, 'inputs'))} sources ({per})",
            f"{num(total(runs, 'entries'))} entries, {num(total(runs, 'rejected'))} rejections; "
            "member paths clean; nothing written outside the spool folder",
            f"{secs(highest(runs, 'slowest_s'))} per read (bound "
            f"{secs(highest(runs, 'bound_s'))})",
            "–"]


def _hostile_corpus(figs: Figures) -> list[str]:
    e = entry(figs, "hostile_corpus") or Facts()
    return ["Hostile corpus through `run_ingest` (tiny model, edge store)",
            f"{num(e['entries'])} entries: {num(e['broken_media'])} broken media, "
            f"{num(e['odd_names'])} odd names, {num(e['hostile_entries'])} "
            f"traversal/absolute/link/device/nesting, beside {num(e['good_files'])} good "
            "files",
            f"{num(e['rejected'])} rejected with reasons; {num(e['good_files_stored'])} "
            f"of {num(e['good_files'])} good files stored ({num(e['good_points_lost'])} "
            f"of {num(e['good_points_expected'])} points lost), and "
            f"{num(e['stored_besides_good'])} odd-but-valid files",
            f"whole run {secs(e['run_s'])} (ffmpeg timeout {secs(e['ffmpeg_timeout_s'])})",
            f"+{num(e['rss_growth_mib'])} MiB RSS (limit {num(e['rss_limit_mib'])} MiB)"]


def _hostile_bombs(figs: Figures) -> list[str]:
    found = cases(figs, "decompression_bombs")
    runs = list(found.values())
    refused = sum(1 for e in runs if e.get("refused"))
    return ["Decompression bombs",
            f"{num(len(found))} ({', '.join(found)}), each inflating to "
            f"{num(highest(runs, 'inflates_to_mib'))} MiB",
            f"{num(refused)} of {num(len(found))} refused as bombs; good files' points lost: "
            f"{lost_of(runs, 'good_points_lost', 'good_points_expected')}",
            "–",
            " / ".join(f"+{num(e['rss_growth_mib'])} MiB" for e in runs)]


def _hostile_members(figs: Figures) -> list[str]:
    found = cases(figs, "max_members")
    source, pipeline = found.get("source", Facts()), found.get("pipeline", Facts())
    return ["An archive of many members with `max_members` lowered",
            f"{num(source['members'])} members; max_members={num(source['max_members'])}"
            f" (reader), {num(pipeline['max_members'])} (pipeline)",
            f"the reader stopped at {num(source['read'])} members with "
            f"{num(source['rejections'])} rejection; the pipeline stored "
            f"{num(pipeline['items_stored'])} items",
            f"{secs(source['read_s'])} to read",
            f"+{num(source['rss_growth_mib'])} MiB"]


def _hostile_queries(figs: Figures) -> list[str]:
    found = cases(figs, "hostile_queries")
    runs = list(found.values())
    errors = ", ".join(f"`{t}`" for t in sorted({e["error"] for e in runs}))
    return ["Hostile queries (`MediaSearch`): oversized inputs, wrong types, NaN/inf/zero/"
            "wrong-size vectors, unknown fields and keywords, bad weights, empty and huge text",
            f"{num(len(found))} cases",
            f"one {errors} each with a readable message; {num(total(runs, 'points_changed'))} "
            "points changed; the client still answers",
            f"{secs(highest(runs, 'refused_s'))} per refusal",
            "–"]


def _hostile_security(figs: Figures) -> list[str]:
    found = cases(figs, "security")

    def get(case: str, key: str) -> Any:
        return found.get(case, {}).get(key)
    return ["Security",
            f"{num(len(found))} checks",
            f"{num(get('no_shell', 'files_scanned'))} source files scanned: "
            f"{num(get('no_shell', 'findings'))} shell uses, "
            f"{num(get('torch_load_weights_only', 'torch_loads'))} `torch.load` calls, "
            f"{num(get('torch_load_weights_only', 'findings'))} without `weights_only=True`; "
            f"API key sent as a header: {num(get('api_key_header_http', 'header_sent'))}; "
            f"https: {num(get('https_tls', 'tls_hellos'))} of "
            f"{num(get('https_tls', 'connections'))} connections opened with TLS; a hostile "
            f"archive wrote {num(get('writes_only_home_and_tmpdir', 'stray_writes'))} files "
            "outside `MEDIABIND_HOME` and `TMPDIR`",
            "–", "–"]


HOSTILE_ROWS: tuple[tuple[tuple[str, ...], Callable[[Figures], list[str]]], ...] = (
    (("fuzz_decoders", "fuzz_decoder_seeds"), _hostile_decoders),
    (("fuzz_sources",), _hostile_sources),
    (("hostile_corpus",), _hostile_corpus),
    (("decompression_bombs",), _hostile_bombs),
    (("max_members",), _hostile_members),
    (("hostile_queries",), _hostile_queries),
    (("security",), _hostile_security),
)


def render_hostile(data: dict[str, Any]) -> str:
    figs = data["figures"]
    rows = []
    for names, cells in HOSTILE_ROWS:
        entries = flat(figs, names)
        if not entries:  # the category's label is the first cell whatever was measured
            row = [cells(figs)[0], NOT_MEASURED, "–", "–", "–"]
        else:
            row = cells(figs)
            failed = sum(1 for e in entries if not e.get("test_passed"))
            if failed:
                row[2] = f"**{failed} checks failed**: {row[2]}"
        rows.append(row + [", ".join(code(n) for n in names)])
    header = ["Category", "Inputs (this run)", "Outcome", "Slowest", "Peak memory", "Figure"]
    return table(header, rows)


# --- load (benchmarks/load.py) -------------------------------------------------------------------

# "edge": one shared handle, the store serialising its calls; the two after it are the
# modes of figures measured before the store did (a caller's lock, or none).
LOAD_MODES = (("edge", "edge, one shared handle"), ("edge+lock", "edge + lock (supported)"),
              ("edge nolock", "edge, no lock (informative)"), ("server", "server"))


def _load_rows(load: dict[str, Any]) -> list[list[str]]:
    rows = []
    tables = dict(load.get("edge", {})) | dict(load.get("server", {}))
    for key, label in LOAD_MODES:
        for i, r in enumerate(tables.get(key, [])):
            rows.append([label if i == 0 else "", num(r["clients"]), num(r["p50_ms"]),
                         num(r["p99_ms"]), f"{num(r['p50_vs_1_client'])}x", num(r["qps"]),
                         num(r["errors"])])
    return rows


def _mixed_rows(mixed: dict[str, Any]) -> list[list[str]]:
    return [["idle (one searcher)", num(mixed["idle_p50_ms"]), "–", "1x", "–", "–"],
            ["beside the writer", num(mixed["ingesting_p50_ms"]), num(mixed["ingesting_p99_ms"]),
             f"{num(mixed['ratio_p50'])}x", num(mixed["errors"]),
             num(mixed["points_written_meanwhile"])]]


def render_load(data: dict[str, Any]) -> str:
    load = data.get("load")
    if not load:
        return f"`benchmarks/load.py`: {NOT_MEASURED}."
    edge = load["edge"]
    intro = (f"`benchmarks/load.py`: {num(load['points'])} random points, "
             f"{num(load['queries_per_level'])} queries per level split over the clients, "
             f"{num(load['cpus'])} CPUs; store built in {secs(edge['build_s'])}, "
             f"{num(edge['points_after'])} points after the run.")
    concurrency = table(["Mode", "Clients", "p50 ms", "p99 ms", "p50 vs 1 client",
                         "queries/s", "errors"], _load_rows(load))
    mixed = table(["Search while a writer upserts batches", "p50 ms", "p99 ms", "p50 vs idle",
                   "errors", "points written meanwhile"],
                  _mixed_rows(edge["search_while_ingesting"]))
    return f"{intro}\n\n{concurrency}\n\n{mixed}"


# --- how the figures were made ------------------------------------------------------------------

def render_run(data: dict[str, Any]) -> str:
    run, facts = data["run"], data["figures"].get("_session", {})
    suite = run.get("suite")
    tests = (f"the reliability suite (`pytest {' '.join(_quoted(SUITE))}`) ran in "
             f"{secs(suite['seconds'])}: {suite['outcome']}" if suite else
             f"the tests' figures were read from `{run['figures_from']}`")
    load = (f"`benchmarks/load.py` ran in {secs(run['load_s'])}" if run.get("load_s") is not None
            else f"the load figures were read from `{run.get('load_from')}`" if data.get("load")
            else "`benchmarks/load.py` was not run")
    return (f"Regenerated with `{run['command']}` on {facts.get('finished', '–')}: {tests}; "
            f"{load}.\nMachine: {num(facts.get('cpus'))}-core CPU ({facts.get('machine', '?')}, "
            f"{facts.get('system', '?')}), no GPU used (the tests pin `device=cpu`), "
            "tiny model (`imagebind_tiny`), embedded edge store, shared with other jobs: the "
            "figures vary run to run (±30%), so compare ratios measured in the same run, not "
            "seconds across runs.")


def _quoted(args: list[str]) -> list[str]:
    return [f'"{a}"' if " " in a else a for a in args]


# --- the data the tables were rendered from ------------------------------------------------------

def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def render_data(data: dict[str, Any]) -> str:
    """``data`` as JSON in an HTML comment, one figure a line so a diff shows what moved."""
    figures = ",\n".join(f"{_compact(k)}:{_compact(v)}" for k, v in sorted(data["figures"].items()))
    text = (f'{{"figures":{{\n{figures}\n}},\n"load":{_compact(data.get("load"))},\n'
            f'"run":{_compact(data["run"])}}}')
    # Inside an HTML comment "--" must not appear; in JSON it can only sit inside a string,
    # where "\u002d" decodes to the same "-".
    return "<!--\n" + text.replace("--", "-\\u002d") + "\n-->"


def read_data(doc: str) -> dict[str, Any]:
    body = read_sections(doc)["data"].strip()
    return json.loads(body.removeprefix("<!--").removesuffix("-->"))


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "run": render_run, "summary": render_summary, "faults": render_faults,
    "hostile": render_hostile, "load": render_load, "data": render_data,
}


# --- the doc ----------------------------------------------------------------------------------

def read_sections(doc: str) -> dict[str, str]:
    return {m.group(2): m.group(3) for m in MARKERS.finditer(doc)}


def render_doc(doc: str, data: dict[str, Any]) -> str:
    """``doc`` with every generated section rendered from ``data``; prose untouched."""
    missing = set(SECTIONS) - set(read_sections(doc))
    if missing:
        raise ValueError(f"the doc has no markers for {sorted(missing)}")

    def replace(match: re.Match[str]) -> str:
        name = match.group(2)
        return f"{match.group(1)}{RENDERERS[name](data)}\n{match.group(4)}"
    return MARKERS.sub(replace, doc)


# --- running what measures -----------------------------------------------------------------------

def run_suite(out: Path) -> dict[str, Any]:
    """The reliability suite, its output echoed; the outcome pytest summarised."""
    env = os.environ | {"MEDIABIND_RELIABILITY_OUT": str(out)}
    started = time.perf_counter()
    # No cache provider: this run must not rewrite another session's --lf list.
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITE]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    last = ""
    for line in proc.stdout:
        sys.stdout.write(line)
        if re.search(r"\d+ (passed|failed|error)", line):
            last = line
    returncode = proc.wait()
    seconds = time.perf_counter() - started
    outcome = re.sub(r"\s+in [\d.]+s.*$", "", last.strip().strip("= ")) or f"rc {returncode}"
    return {"returncode": returncode, "seconds": round(seconds, 2), "outcome": outcome}


def run_load(out: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "benchmarks/load.py", "--json", str(out)], cwd=REPO,
                   check=True)
    return round(time.perf_counter() - started, 2)


def gather(args: argparse.Namespace, work: Path) -> tuple[dict[str, Any], int]:
    """The figures to render and the suite's return code (0 when read from a file)."""
    run: dict[str, Any] = {"command": " ".join(_command_args())}
    returncode = 0
    if args.figures:
        figures_path = Path(args.figures)
        run["figures_from"] = args.figures
    else:
        figures_path = work / "figures.json"
        run["suite"] = run_suite(figures_path)
        returncode = run["suite"].pop("returncode")
    load = None
    if args.load:
        load, run["load_from"] = json.loads(Path(args.load).read_text()), args.load
    elif not args.no_load:
        run["load_s"] = run_load(work / "load.json")
        load = json.loads((work / "load.json").read_text())
    figures = json.loads(figures_path.read_text()) if figures_path.exists() else {}
    return {"figures": figures, "load": load, "run": run}, returncode


def _command_args() -> list[str]:
    """This invocation as the doc shows it: paths inside the repository made relative."""
    def shown(path: str) -> str:
        full = Path(path).absolute()
        return str(full.relative_to(REPO)) if full.is_relative_to(REPO) else path
    return [shown(sys.executable), shown(sys.argv[0]), *sys.argv[1:]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--figures", help="render these figures instead of running the suite")
    parser.add_argument("--load", help="benchmarks/load.py --json output to render")
    parser.add_argument("--no-load", action="store_true", help="do not run benchmarks/load.py")
    parser.add_argument("--doc", default=str(DOC))
    parser.add_argument("--allow-failures", action="store_true",
                        help="write the doc even when the suite failed")
    parser.add_argument("--from-doc", action="store_true",
                        help="render the doc again from the figures it keeps (after a change "
                             "to this renderer; measures nothing)")
    args = parser.parse_args()
    if args.from_doc:
        doc = Path(args.doc)
        doc.write_text(render_doc(doc.read_text(), read_data(doc.read_text())))
        return 0
    with tempfile.TemporaryDirectory() as work:
        data, returncode = gather(args, Path(work))
    if not data["figures"]:
        print("no figures were recorded", file=sys.stderr)
        return 1
    doc = Path(args.doc)
    if returncode and not args.allow_failures:
        print(f"the suite failed ({data['run']['suite']['outcome']}); {doc} left as it was",
              file=sys.stderr)
        print(json.dumps(data["figures"], indent=1))
        return returncode
    doc.write_text(render_doc(doc.read_text(), data))
    names = sorted(n for n in data["figures"] if not n.startswith("_"))
    print(f"{doc}: rendered {len(names)} figures ({', '.join(names)})")
    return returncode


if __name__ == "__main__":
    sys.exit(main())
