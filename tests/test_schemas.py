"""The contracts in schemas/: ids, names, settings and the registry."""

import numpy as np
import pytest
from pydantic import ValidationError

from schemas import (
    MODALITIES,
    Kind,
    MediaItem,
    Modality,
    Segment,
    SegmentPolicy,
    Settings,
    collection_name,
    point_id,
    spec,
)
from schemas.payload import INDEXED_FIELDS, PAYLOAD_FIELDS, build_payload


def test_modality_names_are_imagebind_keys():
    assert {m.value for m in Modality} == {"vision", "text", "audio", "depth", "thermal", "imu"}
    assert set(MODALITIES) == set(Modality)


def test_unknown_modality_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown modality 'smell'"):
        spec("smell")


def test_point_id_is_deterministic_and_depends_on_every_part():
    policy = SegmentPolicy()
    base = point_id("abc", Modality.AUDIO, 3, policy, "m1")
    assert base == point_id("abc", "audio", 3, policy, "m1")
    variants = {
        point_id("abd", Modality.AUDIO, 3, policy, "m1"),
        point_id("abc", Modality.VISION, 3, policy, "m1"),
        point_id("abc", Modality.AUDIO, 4, policy, "m1"),
        point_id("abc", Modality.AUDIO, 3, SegmentPolicy(segment_s=1.0), "m1"),
        point_id("abc", Modality.AUDIO, 3, policy, "m2"),
    }
    assert base not in variants and len(variants) == 5


def test_collection_name_is_safe_and_per_model_and_policy():
    a = collection_name("imagebind/huge", SegmentPolicy())
    assert "/" not in a
    assert a != collection_name("imagebind/huge", SegmentPolicy(stride_s=1.0))


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError):
        SegmentPolicy(segment_s=0)
    with pytest.raises(ValueError):
        SegmentPolicy(video_crops=2)


def test_settings_read_env_and_are_frozen(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDIABIND_HOME", str(tmp_path))
    monkeypatch.setenv("MEDIABIND_SEGMENT_S", "4")
    monkeypatch.setenv("QDRANT_URL", "http://127.0.0.1:6333")
    s = Settings()
    assert s.qdrant_dir == tmp_path / "qdrant"
    assert s.policy.segment_s == 4.0
    assert s.store_kind == "server"
    with pytest.raises(ValidationError):
        s.segment_s = 3.0


def test_api_key_is_not_shown(monkeypatch):
    monkeypatch.setenv("QDRANT_API_KEY", "very-secret")
    s = Settings()
    assert "very-secret" not in repr(s) and "very-secret" not in str(s.model_dump())
    assert s.qdrant_api_key.get_secret_value() == "very-secret"


def test_payload_follows_the_contract():
    item = MediaItem("f" * 64, "/data/a.tar", "x/clip.mp4", 10, Kind.VIDEO, "video/mp4",
                     locations=("/data/a.tar!/x/clip.mp4",), meta={"camera": "A"})
    seg = Segment(item.item_id, Modality.AUDIO, Kind.VIDEO, 2, 4.0, 6.0, np.zeros(32000, np.float32),
                  extra={"width": 640, "height": 480})
    payload = build_payload(item, seg, model_id="m", policy=SegmentPolicy(), run_id="r")
    assert set(INDEXED_FIELDS) <= set(payload)
    assert set(payload) <= set(PAYLOAD_FIELDS)
    assert payload["source_uri"] == ["/data/a.tar!/x/clip.mp4"]
    assert (payload["kind"], payload["modality"], payload["start_s"]) == ("video", "audio", 4.0)
    assert payload["meta"] == {"camera": "A"} and payload["width"] == 640


def test_video_crops_from_env_parse_and_validate(monkeypatch):
    monkeypatch.setenv("MEDIABIND_VIDEO_CROPS", "1")
    assert Settings().policy.video_crops == 1
    monkeypatch.setenv("MEDIABIND_VIDEO_CROPS", "2")
    with pytest.raises(ValidationError, match="1 or 3"):
        Settings()
