"""The evaluation report of a bound modality: held-out retrieval against chance.

* new → image and image → new Recall@1/5/10 over the held-out pairs: each
  held-out sample's own image must rank among the first k of all held-out
  images (and the reverse). Chance is k / N.
* Emergent retrieval, never trained: new → text when the pairs carry labels
  (the sample's own label among all distinct held-out labels, chance k / L),
  and new → audio when they carry paired sounds (chance k / N). Both mean
  something only with the real checkpoint; with a random-weight preset they
  exercise the code path, and the report says so.
* ``loss.png``: training and held-out loss per epoch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

KS = (1, 5, 10)
REPORT_FILE, PLOT_FILE = "report.json", "loss.png"


@dataclass(frozen=True, slots=True)
class Retrieval:
    """Recall@k of one direction, with the chance level of each k."""

    direction: str
    candidates: int
    recall: dict[int, float]
    chance: dict[int, float]

    def lines(self) -> list[str]:
        return [f"  {self.direction:<14} R@{k:<2} {self.recall[k]:.3f}  (chance {self.chance[k]:.3f}, "
                f"{self.recall[k] / self.chance[k]:.1f}x)" for k in self.recall]


@dataclass(frozen=True, slots=True)
class Report:
    name: str
    version: str
    base_model_id: str
    held_out: int
    trained_on: int
    retrieval: list[Retrieval]
    emergent: list[Retrieval] = field(default_factory=list)
    meaningful: bool = True  # False when the base preset has random weights
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        out = [f"{self.name} {self.version} (base {self.base_model_id}): trained on "
               f"{self.trained_on} pairs, evaluated on {self.held_out} held-out pairs"]
        for r in self.retrieval:
            out += r.lines()
        if self.emergent:
            out.append("  emergent (never trained on):")
            for r in self.emergent:
                out += r.lines()
        out += [f"  note: {n}" for n in self.notes]
        return "\n".join(out)

    def write(self, run_dir: Path) -> Path:
        path = Path(run_dir) / REPORT_FILE
        path.write_text(json.dumps(asdict(self), indent=2))
        return path


def recall_at(queries: np.ndarray, keys: np.ndarray, truth: np.ndarray, direction: str,
              ks: Sequence[int] = KS) -> Retrieval:
    """Row i of ``queries`` is right when key ``truth[i]`` ranks within its first k keys."""
    scores = queries @ keys.T
    own = scores[np.arange(len(queries)), truth]
    rank = (scores > own[:, None]).sum(axis=1)  # 0 = first; ties count in the query's favour
    ks = [k for k in ks if k <= len(keys)] or [len(keys)]
    return Retrieval(direction, len(keys), {k: float((rank < k).mean()) for k in ks},
                     {k: k / len(keys) for k in ks})


def paired_recall(new: np.ndarray, images: np.ndarray, name: str) -> list[Retrieval]:
    truth = np.arange(len(new))
    return [recall_at(new, images, truth, f"{name} -> image"),
            recall_at(images, new, truth, f"image -> {name}")]


def label_recall(new: np.ndarray, labels: Sequence[str], label_vectors: np.ndarray,
                 distinct: Sequence[str], name: str) -> Retrieval:
    """new → text: each sample's own label among the distinct labels."""
    index = {label: i for i, label in enumerate(distinct)}
    truth = np.array([index[label] for label in labels])
    return recall_at(new, label_vectors, truth, f"{name} -> text")


def plot_losses(train: Sequence[float], held: Sequence[float], path: Path) -> Path:
    """A small line chart (PIL only): training loss in blue, held-out loss in orange."""
    from PIL import Image, ImageDraw

    width, height, margin = 640, 360, 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    values = [v for v in (*train, *held) if np.isfinite(v)] or [0.0, 1.0]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    epochs = max(len(train), 2)

    def point(i: int, v: float) -> tuple[float, float]:
        x = margin + (width - 2 * margin) * i / (epochs - 1)
        return x, height - margin - (height - 2 * margin) * (v - low) / span

    draw.rectangle([margin, margin, width - margin, height - margin], outline="grey")
    for series, colour in ((train, (31, 119, 180)), (held, (255, 127, 14))):
        if len(series) > 1:
            draw.line([point(i, v) for i, v in enumerate(series)], fill=colour, width=2)
    draw.text((margin, 8), f"loss per epoch: train (blue), held-out (orange); "
              f"{low:.3f} to {high:.3f}", fill="black")
    draw.text((margin, height - margin + 8), f"epochs 1 to {len(train)}", fill="black")
    image.save(path)
    return path
