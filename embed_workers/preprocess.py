"""Decoded arrays (``ModalitySpec.decoded``) → model input tensors, as pure functions.

Facts: shared/reference/imagebind.md §4. Image, video clip, audio and text
follow ImageBind's reference loaders exactly; depth, thermal and IMU have no
reference loader, so their recipes are marked as ours where they are defined.

Each (modality, file kind) pair maps to one ``InputSpec`` in ``INPUTS``; a vision
segment is an image ([H,W,3]) or a video clip ([2,H,W,3]), told apart by the
segment's kind, or by the array's rank for queries. Invalid inputs raise a
ValueError that names the input and the expected layout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from embed_workers.fbank import log_mel_fbank
from embed_workers.model.tokenizer import tokenize
from schemas import Kind, Modality, Segment, spec

# --- the recipe's constants (all in one place) --------------------------------
RECIPE = "imagebind"  # Preset.preprocessing value these functions implement
IMAGE_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP, reference §4.1
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_FRAMES = 2
AUDIO_SAMPLE_RATE = 16000
AUDIO_MEL_BINS = 128
AUDIO_FRAMES = 204  # fbank frames after zero padding / truncation
AUDIO_MEAN, AUDIO_STD = -4.268, 9.138  # AudioSet statistics, reference §4.3
DEPTH_MEAN, DEPTH_STD = 0.0418, 0.0295  # Omnivore's disparity statistics (community recipe)
IMU_CHANNELS, IMU_SAMPLES = 6, 2000


@dataclass(frozen=True, slots=True)
class PreprocessOptions:
    """Knobs of the recipe that are part of the segment policy."""

    video_crops: int = 3  # spatial crops per video clip: 1 (centre) or 3 (reference)

    def __post_init__(self) -> None:
        if self.video_crops not in CROP_INDICES:
            raise ValueError(f"video_crops must be 1 or 3, got {self.video_crops}")


# Which of the 3 uniform crops (start, centre, end) each crop count keeps.
CROP_INDICES: dict[int, tuple[int, ...]] = {1: (1,), 3: (0, 1, 2)}
DEFAULT_OPTIONS = PreprocessOptions()


# --- validation -------------------------------------------------------------------


def _fail(what: str, layout: str, problem: str) -> ValueError:
    return ValueError(f"invalid {what} input: expected {layout}; {problem}")


def _checked_array(data: Any, what: str, layout: str, ndim: int, floating: bool) -> np.ndarray:
    """``data`` if it is a finite, non-empty array of the right rank and dtype family.

    Float modalities accept any float dtype (cast to float32 later); integer
    arrays are refused there, since int16 PCM or uint16 depth need scaling first.
    """
    if not isinstance(data, np.ndarray):
        raise _fail(what, layout, f"got {type(data).__name__}")
    if data.ndim != ndim or data.size == 0:
        raise _fail(what, layout, f"got shape {data.shape}")
    if floating and not np.issubdtype(data.dtype, np.floating):
        raise _fail(what, layout, f"got dtype {data.dtype}")
    if not floating and data.dtype != np.uint8:
        raise _fail(what, layout, f"got dtype {data.dtype}")
    if floating and not np.isfinite(data).all():
        raise _fail(what, layout, "it contains NaN or infinite values")
    return data


def _require(condition: bool, what: str, layout: str, problem: str) -> None:
    if not condition:
        raise _fail(what, layout, problem)


# --- shared geometry ------------------------------------------------------------


def short_side_size(height: int, width: int, short: int = IMAGE_SIZE) -> tuple[int, int]:
    """(h, w) with the short side = ``short``; torchvision's rounding (long side truncated)."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def centre_crop(x: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Crop the last two axes to ``size``; offsets rounded like torchvision's CenterCrop."""
    top = int(round((x.shape[-2] - size) / 2.0))
    left = int(round((x.shape[-1] - size) / 2.0))
    return x[..., top : top + size, left : left + size]


def _normalise_channels(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel on axis 0 (any trailing axes)."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    m = torch.as_tensor(mean, dtype=x.dtype).reshape(shape)
    s = torch.as_tensor(std, dtype=x.dtype).reshape(shape)
    return (x - m) / s


# --- vision: image (reference §4.1, exact) ------------------------------------------

IMAGE_LAYOUT = "uint8 [H,W,3] RGB"


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """[3,224,224]: PIL bicubic (antialiased) short side 224, centre crop, /255, CLIP norm.

    The same operations, in the same order and precision, as the reference's
    torchvision Resize(224, BICUBIC) → CenterCrop → ToTensor → Normalize on a PIL image.
    """
    what = "vision image"
    image = _checked_array(image, what, IMAGE_LAYOUT, ndim=3, floating=False)
    _require(image.shape[2] == 3, what, IMAGE_LAYOUT, f"got shape {image.shape}")
    height, width = image.shape[:2]
    new_h, new_w = short_side_size(height, width)
    pil = Image.fromarray(np.ascontiguousarray(image))  # uint8 [H,W,3] opens as RGB
    resized = np.asarray(pil.resize((new_w, new_h), Image.Resampling.BICUBIC))
    chw = torch.from_numpy(resized.copy()).permute(2, 0, 1)
    chw = centre_crop(chw).contiguous().to(torch.float32).div(255)
    return _normalise_channels(chw, CLIP_MEAN, CLIP_STD)


# --- vision: video clip (reference §4.2, exact) -------------------------------------

CLIP_LAYOUT = "uint8 [2,H,W,3] RGB (first and last frame of the window)"


def _video_short_side_size(height: int, width: int) -> tuple[int, int]:
    """pytorchvideo ShortSideScale's rounding: floor(long/short × 224)."""
    if width < height:
        return int(math.floor(height / width * IMAGE_SIZE)), IMAGE_SIZE
    return IMAGE_SIZE, int(math.floor(width / height * IMAGE_SIZE))


def crop_offsets(height: int, width: int, index: int, size: int = IMAGE_SIZE) -> tuple[int, int]:
    """(top, left) of uniform crop ``index`` (0 start, 1 centre, 2 end) along the long side.

    The centre is rounded up (pytorchvideo's uniform_crop); a square frame counts as landscape.
    """
    top, left = math.ceil((height - size) / 2), math.ceil((width - size) / 2)
    if height > width:
        return (0, top, height - size)[index], left
    return top, (0, left, width - size)[index]


def clip_to_tensor(frames: np.ndarray, options: PreprocessOptions) -> torch.Tensor:
    """[crops,3,2,224,224]: /255, bilinear short side 224 (no antialias), CLIP norm, crops."""
    what = "vision video clip"
    frames = _checked_array(frames, what, CLIP_LAYOUT, ndim=4, floating=False)
    _require(frames.shape[0] == CLIP_FRAMES and frames.shape[3] == 3, what, CLIP_LAYOUT,
             f"got shape {frames.shape}")
    cthw = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 255.0
    size = _video_short_side_size(*cthw.shape[-2:])
    scaled = F.interpolate(cthw, size=size, mode="bilinear", align_corners=False)
    normalised = _normalise_channels(scaled, CLIP_MEAN, CLIP_STD)
    crops = []
    for index in CROP_INDICES[options.video_crops]:
        top, left = crop_offsets(*size, index)
        crops.append(normalised[..., top : top + IMAGE_SIZE, left : left + IMAGE_SIZE])
    return torch.stack(crops)


# --- audio (reference §4.3, exact) -----------------------------------------------

AUDIO_LAYOUT = f"float [samples] mono at {AUDIO_SAMPLE_RATE} Hz, at least 400 samples (25 ms)"


def audio_to_tensor(samples: np.ndarray) -> torch.Tensor:
    """[1,128,204]: de-mean, Kaldi log-mel fbank, zero-pad/truncate to 204 frames, normalise."""
    what = "audio"
    samples = _checked_array(samples, what, AUDIO_LAYOUT, ndim=1, floating=True)
    _require(samples.size >= 400, what, AUDIO_LAYOUT, f"got {samples.size} samples")
    signal = torch.from_numpy(samples.astype(np.float32))
    signal = signal - signal.mean()
    mel = log_mel_fbank(signal, AUDIO_SAMPLE_RATE, AUDIO_MEL_BINS).T  # [128, frames]
    # The reference pads with zeros before normalising (padding becomes ≈ 0.467).
    mel = F.pad(mel, (0, max(AUDIO_FRAMES - mel.shape[1], 0)))[:, :AUDIO_FRAMES]
    return ((mel - AUDIO_MEAN) / AUDIO_STD).unsqueeze(0)


# --- single-channel images: depth and thermal (no reference loader) -------------------

DEPTH_LAYOUT = "float [H,W] disparity (1/metres), >= 0, 0 where unknown"
THERMAL_LAYOUT = "float [H,W] intensity in [0,1]"


def _resize_plane(plane: torch.Tensor, mode: str) -> torch.Tensor:
    """[1,224,224]: short side 224 (antialiased ``mode``), centre crop."""
    size = short_side_size(*plane.shape)
    scaled = F.interpolate(plane[None, None], size=size, mode=mode, align_corners=False,
                           antialias=True)
    return centre_crop(scaled[0])


def depth_to_tensor(disparity: np.ndarray) -> torch.Tensor:
    """[1,224,224] standardised disparity. OUR recipe: ImageBind released no depth loader.

    Bilinear (antialiased) resize and centre crop like the image path; mean/std
    are Omnivore's disparity statistics, the community recipe of issues #107/#134.
    """
    what = "depth"
    disparity = _checked_array(disparity, what, DEPTH_LAYOUT, ndim=2, floating=True)
    _require(bool((disparity >= 0).all()), what, DEPTH_LAYOUT, "it has negative values")
    plane = _resize_plane(torch.from_numpy(disparity.astype(np.float32)), "bilinear")
    return (plane - DEPTH_MEAN) / DEPTH_STD


def thermal_to_tensor(intensity: np.ndarray) -> torch.Tensor:
    """[1,224,224] in [0,1], not normalised. OUR recipe: ImageBind released no thermal loader.

    Bicubic resize and centre crop as the community loader (PR #73) does; no
    mean/std, which matched the paper's LLVIP result best there. Bicubic
    overshoot is clipped back to [0,1], as PIL does on 8-bit images.
    """
    what = "thermal"
    intensity = _checked_array(intensity, what, THERMAL_LAYOUT, ndim=2, floating=True)
    in_range = bool(((intensity >= 0) & (intensity <= 1)).all())
    _require(in_range, what, THERMAL_LAYOUT, "it has values outside [0,1]")
    plane = _resize_plane(torch.from_numpy(intensity.astype(np.float32)), "bicubic")
    return plane.clamp(0.0, 1.0)


# --- IMU (no reference loader) -------------------------------------------------------

IMU_LAYOUT = f"float [{IMU_CHANNELS},T]: accelerometer xyz then gyroscope xyz"


def imu_to_tensor(series: np.ndarray) -> torch.Tensor:
    """[6,2000]. OUR recipe: windows of another length are resampled linearly to 2000.

    Sample i of T sits at time i/T of the window; each output sample takes the
    linear interpolation at its own time (the last input value holds at the end).
    """
    what = "imu"
    series = _checked_array(series, what, IMU_LAYOUT, ndim=2, floating=True)
    _require(series.shape[0] == IMU_CHANNELS, what, IMU_LAYOUT, f"got shape {series.shape}")
    values = series.astype(np.float32)
    length = values.shape[1]
    if length != IMU_SAMPLES:
        positions = np.arange(IMU_SAMPLES) * (length / IMU_SAMPLES)
        values = np.stack([np.interp(positions, np.arange(length), ch) for ch in values])
    return torch.from_numpy(values.astype(np.float32))


# --- text (reference §4.4, exact) ------------------------------------------------------

TEXT_LAYOUT = "a non-empty str (one chunk; BPE beyond 75 tokens is cut)"


def text_to_tensor(text: str) -> torch.Tensor:
    """[77] int64 CLIP token ids: SOT, BPE (cut to 75), EOT, zero padding."""
    _require(isinstance(text, str), "text", TEXT_LAYOUT, f"got {type(text).__name__}")
    _require(bool(text.strip()), "text", TEXT_LAYOUT, "it is empty or whitespace only")
    return tokenize(text)[0]


# --- the registry -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One model input layout: its name (the batching key), modality and transform."""

    name: str
    modality: Modality
    layout: str
    transform: Callable[[Any, PreprocessOptions], torch.Tensor]


def _ignoring_options(fn: Callable[[Any], torch.Tensor]) -> Callable[[Any, PreprocessOptions], torch.Tensor]:
    return lambda data, _options: fn(data)


_IMAGE = InputSpec("image", Modality.VISION, IMAGE_LAYOUT, _ignoring_options(image_to_tensor))
_CLIP = InputSpec("video_clip", Modality.VISION, CLIP_LAYOUT, clip_to_tensor)
_AUDIO = InputSpec("audio", Modality.AUDIO, AUDIO_LAYOUT, _ignoring_options(audio_to_tensor))

INPUTS: dict[tuple[Modality, Kind], InputSpec] = {
    (Modality.VISION, Kind.IMAGE): _IMAGE,
    (Modality.VISION, Kind.VIDEO): _CLIP,
    (Modality.AUDIO, Kind.AUDIO): _AUDIO,
    (Modality.AUDIO, Kind.VIDEO): _AUDIO,  # a video's soundtrack
    (Modality.TEXT, Kind.TEXT): InputSpec("text", Modality.TEXT, TEXT_LAYOUT,
                                          _ignoring_options(text_to_tensor)),
    (Modality.DEPTH, Kind.DEPTH): InputSpec("depth", Modality.DEPTH, DEPTH_LAYOUT,
                                            _ignoring_options(depth_to_tensor)),
    (Modality.THERMAL, Kind.THERMAL): InputSpec("thermal", Modality.THERMAL, THERMAL_LAYOUT,
                                                _ignoring_options(thermal_to_tensor)),
    (Modality.IMU, Kind.IMU): InputSpec("imu", Modality.IMU, IMU_LAYOUT,
                                        _ignoring_options(imu_to_tensor)),
}

# Queries carry no file kind: a vision array's rank says image or clip.
_VISION_KIND_BY_RANK = {3: Kind.IMAGE, 4: Kind.VIDEO}


def query_kind(modality: Modality | str, data: Any) -> Kind:
    """The kind to preprocess a bare query input as (vision: by array rank)."""
    modality = Modality(modality)
    if modality is not Modality.VISION:
        return spec(modality).kinds[0]
    rank = getattr(data, "ndim", None)
    if rank not in _VISION_KIND_BY_RANK:
        raise _fail("vision", f"{IMAGE_LAYOUT} or {CLIP_LAYOUT}",
                    f"got {type(data).__name__} of rank {rank}")
    return _VISION_KIND_BY_RANK[rank]


def input_spec(modality: Modality | str, kind: Kind | str) -> InputSpec:
    """The registry entry for (modality, kind), with a clear error for other pairs."""
    try:
        return INPUTS[(Modality(modality), Kind(kind))]
    except (KeyError, ValueError):
        raise ValueError(f"no model input for modality {modality!r} from kind {kind!r}") from None


def preprocess(modality: Modality | str, data: Any, kind: Kind | str | None = None,
               options: PreprocessOptions = DEFAULT_OPTIONS) -> torch.Tensor:
    """One input's model tensor (per-item shape; video clips carry a crops axis)."""
    chosen = query_kind(modality, data) if kind is None else kind
    return input_spec(modality, chosen).transform(data, options)


def to_model_input(segment: Segment, options: PreprocessOptions = DEFAULT_OPTIONS) -> torch.Tensor:
    """The model tensor of one segment (its modality and kind pick the recipe)."""
    return preprocess(segment.modality, segment.data, segment.kind, options)


def batch_key(segment: Segment) -> str:
    """Segments with equal keys can share one model batch (same modality and layout)."""
    return input_spec(segment.modality, segment.kind).name


def stack_inputs(modality: Modality | str, segments: Sequence[Segment],
                 options: PreprocessOptions = DEFAULT_OPTIONS) -> torch.Tensor:
    """The model input of a batch: [N, *per-item shape] (video [N,crops,3,2,224,224]).

    All segments must be of ``modality`` and share one layout (see ``batch_key``).
    """
    if not segments:
        raise ValueError(f"no {modality} segments to stack")
    keys = {batch_key(s) for s in segments}
    others = {str(s.modality) for s in segments} - {str(Modality(modality))}
    if others or len(keys) > 1:
        raise ValueError(f"cannot batch {sorted(keys)} inputs of {sorted(others)} as {modality}")
    return torch.stack([to_model_input(s, options) for s in segments])
