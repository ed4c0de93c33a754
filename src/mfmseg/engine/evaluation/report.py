"""What users look at: image panels, loss curves and per-class IoU bars, written as PNGs into the work dir.

Called by the trainer between steps (a callback), never inside the training step. matplotlib runs headless (Agg).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from mfmseg.data.labels import CITYSCAPES_PALETTE  # noqa: E402
from mfmseg.data.transforms import denormalize_rgb  # noqa: E402
from mfmseg.files import atomic_write, read_jsonl  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, bbox_inches="tight"))
    finally:
        plt.close(fig)


def colorize(label: np.ndarray, palette: Sequence[Sequence[int]] = CITYSCAPES_PALETTE) -> np.ndarray:
    """Train ids H×W -> RGB uint8; ignore (255) and unknown ids are black."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    return lut[label.astype(np.uint8)]


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """3×H×W ImageNet-normalised tensor -> H×W×3 uint8."""
    rgb = denormalize_rgb(img.detach().float().cpu()).clamp(0, 255)
    return rgb.permute(1, 2, 0).numpy().astype(np.uint8)


def _first_sample(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu()
    return t[0] if t.dim() == 4 else t


def _is_image(t: torch.Tensor) -> bool:
    return t.dim() == 3 and t.shape[0] == 3 and t.is_floating_point()


def label_map(t: torch.Tensor) -> np.ndarray | None:
    """The train ids of a panel cell that is a label map (label, pseudo-label, prediction); None for an image or
    a mask (bool, or floats in [0, 1])."""
    t = _first_sample(t)
    if _is_image(t):
        return None
    if t.dim() == 3:
        t = t[0]
    if t.dtype == torch.bool or (t.is_floating_point() and t.max() <= 1 and t.min() >= 0):
        return None
    return t.numpy()


def to_rgb(t: torch.Tensor, palette: Sequence[Sequence[int]] = CITYSCAPES_PALETTE) -> np.ndarray:
    """One panel cell from whatever the step returned: an image, a label map (in `palette`) or a mask."""
    ids = label_map(t)
    if ids is not None:
        return colorize(ids, palette)
    t = _first_sample(t)
    if _is_image(t):
        return to_uint8(t)
    if t.dim() == 3:
        t = t[0]
    return np.repeat((t.float().numpy() * 255).astype(np.uint8)[..., None], 3, axis=2)


def shown_classes(visuals: Mapping[str, torch.Tensor], num_classes: int,
                  palette: Sequence[Sequence[int]] = CITYSCAPES_PALETTE) -> list[int]:
    """The train ids that some label-map cell shows (ignore, 255, and ids beyond the palette are black: left out)."""
    shown: set[int] = set()
    for t in visuals.values():
        ids = label_map(t)
        if ids is not None:
            shown.update(int(i) for i in np.unique(ids))
    return sorted(i for i in shown if 0 <= i < min(num_classes, len(palette)))


def panel_figure(visuals: Mapping[str, torch.Tensor], classes: Sequence[str], title: str = "",
                 palette: Sequence[Sequence[int]] = CITYSCAPES_PALETTE) -> plt.Figure:
    """A grid of the first sample of every visual (input, label, pseudo-label, MFM mask, predictions), with a
    legend of the classes the label maps show: colours alone do not say which class is which."""
    items = list(visuals.items())
    cols = min(4, len(items))
    rows = (len(items) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, t) in zip(axes.flat, items):
        ax.imshow(to_rgb(t, palette), interpolation="nearest")
        ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title)
    handles = [Patch(color=np.asarray(palette[i]) / 255, label=classes[i])
               for i in shown_classes(visuals, len(classes), palette)]
    if handles:
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), 8),
                   fontsize=8, frameon=False)
    return fig


def write_panel(visuals: Mapping[str, torch.Tensor], path: Path, classes: Sequence[str], title: str = "",
                palette: Sequence[Sequence[int]] = CITYSCAPES_PALETTE) -> Path:
    _save(panel_figure(visuals, classes, title, palette), Path(path))
    return Path(path)


def plot_losses(metrics_path: Path, out: Path) -> Path | None:
    """Training losses (every logged iteration), validation mIoU and the label-free metrics over iterations."""
    rows = read_jsonl(metrics_path)
    train = [r for r in rows if r.get("kind") == "train"]
    val = [r for r in rows if r.get("kind") == "val"]
    if not train:
        return None
    keys = sorted({k for r in train for k in r if k.startswith("loss")})
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 3.8))
    for k in keys:
        pts = [(r["iter"], r[k]) for r in train if k in r]
        ax1.plot(*zip(*pts), label=k)
    ax1.set_xlabel("iteration")
    ax1.set_yscale("log")
    ax1.legend(fontsize=8)
    ax1.set_title("training losses")
    labelled = [r for r in val if r.get("mIoU") is not None]
    if labelled:
        ax2.plot([r["iter"] for r in labelled], [r["mIoU"] for r in labelled], marker="o")
    ax2.set_xlabel("iteration")
    ax2.set_ylabel("mIoU (%)")
    ax2.set_title("target val mIoU" if labelled else "target val mIoU (no target labels)")
    free = [r for r in val if r.get("label_free")]
    for key in ("entropy", "im", "agreement", "flip_consistency", "confident"):  # the metrics in [0, 1]
        pts = [(r["iter"], r["label_free"][key]) for r in free if key in r["label_free"]]
        if pts:
            ax3.plot(*zip(*pts), marker="o", label=key)
    ax3.set_xlabel("iteration")
    ax3.set_title("label-free metrics (docs/label_free.md)")
    if free:
        ax3.legend(fontsize=8)
    _save(fig, Path(out))
    return Path(out)


def plot_iou_bars(per_class: Mapping[str, Mapping[str, float]], out: Path, title: str = "per-class IoU") -> Path:
    """Grouped bars: one group per class, one bar per run (e.g. source-only / DACS / DACS+MFM)."""
    runs = list(per_class)
    classes = list(next(iter(per_class.values())))
    x = np.arange(len(classes))
    width = 0.8 / max(len(runs), 1)
    fig, ax = plt.subplots(figsize=(max(8, 0.55 * len(classes) * max(1, len(runs) / 2)), 4))
    for i, run in enumerate(runs):
        vals = [per_class[run].get(c) for c in classes]
        vals = [float("nan") if v is None else v for v in vals]
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, np.nan_to_num(vals), width, label=run)
    ax.set_xticks(x)
    ax.set_xticklabels(classes, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, Path(out))
    return Path(out)
