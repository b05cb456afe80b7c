"""One picture per stored point, made once and kept under ``MEDIABIND_HOME/web/thumbs``.

What a picture shows follows the item's kind and the point's moment:

- video: the frame at the moment's start (ffmpeg seeks; the file's first frame
  for a file-level point);
- image: the photo, scaled down;
- audio: a log-magnitude spectrogram of the moment's window;
- depth and thermal: the decoded plane in false colour (near/hot is bright);
- IMU: the window's six channels as a small plot;
- text: none (the page shows the snippet the payload holds).

Audio and the sensors go through ingestion's own decoders (``ingest.decode``),
so the picture is of what was embedded. Every picture is a PNG at most
``THUMB_PX`` wide.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ingest.ffmpeg_run import FFMPEG_QUIET, run_capture
from schemas import FILE_LEVEL_INDEX, Kind, MediaItem, Modality, Settings
from schemas.extension import ExtensionName, active_specs
from web.media import MediaCache, MediaRefused, StoredFile

THUMB_PX = 320
PLOT_HEIGHT = 120
THUMB_TIMEOUT_S = 60.0
AUDIO_RATE = 16_000
IMU_COLOURS = ("#e4572e", "#29335c", "#f3a712", "#669bbc", "#a8c686", "#8d5a97")


class Thumbnails:
    """Pictures of points, cached by point id (a point's moment never changes)."""

    def __init__(self, settings: Settings, media: MediaCache) -> None:
        self.settings, self.media = settings, media
        self.root = settings.home / "web" / "thumbs"

    def of(self, point_id: str, payload: dict) -> Path:
        """The PNG for one point; MediaRefused when its kind has no picture."""
        target = self.root / point_id[:2] / f"{point_id}.png"
        if target.is_file():
            return target
        stored = StoredFile.of(payload)
        try:
            png = self._draw(stored, payload)
        except MediaRefused:
            raise
        except Exception as exc:  # noqa: BLE001 - ffmpeg, PIL, a decoder: a file's fault
            raise MediaRefused(f"no picture could be made: {exc}", 409) from None
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f".{target.name}.{threading.get_ident()}.part")
        part.write_bytes(png)
        os.replace(part, target)
        return target

    def _draw(self, stored: StoredFile, payload: dict) -> bytes:
        kind = stored.kind
        if kind == Kind.TEXT.value:
            raise MediaRefused("a text has no picture; its snippet is in the payload")
        path = self.media.original(stored)
        start = payload.get("start_s")
        if kind == Kind.VIDEO.value:
            return video_frame(path, float(start or 0.0))
        if kind == Kind.IMAGE.value:
            return _png(_fitted(Image.open(path)))
        segment = self._segment(stored, path, payload)
        if kind == Kind.AUDIO.value:
            return _png(spectrogram(np.asarray(segment, dtype=np.float32)))
        if kind == Kind.IMU.value:
            return _png(imu_plot(np.asarray(segment, dtype=np.float32)))
        if kind in (Kind.DEPTH.value, Kind.THERMAL.value):
            return _png(false_colour(np.asarray(segment, dtype=np.float32)))
        if "extension_version" in payload:  # a bound modality: a series plot or a map
            view = np.asarray(segment, dtype=np.float32)
            spec = active_specs(self.settings.home).get(kind)
            series = spec is not None and spec.layout == "series"
            return _png(imu_plot(view) if series else false_colour(view))
        raise MediaRefused(f"no picture for kind {kind!r}")

    def _segment(self, stored: StoredFile, path: Path, payload: dict) -> np.ndarray:
        """The decoded window of this point, through ingestion's decoder for the kind."""
        from ingest.decode import decode_item
        from schemas import Rejected

        index = int(payload.get("segment_index", 0))
        wanted = 0 if index == FILE_LEVEL_INDEX else index
        version = payload.get("extension_version")
        if version:  # an extension's point: decoded at the version that embedded it
            modality = kind = ExtensionName(stored.kind, version)
        else:
            modality = Modality(payload.get("modality", Modality.AUDIO.value))
            kind = Kind(stored.kind)
        item = MediaItem(stored.item_id, stored.archive, stored.member, stored.size_bytes, kind)
        for out in decode_item(item, path, self.settings.policy, settings=self.settings):
            if isinstance(out, Rejected):
                raise MediaRefused(f"cannot be decoded for a picture: {out.reason}", 409)
            if out.modality == modality and out.index == wanted:
                return out.data
        raise MediaRefused("the point's window is not in the file any more", 409)


def video_frame(path: Path, at_s: float) -> bytes:
    """The frame at ``at_s`` seconds, scaled to ``THUMB_PX`` wide, as PNG."""
    def frame_at(seconds: float) -> bytes:
        args = ["ffmpeg", *FFMPEG_QUIET, "-ss", f"{max(seconds, 0.0):.3f}", "-i", str(path),
                "-frames:v", "1", "-vf", f"scale={THUMB_PX}:-2", "-f", "image2", "-c:v",
                "png", "-"]
        return run_capture(args, THUMB_TIMEOUT_S)[0]

    out = frame_at(at_s) or frame_at(0.0)  # a seek past the last frame: the first one
    if not out:
        raise MediaRefused("the video has no frame to show", 409)
    return out


def spectrogram(samples: np.ndarray, bins: int = 128) -> Image.Image:
    """Log-magnitude STFT (25 ms windows, 10 ms hop) of a 16-kHz window, low pitch at the
    bottom, in false colour."""
    win, hop = 400, 160
    if samples.size < win:
        samples = np.pad(samples, (0, win - samples.size))
    frames = np.lib.stride_tricks.sliding_window_view(samples, win)[::hop] * np.hanning(win)
    power = np.abs(np.fft.rfft(frames, n=2 * (bins - 1), axis=1)) ** 2
    db = 10 * np.log10(power + 1e-10)
    image = false_colour(np.flipud(db.T), floor=db.max() - 80.0)
    return image.resize((THUMB_PX, PLOT_HEIGHT), Image.Resampling.BILINEAR)


def false_colour(plane: np.ndarray, floor: float | None = None) -> Image.Image:
    """A 2-D array as a picture: its finite range mapped dark blue → yellow."""
    finite = np.isfinite(plane)
    if not finite.any():
        raise MediaRefused("the plane holds no finite value", 409)
    low = float(plane[finite].min()) if floor is None else floor
    high = float(plane[finite].max())
    scaled = np.clip((np.where(finite, plane, low) - low) / max(high - low, 1e-12), 0, 1)
    image = Image.fromarray(_ramp(scaled), "RGB")
    if image.width < THUMB_PX // 2:  # a small sensor plane: enlarged, pixels kept sharp
        scale = THUMB_PX // 2 / image.width
        image = image.resize((THUMB_PX // 2, max(1, round(image.height * scale))),
                             Image.Resampling.NEAREST)
    return _fitted(image)


def imu_plot(window: np.ndarray) -> Image.Image:
    """Six channels (accelerometer xyz, gyroscope xyz) over the window, each scaled to
    its own range, drawn as lines."""
    image = Image.new("RGB", (THUMB_PX, PLOT_HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    xs = np.linspace(0, THUMB_PX - 1, window.shape[-1])
    for channel, colour in zip(window, IMU_COLOURS, strict=False):
        values = np.nan_to_num(channel.astype(np.float64))
        span = values.max() - values.min()
        ys = (PLOT_HEIGHT - 4) * (1 - (values - values.min()) / (span or 1.0)) + 2
        draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=colour, width=1)
    return image


def _ramp(unit: np.ndarray) -> np.ndarray:
    """A dark-blue → teal → yellow colour ramp (readable for colour-blind eyes)."""
    stops = np.array([[48, 18, 59], [33, 145, 140], [94, 201, 98], [253, 231, 37]], float)
    pos = unit * (len(stops) - 1)
    i = np.minimum(pos.astype(int), len(stops) - 2)
    t = (pos - i)[..., None]
    return ((1 - t) * stops[i] + t * stops[i + 1]).astype(np.uint8)


def _fitted(image: Image.Image) -> Image.Image:
    image.draft("RGB", (THUMB_PX, THUMB_PX))  # JPEG: decode at a fraction of the size
    if image.mode not in ("RGB", "L"):
        image = _as_rgb(image)
    image.thumbnail((THUMB_PX, THUMB_PX))
    return image


def _as_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I", "F"):
        return false_colour(np.asarray(image, dtype=np.float32))
    if "A" in image.getbands() or image.mode == "P":
        image = image.convert("RGBA")
        backdrop = Image.new("RGB", image.size, "white")
        backdrop.paste(image, mask=image.getchannel("A"))
        return backdrop
    return image.convert("RGB")


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", optimize=False)
    return out.getvalue()
