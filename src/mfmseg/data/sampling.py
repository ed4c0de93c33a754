"""Source/target batch streams for UDA training, with Rare Class Sampling (DAFormer).

Batch i of rank r is a pure function of (seed, r, i): every sample draws from its own
`np.random.default_rng([seed, r, i, j])`. Resuming at iteration i therefore reproduces the stream exactly, ranks
draw disjoint streams, and DataLoader workers (which take iterations round-robin) change nothing but speed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from mfmseg.config import DataConfig, RCSConfig
from mfmseg.data.datasets import SegmentationDataset, build_dataset
from mfmseg.errors import UserError


class RareClassSampler:
    """P(c) = softmax((1 - f_c) / T) over the classes of the source statistics; then a file with > min_pixels of c."""

    def __init__(self, root: Path, cfg: RCSConfig, dataset: SegmentationDataset) -> None:
        # the one file it reads: per-file pixel counts, summed here into the run's class set (a coarser
        # `data.classes` sums the classes it merges); prepare's two other files keep DAFormer's format complete
        stats_file = Path(root) / "sample_class_stats.json"
        if not stats_file.is_file():
            raise UserError(f"rare class sampling needs {stats_file}: run `mfmseg prepare` on {root} "
                            f"(or set data.rcs.enabled=false)")
        remap = dataset.remap
        per_file: list[tuple[str, dict[int, int]]] = []
        for s in json.loads(stats_file.read_text()):
            counts: dict[int, int] = {}
            for k, v in s.items():
                if k != "file":
                    c = int(remap[int(k)]) if remap is not None else int(k)
                    counts[c] = counts.get(c, 0) + int(v)
            per_file.append((s["file"], counts))
        totals: dict[int, int] = {}
        self.files: dict[int, list[int]] = {}
        for file, counts in per_file:
            for c, n in counts.items():
                totals[c] = totals.get(c, 0) + n
                if n > cfg.min_pixels and file in dataset.label_files:
                    self.files.setdefault(c, []).append(dataset.label_files[file])
        totals.pop(255, None)
        self.classes = sorted(c for c in totals if c in self.files)
        if not self.classes:
            raise UserError(f"no class in {stats_file} has an image with > {cfg.min_pixels} pixels: lower "
                            f"data.rcs.min_pixels")
        self.probs = class_probabilities({c: totals[c] for c in self.classes}, cfg.temperature)
        self.min_crop_pixels = cfg.min_pixels * cfg.min_crop_ratio

    def draw(self, rng: np.random.Generator) -> tuple[int, int]:
        """(class, dataset index)."""
        c = self.classes[int(rng.choice(len(self.classes), p=self.probs))]
        files = self.files[c]
        return c, files[int(rng.integers(len(files)))]


def class_probabilities(pixel_counts: dict[int, int], temperature: float) -> np.ndarray:
    """softmax((1 - f_c) / T) with f_c the class's share of all counted pixels, in the order of the dict."""
    counts = np.array(list(pixel_counts.values()), dtype=np.float64)
    freq = counts / counts.sum()
    logits = (1 - freq) / temperature
    p = np.exp(logits - logits.max())
    return p / p.sum()


class UDAStream(IterableDataset):
    """Endless batches {"src_img", "src_label", "tgt_img", "tgt_label"} from iteration `start_iter` on."""

    def __init__(self, source: SegmentationDataset, target: SegmentationDataset, rcs: RareClassSampler | None,
                 batch_size: int, seed: int, rank: int, start_iter: int) -> None:
        super().__init__()
        self.source, self.target, self.rcs = source, target, rcs
        self.batch_size, self.seed, self.rank, self.start_iter = batch_size, seed, rank, start_iter

    def source_sample(self, rng: np.random.Generator) -> dict:
        if self.rcs is None:
            return self.source.train_sample(int(rng.integers(len(self.source))), rng)
        c, index = self.rcs.draw(rng)
        for _ in range(10):  # re-crop until the crop shows enough of the rare class
            sample = self.source.train_sample(index, rng)
            if int((sample["label"] == c).sum()) > self.rcs.min_crop_pixels:
                break
        return sample

    def batch(self, iteration: int) -> dict:
        src, tgt = [], []
        for j in range(self.batch_size):
            rng = np.random.default_rng([self.seed, self.rank, iteration, j])
            src.append(self.source_sample(rng))
            tgt.append(self.target.train_sample(int(rng.integers(len(self.target))), rng))
        return {"src_img": torch.stack([s["img"] for s in src]), "src_label": torch.stack([s["label"] for s in src]),
                "tgt_img": torch.stack([t["img"] for t in tgt]), "tgt_label": torch.stack([t["label"] for t in tgt])}

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        it = self.start_iter + worker
        while True:
            yield self.batch(it)
            it += workers


def build_uda_loader(cfg: DataConfig, seed: int, rank: int = 0, world_size: int = 1,
                     start_iter: int = 0, num_classes: int = 255, pin_memory: bool = False,
                     classes: str = "cityscapes") -> Iterator[dict]:
    """An endless iterator of UDA batches, deterministic under (seed, rank) whatever the number of workers.
    `pin_memory`: the workers' batches land in page-locked memory, so that the trainer's `non_blocking` copies to
    the GPU are truly asynchronous (without workers there is no pinning thread: a pin would be one more copy on
    the training thread)."""
    source = build_dataset(cfg.source, "train", cat_max_ratio=cfg.cat_max_ratio, num_classes=num_classes,
                           classes=classes)
    target = build_dataset(cfg.target, "train", num_classes=num_classes, classes=classes)
    rcs = RareClassSampler(Path(cfg.source.root), cfg.rcs, source) if cfg.rcs.enabled else None
    stream = UDAStream(source, target, rcs, cfg.batch_size, seed, rank, start_iter)
    if cfg.num_workers <= 0:
        return iter(stream)
    loader = DataLoader(stream, batch_size=None, num_workers=cfg.num_workers, persistent_workers=False,
                        prefetch_factor=2, pin_memory=pin_memory)
    return iter(loader)
