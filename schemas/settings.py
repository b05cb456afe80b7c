"""One frozen configuration object, read from ``MEDIABIND_*`` environment variables.

Every knob of the system lives here with its default and a line on what it
does; the README's configuration reference is generated from these fields.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.payload import SegmentPolicy


def _default_home() -> Path:
    return Path.home() / ".mediabind"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDIABIND_", frozen=True, extra="ignore")

    # --- where things live -------------------------------------------------
    home: Path = Field(default_factory=_default_home,
                       description="Root of everything mediabind writes by default.")
    qdrant_path: Path | None = Field(None, description="Embedded store folder (default: HOME/qdrant).")
    runs_dir: Path | None = Field(None, description="Run reports (default: HOME/runs).")
    cache_dir: Path | None = Field(None, description="Model checkpoints (default: HOME/checkpoints).")

    # --- model -------------------------------------------------------------
    preset: str = Field("imagebind_huge", description="Model preset (imagebind_huge, or a tiny test preset).")
    checkpoint: Path | None = Field(None, description="Explicit checkpoint file; skips the cache and download.")
    accept_license: bool = Field(
        False,
        description="Set to true to accept the CC BY-NC-SA 4.0 licence of the ImageBind weights "
        "(non-commercial use only) and allow their download.",
    )
    device: str = Field("auto", description="torch device: auto (cuda if present), cpu, cuda, cuda:N.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = bfloat16 on CUDA, float32 on CPU.")

    # --- store ------------------------------------------------------------------
    store: Literal["auto", "edge", "local", "server"] = Field(
        "auto", description="auto = server when QDRANT_URL is set, else the embedded edge engine.")
    qdrant_url: str | None = Field(None, validation_alias="QDRANT_URL",
                                   description="Qdrant server URL (env QDRANT_URL).")
    qdrant_api_key: SecretStr | None = Field(None, validation_alias="QDRANT_API_KEY",
                                             description="Qdrant API key (env QDRANT_API_KEY); never logged.")
    qdrant_prefer_grpc: bool = Field(False, description="Use gRPC for bulk writes to a server.")
    collection: str = Field("mediabind", description="Alias that searches and ingests go through.")
    quantization: bool = Field(False, description="int8 scalar quantization of stored vectors.")
    on_disk_vectors: bool = Field(False, description="Keep vectors on disk (memory-mapped).")
    upsert_batch: int = Field(256, ge=1, description="Points per upsert.")
    optimize_after_points: int = Field(
        10_000, ge=0, description="Edge store: build the HNSW index on close once at least "
        "this many points are not yet indexed, whoever wrote them and in however many runs "
        "(0 = never; search is exact until then).")

    # --- segmentation ---------------------------------------------------------
    segment_s: float = Field(2.0, gt=0, description="Window length for video/audio/IMU (ImageBind's unit: 2 s).")
    stride_s: float = Field(2.0, gt=0, description="Step between windows (< segment_s overlaps).")
    video_crops: int = Field(3, description="Spatial crops per video clip: 1 or 3 (reference: 3).")
    video_sampling: Literal["exact", "keyframe"] = Field(
        "exact", description="Video frames per window: exact (the reference's frames at the "
        "window's times) or keyframe (the keyframe nearest each time, decoded alone: much less "
        "CPU on long-GOP video, at a cost in accuracy; its own collection, policy id suffix k).")
    text_overlap_tokens: int = Field(16, ge=0, description="Token overlap between text chunks.")
    one_point_items: bool | None = Field(
        None, description="Store an item of one segment (an image, a short text) as one point "
        "that is both segment and file (policy ids ending in 'u'). Unset: yes for a new "
        "collection, and a collection made before in the earlier layout (two identical "
        "points) keeps being written in it until `reembed` moves it; true or false force "
        "one layout.")

    # --- shards and safety limits (per member, per archive; never per source) ----
    shard_files: int = Field(256, ge=1, description="Most loose files of a folder or prefix, "
                             "or members of a source .tar/.zip read by range, in one shard "
                             "(the unit of work, retry and commit).")
    shard_bytes: int = Field(1 << 30, ge=1, description="Most bytes of loose files (or "
                             "archive members) in one shard; one larger file gets a shard "
                             "of its own.")
    max_member_bytes: int = Field(8 << 30, description="Largest file accepted (bytes).")
    max_total_bytes: int = Field(2 << 40, description="Largest total read from one archive, "
                                 "nested archives included (bytes); a source has no total limit.")
    max_members: int = Field(5_000_000, description="Most files read from one archive, nested "
                             "archives included; a source has no limit on its file count.")
    max_compression_ratio: float = Field(200.0, description="Reject members that expand more than this (zip bombs).")
    max_nesting: int = Field(2, ge=0, description="How deep nested archives are followed.")
    max_image_pixels: int = Field(8192 * 8192, description="Larger images are downscaled on decode.")
    ffmpeg_timeout_s: float = Field(300.0, gt=0, description="Timeout of one ffmpeg/ffprobe call "
                                    "(and of one batch of frames or one file's audio decoded "
                                    "in-process by PyAV; a probe in process is bounded by "
                                    "libav's probe size instead).")
    video_decoder: Literal["auto", "nvdec", "pyav", "ffmpeg"] = Field(
        "auto", description="Where a video's chosen frames are decoded: nvdec (the GPU's video "
        "decoder, PyNvVideoCodec; H.264/HEVC/AV1), pyav (in this process, one open container "
        "per batch) or ffmpeg (a process per batch of seeks; then probes run in ffprobe "
        "processes and audio, when MEDIABIND_AUDIO_DECODER is auto, in ffmpeg processes, so "
        "no libav code runs in the worker). auto = nvdec where this process "
        "sees a GPU with it and the codec is one it takes, else pyav when installed, else "
        "ffmpeg. Not part of the segment policy: all take the frames at the window's times "
        "(nvdec's resize to 224 differs slightly).")
    audio_decoder: Literal["auto", "pyav", "ffmpeg"] = Field(
        "auto", description="What decodes audio files and soundtracks to 16-kHz mono: pyav "
        "(in this process) or ffmpeg (a process per file), the same decoder and resampler. "
        "auto = pyav where a process decodes one file at a time (each Ray decode actor, or "
        "decode_workers=1), ffmpeg beside several decode threads in one process (PyAV's loop "
        "holds the GIL) and wherever MEDIABIND_VIDEO_DECODER=ffmpeg or PyAV is missing.")
    max_media_duration_s: float = Field(
        7 * 24 * 3600.0, gt=0, description="Longest audio, video or IMU recording accepted "
        "(seconds); a longer claim (often a corrupt or hostile header) is Rejected.")

    # --- search -------------------------------------------------------------------
    max_query_bytes: int = Field(64 << 20, gt=0,
                                 description="Largest query input (file, bytes, array or text) accepted by search.")
    negative_weight: float = Field(0.5, gt=0, description="Default λ of search negatives: q − λ·negative, renormalised.")

    # --- the web page (`mediabind ui`) ---------------------------------------------
    ui_host: str = Field("127.0.0.1", description="Where `mediabind ui` listens.")
    ui_port: int = Field(8765, ge=0, le=65535, description="Its port (0: any free one).")
    ui_token: SecretStr | None = Field(
        None, description="A token every request to `mediabind ui` must carry; required "
        "before it listens anywhere but loopback.")

    # --- execution ---------------------------------------------------------------
    executor: Literal["local", "ray"] = Field("local", description="local (one process) or ray.")
    ray_address: str | None = Field(None, validation_alias="RAY_ADDRESS",
                                    description="Join this Ray cluster (env RAY_ADDRESS); else start a local one.")
    decode_workers: int = Field(2, ge=1, description="Decode threads (local) or decode actors in the Ray pool (ray).")
    encode_actors: int = Field(1, ge=1, description="Encoder actors in the Ray pool (one per GPU).")
    staging_url: str | None = Field(
        None, description="Where Ray encode actors stage their output (Parquet) before the "
        "run's committer writes it, so a driver that dies loses no encoded work: an fsspec "
        "URL the driver and every node reach. Default: HOME/staging when the whole cluster is this "
        "machine; not staged otherwise.")
    encode_threads: int = Field(
        0, ge=0, description="Batches finished and encoded at once by the local executor (the stack and copy "
        "to the device run on the CPU; >1 overlaps them with the GPU). 0 = auto: 4 on CUDA, 1 on CPU.")

    @field_validator("video_crops")
    @classmethod
    def _crops_one_or_three(cls, value: int) -> int:
        # An int field (not Literal[1, 3]) so "1" from the environment parses.
        if value not in (1, 3):
            raise ValueError("video_crops must be 1 or 3")
        return value

    @property
    def qdrant_dir(self) -> Path:
        return self.qdrant_path or self.home / "qdrant"

    @property
    def runs_path(self) -> Path:
        return self.runs_dir or self.home / "runs"

    @property
    def checkpoint_dir(self) -> Path:
        return self.cache_dir or self.home / "checkpoints"

    @property
    def policy(self) -> SegmentPolicy:
        return SegmentPolicy(self.segment_s, self.stride_s, self.video_crops,
                             self.one_point_items is not False, self.video_sampling)

    @property
    def store_kind(self) -> Literal["edge", "local", "server"]:
        if self.store != "auto":
            return self.store
        return "server" if self.qdrant_url else "edge"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()


def reference_markdown() -> str:
    """The configuration reference (docs/configuration.md), generated from the fields above
    so the doc cannot drift from the code: ``mediabind info --config-reference``."""
    rows = ["| variable | default | what it does |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        env = field.validation_alias or f"MEDIABIND_{name.upper()}"
        default = "~/.mediabind" if field.default_factory else repr(field.default)
        rows.append(f"| `{env}` | `{default}` | {field.description or ''} |")
    return "\n".join([
        "# Configuration reference",
        "",
        "Every setting is an environment variable (generated from `schemas/settings.py` by",
        "`mediabind info --config-reference > docs/configuration.md`; a test keeps the two",
        "equal).",
        "`mediabind info` prints the effective values.",
        "",
        *rows,
        "",
    ])

