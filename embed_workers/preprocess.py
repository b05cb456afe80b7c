"""Decoded arrays (``ModalitySpec.decoded``) → model input tensors, as pure functions.

Facts: shared/reference/imagebind.md §4. Image, video clip, audio and text
follow ImageBind's reference loaders exactly; depth, thermal and IMU have no
reference loader, so their recipes are marked as ours where they are defined.

Each recipe has two halves, so the heavy arithmetic runs where the model runs:

* ``pack`` (CPU, where the segment was decoded): validates the input and makes
  the compact tensor that crosses to the encoder: uint8 frames for vision (an
  image is already resized and cropped there, by PIL, for parity with the
  reference; a clip's frames arrive scaled to the short side of 224 by ffmpeg),
  the float32 waveform for audio, the raw float planes for depth and thermal,
  the raw series for IMU, token ids for text.
* ``finish`` (the encoder's device, a batch at a time): everything else, on a
  stacked batch of equal-shape packs: to float, resize, centre or 3-crop split,
  normalisation, the Kaldi fbank, IMU resampling.

``preprocess`` is ``finish(pack(x)[None])[0]`` on the CPU, so a CPU run and a GPU
run go through the same functions (parity: tests/test_preprocess.py).

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
from schemas.extension import is_extension

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


def _normalise_channels(x: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                        dim: int = 1) -> torch.Tensor:
    """(x - mean) / std per channel on axis ``dim`` (any other axes), on x's device."""
    shape = [1] * x.ndim
    shape[dim] = -1
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(shape)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(shape)
    return (x - m) / s


def _one(pack: Callable[[Any], torch.Tensor],
         finish: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Any], torch.Tensor]:
    """The per-item recipe on the CPU: ``finish`` of a batch of one ``pack``."""
    return lambda data: finish(pack(data)[None])[0]


# --- vision: image (reference §4.1, exact) ------------------------------------------

IMAGE_LAYOUT = "uint8 [H,W,3] RGB"


def pack_image(image: np.ndarray) -> torch.Tensor:
    """uint8 [3,224,224]: PIL bicubic (antialiased) short side 224, then the centre crop.

    The resize stays on the CPU in PIL, so its values are the reference's to the
    bit (torchvision Resize(224, BICUBIC) on a PIL image); what crosses is uint8.
    """
    what = "vision image"
    image = _checked_array(image, what, IMAGE_LAYOUT, ndim=3, floating=False)
    _require(image.shape[2] == 3, what, IMAGE_LAYOUT, f"got shape {image.shape}")
    height, width = image.shape[:2]
    new_h, new_w = short_side_size(height, width)
    pil = Image.fromarray(np.ascontiguousarray(image))  # uint8 [H,W,3] opens as RGB
    resized = np.asarray(pil.resize((new_w, new_h), Image.Resampling.BICUBIC))
    return centre_crop(torch.from_numpy(resized.copy()).permute(2, 0, 1)).contiguous()


def finish_images(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [N,3,224,224] → float32: /255 (ToTensor), CLIP normalisation."""
    return _normalise_channels(batch.to(torch.float32).div(255), CLIP_MEAN, CLIP_STD)


image_to_tensor = _one(pack_image, finish_images)
image_to_tensor.__doc__ = "[3,224,224] model input of one image (``pack_image`` + ``finish_images``)."


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


def pack_clip(frames: np.ndarray) -> torch.Tensor:
    """uint8 [2,H,W,3] as decoded (video decoders already scale the short side to 224)."""
    what = "vision video clip"
    frames = _checked_array(frames, what, CLIP_LAYOUT, ndim=4, floating=False)
    _require(frames.shape[0] == CLIP_FRAMES and frames.shape[3] == 3, what, CLIP_LAYOUT,
             f"got shape {frames.shape}")
    return torch.from_numpy(np.ascontiguousarray(frames))


def finish_clips(batch: torch.Tensor, options: PreprocessOptions) -> torch.Tensor:
    """uint8 [N,2,H,W,3] → [N,crops,3,2,224,224]: /255, bilinear short side 224 (no
    antialias), CLIP norm, uniform crops.

    Video decoders already scale the short side to 224, and a bilinear resize to the
    same size is the identity (each output pixel samples its own centre), so it is
    skipped then. The arithmetic is the reference's, in its order, in place.
    """
    count, frames, height, width, channels = batch.shape
    x = batch.permute(0, 4, 1, 2, 3).contiguous().to(torch.float32).div_(255.0)  # [N,3,2,H,W]
    size = _video_short_side_size(height, width)
    if size != (height, width):
        planes = x.reshape(count * channels, frames, height, width)
        x = F.interpolate(planes, size=size, mode="bilinear",
                          align_corners=False).reshape(count, channels, frames, *size)
    shape = (1, channels, 1, 1, 1)
    x.sub_(torch.as_tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).reshape(shape))
    x.div_(torch.as_tensor(CLIP_STD, dtype=x.dtype, device=x.device).reshape(shape))
    crops = []
    for index in CROP_INDICES[options.video_crops]:
        top, left = crop_offsets(*size, index)
        crops.append(x[..., top : top + IMAGE_SIZE, left : left + IMAGE_SIZE])
    return torch.stack(crops, dim=1)


def clip_to_tensor(frames: np.ndarray, options: PreprocessOptions) -> torch.Tensor:
    """[crops,3,2,224,224] model input of one clip (``pack_clip`` + ``finish_clips``)."""
    return finish_clips(pack_clip(frames)[None], options)[0]


# --- audio (reference §4.3, exact) -----------------------------------------------

AUDIO_LAYOUT = f"float [samples] mono at {AUDIO_SAMPLE_RATE} Hz, at least 400 samples (25 ms)"


def pack_audio(samples: np.ndarray) -> torch.Tensor:
    """float32 [samples]: the waveform itself crosses to the encoder."""
    what = "audio"
    samples = _checked_array(samples, what, AUDIO_LAYOUT, ndim=1, floating=True)
    _require(samples.size >= 400, what, AUDIO_LAYOUT, f"got {samples.size} samples")
    return torch.from_numpy(samples.astype(np.float32))


def finish_audio(batch: torch.Tensor) -> torch.Tensor:
    """float32 [N,samples] → [N,1,128,204]: de-mean, Kaldi log-mel fbank, zero-pad or
    truncate to 204 frames, AudioSet normalisation."""
    signal = batch - batch.mean(dim=-1, keepdim=True)
    mel = log_mel_fbank(signal, AUDIO_SAMPLE_RATE, AUDIO_MEL_BINS).transpose(-1, -2)  # [N,128,T]
    # The reference pads with zeros before normalising (padding becomes ≈ 0.467).
    mel = F.pad(mel, (0, max(AUDIO_FRAMES - mel.shape[-1], 0)))[..., :AUDIO_FRAMES]
    return ((mel - AUDIO_MEAN) / AUDIO_STD).unsqueeze(1)


audio_to_tensor = _one(pack_audio, finish_audio)
audio_to_tensor.__doc__ = "[1,128,204] model input of one waveform (``pack_audio`` + ``finish_audio``)."


# --- single-channel images: depth and thermal (no reference loader) -------------------

DEPTH_LAYOUT = "float [H,W] disparity (1/metres), >= 0, 0 where unknown"
THERMAL_LAYOUT = "float [H,W] intensity in [0,1]"


def _resize_planes(planes: torch.Tensor, mode: str) -> torch.Tensor:
    """[N,H,W] → [N,1,224,224]: short side 224 (antialiased ``mode``), centre crop."""
    size = short_side_size(*planes.shape[-2:])
    scaled = F.interpolate(planes[:, None], size=size, mode=mode, align_corners=False,
                           antialias=True)
    return centre_crop(scaled)


def pack_depth(disparity: np.ndarray) -> torch.Tensor:
    """float32 [H,W] disparity, checked (finite, >= 0)."""
    what = "depth"
    disparity = _checked_array(disparity, what, DEPTH_LAYOUT, ndim=2, floating=True)
    _require(bool((disparity >= 0).all()), what, DEPTH_LAYOUT, "it has negative values")
    return torch.from_numpy(disparity.astype(np.float32))


def finish_depth(batch: torch.Tensor) -> torch.Tensor:
    """[N,H,W] → [N,1,224,224] standardised disparity. OUR recipe: ImageBind released no
    depth loader. Bilinear (antialiased) resize and centre crop like the image path;
    mean/std are Omnivore's disparity statistics, the community recipe of issues #107/#134.
    """
    return (_resize_planes(batch, "bilinear") - DEPTH_MEAN) / DEPTH_STD


def pack_thermal(intensity: np.ndarray) -> torch.Tensor:
    """float32 [H,W] intensity, checked (finite, in [0,1])."""
    what = "thermal"
    intensity = _checked_array(intensity, what, THERMAL_LAYOUT, ndim=2, floating=True)
    in_range = bool(((intensity >= 0) & (intensity <= 1)).all())
    _require(in_range, what, THERMAL_LAYOUT, "it has values outside [0,1]")
    return torch.from_numpy(intensity.astype(np.float32))


def finish_thermal(batch: torch.Tensor) -> torch.Tensor:
    """[N,H,W] → [N,1,224,224] in [0,1], not normalised. OUR recipe: ImageBind released no
    thermal loader. Bicubic resize and centre crop as the community loader (PR #73) does;
    no mean/std, which matched the paper's LLVIP result best there. Bicubic overshoot is
    clipped back to [0,1], as PIL does on 8-bit images.
    """
    return _resize_planes(batch, "bicubic").clamp(0.0, 1.0)


depth_to_tensor = _one(pack_depth, finish_depth)
thermal_to_tensor = _one(pack_thermal, finish_thermal)


# --- IMU (no reference loader) -------------------------------------------------------

IMU_LAYOUT = f"float [{IMU_CHANNELS},T]: accelerometer xyz then gyroscope xyz"


def pack_imu(series: np.ndarray) -> torch.Tensor:
    """float32 [6,T] as recorded."""
    what = "imu"
    series = _checked_array(series, what, IMU_LAYOUT, ndim=2, floating=True)
    _require(series.shape[0] == IMU_CHANNELS, what, IMU_LAYOUT, f"got shape {series.shape}")
    return torch.from_numpy(series.astype(np.float32))


def finish_imu(batch: torch.Tensor) -> torch.Tensor:
    """[N,6,T] → [N,6,2000]. OUR recipe: windows of another length are resampled linearly.

    Sample i of T sits at time i/T of the window; each output sample takes the linear
    interpolation at its own time (the last input value holds at the end), computed in
    float64 as ``np.interp`` computes it.
    """
    length = batch.shape[-1]
    if length == IMU_SAMPLES:
        return batch
    positions = torch.arange(IMU_SAMPLES, dtype=torch.float64, device=batch.device)
    positions = positions * (length / IMU_SAMPLES)
    left = positions.floor().long().clamp(max=length - 1)
    right = (left + 1).clamp(max=length - 1)
    values = batch.to(torch.float64)
    low, high = values[..., left], values[..., right]
    return (low + (high - low) * (positions - left)).to(torch.float32)


imu_to_tensor = _one(pack_imu, finish_imu)


# --- text (reference §4.4, exact) ------------------------------------------------------

TEXT_LAYOUT = "a non-empty str (one chunk; BPE beyond 75 tokens is cut)"


def pack_text(text: str) -> torch.Tensor:
    """[77] int64 CLIP token ids: SOT, BPE (cut to 75), EOT, zero padding."""
    _require(isinstance(text, str), "text", TEXT_LAYOUT, f"got {type(text).__name__}")
    _require(bool(text.strip()), "text", TEXT_LAYOUT, "it is empty or whitespace only")
    return tokenize(text)[0]


def text_to_tensor(text: str) -> torch.Tensor:
    """[77] int64 token ids (tokenising is the whole recipe; nothing is left to finish)."""
    return pack_text(text)


# --- the registry -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One model input layout: its name (the batching key), modality and the recipe's halves.

    ``pack(data, options)`` runs where the segment is decoded and returns the tensor
    that crosses; ``finish(batch, options)`` turns a stack of equal-shape packs into
    model input on whatever device the batch is on; ``views(options)`` is how many
    model views one input makes (a 3-crop clip makes 3).
    """

    name: str
    modality: Modality | None  # None: any modality extension's
    layout: str
    pack: Callable[[Any, PreprocessOptions], torch.Tensor]
    finish: Callable[[torch.Tensor, PreprocessOptions], torch.Tensor]
    views: Callable[[PreprocessOptions], int] = lambda _options: 1

    def transform(self, data: Any, options: PreprocessOptions) -> torch.Tensor:
        """One input's model tensor on the CPU: ``finish`` of a batch of one ``pack``."""
        return self.finish(self.pack(data, options)[None], options)[0]


def _no_options(fn: Callable[[Any], torch.Tensor]) -> Callable[[Any, PreprocessOptions], torch.Tensor]:
    return lambda data, _options: fn(data)


def _unchanged(batch: torch.Tensor, _options: PreprocessOptions) -> torch.Tensor:
    return batch


_IMAGE = InputSpec("image", Modality.VISION, IMAGE_LAYOUT, _no_options(pack_image),
                   _no_options(finish_images))
_CLIP = InputSpec("video_clip", Modality.VISION, CLIP_LAYOUT, _no_options(pack_clip),
                  finish_clips, lambda options: len(CROP_INDICES[options.video_crops]))
_AUDIO = InputSpec("audio", Modality.AUDIO, AUDIO_LAYOUT, _no_options(pack_audio),
                   _no_options(finish_audio))

INPUTS: dict[tuple[Modality, Kind], InputSpec] = {
    (Modality.VISION, Kind.IMAGE): _IMAGE,
    (Modality.VISION, Kind.VIDEO): _CLIP,
    (Modality.AUDIO, Kind.AUDIO): _AUDIO,
    (Modality.AUDIO, Kind.VIDEO): _AUDIO,  # a video's soundtrack
    (Modality.TEXT, Kind.TEXT): InputSpec("text", Modality.TEXT, TEXT_LAYOUT,
                                          _no_options(pack_text), _unchanged),
    (Modality.DEPTH, Kind.DEPTH): InputSpec("depth", Modality.DEPTH, DEPTH_LAYOUT,
                                            _no_options(pack_depth), _no_options(finish_depth)),
    (Modality.THERMAL, Kind.THERMAL): InputSpec("thermal", Modality.THERMAL, THERMAL_LAYOUT,
                                                _no_options(pack_thermal),
                                                _no_options(finish_thermal)),
    (Modality.IMU, Kind.IMU): InputSpec("imu", Modality.IMU, IMU_LAYOUT,
                                        _no_options(pack_imu), _no_options(finish_imu)),
}


def pack_extension(data: Any) -> torch.Tensor:
    """A modality extension's view, already in its geometry (``ingest.decode.extension``);
    its normalisation is part of its encoder, so nothing is left to finish."""
    array = np.asarray(data)
    if not np.issubdtype(array.dtype, np.floating) or array.ndim != 2 or not np.isfinite(array).all():
        raise _fail("extension", EXTENSION_LAYOUT, f"got {array.dtype} {list(array.shape)}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


EXTENSION_LAYOUT = "float32 [C,T] (series) or [H,W] (map), finite, in the extension's geometry"
# One layout for every extension: the encoder batches by (modality, layout), so two
# extensions never share a batch.
_EXTENSION = InputSpec("extension", None, EXTENSION_LAYOUT, _no_options(pack_extension),
                       _unchanged)
SPECS_BY_NAME: dict[str, InputSpec] = {s.name: s for s in (*INPUTS.values(), _EXTENSION)}

# Queries carry no file kind: a vision array's rank says image or clip.
_VISION_KIND_BY_RANK = {3: Kind.IMAGE, 4: Kind.VIDEO}


def query_kind(modality: Modality | str, data: Any) -> Kind:
    """The kind to preprocess a bare query input as (vision: by array rank)."""
    if is_extension(modality):
        return modality  # an extension's files are of its own kind
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
    if is_extension(modality) and modality == kind:
        return _EXTENSION
    try:
        return INPUTS[(Modality(modality), Kind(kind))]
    except (KeyError, ValueError):
        raise ValueError(f"no model input for modality {modality!r} from kind {kind!r}") from None


def layout_spec(name: str) -> InputSpec:
    """The registry entry of a layout name (``batch_key``)."""
    try:
        return SPECS_BY_NAME[name]
    except KeyError:
        raise ValueError(f"no model input layout {name!r}") from None


def pack(modality: Modality | str, data: Any, kind: Kind | str | None = None,
         options: PreprocessOptions = DEFAULT_OPTIONS) -> torch.Tensor:
    """One input's packed tensor (checked; what crosses to the encoder's device)."""
    chosen = query_kind(modality, data) if kind is None else kind
    return input_spec(modality, chosen).pack(data, options)


def finish(layout: str, batch: torch.Tensor,
           options: PreprocessOptions = DEFAULT_OPTIONS) -> torch.Tensor:
    """Model input of a stacked batch of equal-shape packs of ``layout``, on its device."""
    return layout_spec(layout).finish(batch, options)


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
