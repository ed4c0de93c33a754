"""Label-free metrics on target images: how is adaptation going when the target has no labels? (issue 19)

UDA's premise is an unlabelled target, yet UDA code bases monitor training and pick checkpoints with the target's
labelled val split. These metrics read only the model's predictions on target images (docs/method.md §7):

| name | what | better | reference |
|---|---|---|---|
| `entropy` | mean per-pixel entropy of the softmax / log C | lower | entropy minimisation (Grandvalet & Bengio 2004) |
| `im` | information maximisation: entropy of the mean prediction − mean per-pixel entropy, / log C | higher | Hu et al. 2017; SHOT (Liang et al. 2020) |
| `confident` | share of pixels whose max probability ≥ τ (the pseudo-label weight q of the eval images) | higher | DACS |
| `flip_consistency` | share of pixels whose class is the same for the image and its mirror image | higher | augmentation consistency (ACM, arXiv 2308.00287) |
| `agreement` | share of pixels where the student's and the EMA teacher's classes agree (needs a teacher) | higher | mean-teacher consistency |
| `snd` | soft neighbourhood density of sampled pixel predictions (τ = 0.05) | higher | Saito et al., ICCV 2021 |
| `class_kl` | KL(source label distribution ‖ predicted class distribution) | lower | class-prior drift |

`vanished` lists classes frequent in the source labels that the model no longer predicts (a collapsed class, as in
MIC issue 9); it is logged and printed, not ranked. Everything is computed from one whole-image forward per image at
the output stride (plus a mirrored forward and, with a teacher, a teacher forward): about 2–3× the cost of one
evaluation pass without sliding windows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mfmseg.engine.runtime.numerics import autocast

# name -> True when higher is better: what `train.select_by` and `mfmseg select` rank by
METRICS: dict[str, bool] = {"entropy": False, "im": True, "confident": True, "flip_consistency": True,
                            "agreement": True, "snd": True, "class_kl": False}
SND_TEMPERATURE = 0.05  # Saito et al.'s temperature of the neighbourhood softmax
SND_PIXELS_PER_IMAGE = 64
VANISHED_SOURCE_SHARE = 0.005  # a class covering ≥ 0.5 % of source pixels ...
VANISHED_RATIO = 0.01  # ... predicted on < 1 % of that share has vanished


class LabelFreeAccumulator:
    """Sums over images; `result()` turns them into the metrics. One per evaluation."""

    def __init__(self, num_classes: int, threshold: float, generator: torch.Generator | None = None) -> None:
        self.num_classes, self.threshold = num_classes, threshold
        self.generator = generator or torch.Generator().manual_seed(0)
        self.pixels = 0
        self.entropy = 0.0
        self.confident = 0.0
        self.flip_same = 0.0
        self.flip_pixels = 0
        self.agree = 0.0
        self.agree_pixels = 0
        self.prob_sum = torch.zeros(num_classes, dtype=torch.float64)
        self.class_pixels = torch.zeros(num_classes, dtype=torch.float64)
        self.snd_samples: list[Tensor] = []
        self.snd_reduced: float | None = None

    def update(self, logits: Tensor, flipped_logits: Tensor | None = None, teacher_logits: Tensor | None = None
               ) -> None:
        """B×C×h×w logits of the images; `flipped_logits`: of the mirrored images (mirrored back here)."""
        prob = torch.softmax(logits.float(), dim=1)
        log_prob = torch.log_softmax(logits.float(), dim=1)
        pred = prob.argmax(1)
        n = pred.numel()
        self.pixels += n
        self.entropy += float(-(prob * log_prob).sum(1).sum()) / math.log(self.num_classes)
        self.confident += float((prob.amax(1) >= self.threshold).sum())
        self.prob_sum += prob.sum(dim=(0, 2, 3)).double().cpu()
        self.class_pixels += torch.bincount(pred.flatten().cpu(), minlength=self.num_classes).double()
        if flipped_logits is not None:
            self.flip_same += float((flipped_logits.flip(-1).argmax(1) == pred).sum())
            self.flip_pixels += n
        if teacher_logits is not None:
            teacher = F.interpolate(teacher_logits.float(), size=logits.shape[-2:], mode="bilinear",
                                    align_corners=False) if teacher_logits.shape[-2:] != logits.shape[-2:] \
                else teacher_logits
            self.agree += float((teacher.argmax(1) == pred).sum())
            self.agree_pixels += n
        flat = prob.permute(0, 2, 3, 1).reshape(-1, self.num_classes).cpu()
        take = torch.randperm(flat.shape[0], generator=self.generator)[:SND_PIXELS_PER_IMAGE * logits.shape[0]]
        self.snd_samples.append(flat[take])

    def all_reduce(self, device: torch.device | str) -> None:
        """Sum every rank's counts (in place); SND becomes the mean of the ranks' own values."""
        import torch.distributed as dist

        world = dist.get_world_size()
        counts = torch.tensor([self.pixels, self.entropy, self.confident, self.flip_same, self.flip_pixels,
                               self.agree, self.agree_pixels, self.snd_value() / world], dtype=torch.float64,
                              device=device)
        sums = torch.cat([counts, self.prob_sum.to(device), self.class_pixels.to(device)])
        dist.all_reduce(sums)
        values, c = sums.cpu(), self.num_classes
        self.pixels, self.flip_pixels, self.agree_pixels = int(values[0]), int(values[4]), int(values[6])
        self.entropy, self.confident, self.flip_same, self.agree = (float(values[i]) for i in (1, 2, 3, 5))
        self.snd_reduced = float(values[7])
        self.prob_sum, self.class_pixels = values[8:8 + c].clone(), values[8 + c:8 + 2 * c].clone()

    def snd_value(self) -> float:
        if self.snd_reduced is not None:
            return self.snd_reduced
        return snd(torch.cat(self.snd_samples)) if self.snd_samples else 0.0

    def result(self, source_distribution: Sequence[float] | None = None) -> dict:
        if not self.pixels:
            raise ValueError("no images were seen")
        log_c = math.log(self.num_classes)
        mean_entropy = self.entropy / self.pixels
        marginal = self.prob_sum / self.pixels
        marginal_entropy = float(-(marginal * marginal.clamp_min(1e-12).log()).sum()) / log_c
        predicted = (self.class_pixels / self.pixels).tolist()
        out = {"entropy": mean_entropy, "im": marginal_entropy - mean_entropy,
               "confident": self.confident / self.pixels, "snd": self.snd_value(),
               "predicted_distribution": predicted}
        if self.flip_pixels:
            out["flip_consistency"] = self.flip_same / self.flip_pixels
        if self.agree_pixels:
            out["agreement"] = self.agree / self.agree_pixels
        if source_distribution is not None:
            out["class_kl"] = class_kl(source_distribution, predicted)
            out["vanished"] = vanished_classes(source_distribution, predicted)
        return out


def snd(prob: Tensor, temperature: float = SND_TEMPERATURE) -> float:
    """Soft neighbourhood density: the mean entropy of each sample's softmax over its similarities to the other
    samples (L2-normalised probability vectors, self excluded). Dense, well-clustered predictions score high."""
    if prob.shape[0] < 2:
        return 0.0
    z = F.normalize(prob.double(), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(-math.inf)
    p = torch.softmax(sim, dim=1)
    return float(-(p * p.clamp_min(1e-300).log()).sum(1).mean())


def class_kl(source: Sequence[float], predicted: Sequence[float], eps: float = 1e-6) -> float:
    """KL(source ‖ predicted) over classes, both renormalised, with `eps` so that a vanished class costs a lot
    but not infinity."""
    s = torch.tensor(source, dtype=torch.float64) + eps
    p = torch.tensor(predicted, dtype=torch.float64) + eps
    s, p = s / s.sum(), p / p.sum()
    return float((s * (s / p).log()).sum())


def vanished_classes(source: Sequence[float], predicted: Sequence[float]) -> list[int]:
    """Classes that cover ≥ 0.5 % of source pixels but are predicted on < 1 % of that share."""
    total = sum(source) or 1.0
    return [c for c, (s, p) in enumerate(zip(source, predicted))
            if s / total >= VANISHED_SOURCE_SHARE and p < VANISHED_RATIO * s / total]


def padded_forward(model: nn.Module, img: Tensor) -> Tensor:
    """Logits at output stride of an image of any size: padded (zeros, bottom/right) to the model's
    `size_multiple`, the padded part of the output cut off."""
    multiple = int(getattr(model, "size_multiple", 1))
    h, w = img.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    logits = model(F.pad(img, (0, pad_w, 0, pad_h)) if pad_h or pad_w else img)
    stride = (h + pad_h) / logits.shape[-2]
    return logits[..., : math.ceil(h / stride), : math.ceil(w / stride)]


@torch.no_grad()
def label_free_metrics(model: nn.Module, images: Iterable[Tensor], *, teacher: nn.Module | None = None,
                       threshold: float = 0.968, source_distribution: Sequence[float] | None = None,
                       flip: bool = True, device: torch.device | str = "cpu", reduce: bool = False,
                       autocast_dtype: torch.dtype | None = None) -> dict:
    """Every metric of the table over `images` (each 1×3×H×W, normalised), model and teacher in eval mode; both
    are returned to the mode they were in. `reduce`: sum the counts of every rank of the process group (each
    rank passes its share of the images; SND is each rank's own, averaged). The networks run under autocast in
    `autocast_dtype` (evaluation's), their logits in float before any softmax or argmax."""
    modes = [(m, m.training) for m in (model, teacher) if m is not None]
    acc = LabelFreeAccumulator(model.num_classes, threshold)

    def forward(m: nn.Module, img: Tensor) -> Tensor:
        with autocast(device, autocast_dtype):
            return padded_forward(m, img).float()

    try:
        for m, _ in modes:
            m.eval()
        for img in images:
            img = img.to(device)
            logits = forward(model, img)
            flipped = forward(model, img.flip(-1)) if flip else None
            acc.update(logits, flipped, forward(teacher, img) if teacher is not None else None)
    finally:
        for m, mode in modes:
            m.train(mode)
    if reduce:
        acc.all_reduce(device)
    return acc.result(source_distribution)


def source_distribution_of(root: str | Path, num_classes: int) -> list[float] | None:
    """The source label distribution from `ROOT/sample_class_stats.json` (written by `mfmseg prepare`), or None."""
    path = Path(root) / "sample_class_stats.json"
    if not path.is_file():
        return None
    try:
        return source_class_distribution(json.loads(path.read_text()), num_classes)
    except (OSError, ValueError):
        return None  # a monitor, not a requirement: training does not need it


def source_class_distribution(class_stats: Sequence[Mapping], num_classes: int) -> list[float] | None:
    """Pixel share per class from the source's rare-class-sampling statistics (`sample_class_stats.json`: one
    {class id: pixel count, "file": ...} per image); None when there are none."""
    counts = [0.0] * num_classes
    for row in class_stats:
        for key, value in row.items():
            if str(key).isdigit() and int(key) < num_classes:
                counts[int(key)] += float(value)
    total = sum(counts)
    return [c / total for c in counts] if total > 0 else None


__all__ = ["METRICS", "LabelFreeAccumulator", "class_kl", "label_free_metrics", "padded_forward",
           "source_class_distribution", "source_distribution_of", "snd", "vanished_classes"]
