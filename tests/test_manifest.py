"""ingest.manifest: CSV, Parquet and JSON-lines sidecar manifests, and their errors."""

from __future__ import annotations

import json
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest.manifest import ManifestError, ManifestRow, load_manifest
from schemas import Kind


def test_csv_rows_with_kind_and_typed_meta(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("path,kind,caption,rating\n"
                    "photos/a.jpg,,a bird,4\n"
                    "./scans/b.png,Depth,,\n")
    rows = load_manifest(path)
    assert rows == {
        "photos/a.jpg": ManifestRow("photos/a.jpg", None, {"caption": "a bird", "rating": 4}),
        "scans/b.png": ManifestRow("scans/b.png", Kind.DEPTH, {}),
    }


def test_parquet_with_member_column_and_timestamps(tmp_path):
    path = tmp_path / "m.parquet"
    taken = datetime(2024, 5, 1, 12, 30)
    pq.write_table(pa.table({"member": ["x.zip!/a.wav"], "kind": ["audio"],
                             "taken": [taken], "tags": [["sea", "waves"]]}), path)
    [row] = load_manifest(path).values()
    assert row == ManifestRow("x.zip!/a.wav", Kind.AUDIO,
                              {"taken": taken.isoformat(), "tags": ["sea", "waves"]})
    json.dumps(row.meta)  # every value can go into a JSON payload


def test_json_lines_with_nested_meta_and_blank_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"path": "a.txt", "source": {"site": "lab", "n": 2}}\n\n'
                    '{"path": "b.txt", "kind": null, "note": null}\n')
    rows = load_manifest(path)
    assert rows["a.txt"].meta == {"source": {"site": "lab", "n": 2}}
    assert rows["b.txt"] == ManifestRow("b.txt", None, {})


@pytest.mark.parametrize(("name", "text", "message"), [
    ("m.csv", "name,caption\na.jpg,x\n", "'path' or 'member'"),
    ("m.csv", "path,member\na.jpg,a.jpg\n", "exactly one"),
    ("m.csv", "path,kind\na.jpg,hologram\n", "unknown kind 'hologram'"),
    ("m.csv", "path,x\na.jpg,1\n./a.jpg,2\n", "appears twice"),
    ("m.jsonl", '{"path": "a.jpg"}\n{"path": \n', "line 2: invalid JSON"),
    ("m.jsonl", '["a.jpg"]\n', "expected a JSON object"),
    ("m.jsonl", '{"path": 3}\n', "non-empty string"),
    ("m.jsonl", '{"path": ""}\n', "non-empty string"),
    ("m.parquet", "not parquet at all", "cannot read manifest"),
    ("m.xlsx", "whatever", "unknown manifest format"),
])
def test_invalid_manifests_raise_a_clear_error(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ManifestError, match=message) as error:
        load_manifest(path)
    assert str(path) in str(error.value)


def test_missing_manifest_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        load_manifest(tmp_path / "nope.csv")
