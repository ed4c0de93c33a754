"""Datasets over the real layouts (see `layouts.py`): training crops and full-resolution validation samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mfmseg.config import DatasetConfig
from mfmseg.data.layouts import LAYOUTS
from mfmseg.data.transforms import normalize, random_crop, resize
from mfmseg.errors import UserError


def read_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as e:
        raise UserError(f"cannot read image {path}: {str(e).splitlines()[0]}") from None


def read_train_ids(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            arr = np.asarray(img)
    except Exception as e:
        raise UserError(f"cannot read label {path}: {str(e).splitlines()[0]}") from None
    if arr.ndim != 2:
        raise UserError(f"label {path} must be a single-channel train-id PNG, got shape {arr.shape}")
    return arr.astype(np.uint8)


class SegmentationDataset(Dataset):
    """(image, train-id label) pairs of one split of one layout."""

    def __init__(self, cfg: DatasetConfig, mode: str, cat_max_ratio: float = 1.0) -> None:
        if cfg.kind not in LAYOUTS:
            raise UserError(f"unknown dataset kind '{cfg.kind}'")
        self.cfg, self.mode, self.cat_max_ratio = cfg, mode, cat_max_ratio
        self.root = Path(cfg.root)
        self.pairs = LAYOUTS[cfg.kind].find_pairs(self.root, cfg.split, need_train_ids=True)
        if mode == "val" and any(label is None for _, label in self.pairs):
            raise UserError(f"{cfg.kind} split '{cfg.split}' under {self.root} has no labels to evaluate against")
        self.label_files = {str(label.relative_to(self.root)): i for i, (_, label) in enumerate(self.pairs)
                            if label is not None}

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        return str(self.pairs[index][0].relative_to(self.root))

    def load(self, index: int) -> tuple[Image.Image, np.ndarray | None]:
        img_path, label_path = self.pairs[index]
        img = read_image(img_path)
        label = read_train_ids(label_path) if label_path is not None else None
        if label is not None and label.shape != (img.height, img.width):
            raise UserError(f"label {label_path} is {label.shape[1]}×{label.shape[0]} but image {img_path} is "
                            f"{img.width}×{img.height}")
        return img, label

    def train_sample(self, index: int, rng: np.random.Generator) -> dict:
        """Resize, crop (class-ratio constrained), flip, normalise."""
        img, label = self.load(index)
        if label is None:
            label = np.full((img.height, img.width), 255, np.uint8)
        img, label = resize(img, label, self.cfg.resize, self.cfg.keep_ratio)
        arr, label = random_crop(np.asarray(img), label, tuple(self.cfg.crop), rng, self.cat_max_ratio)
        if rng.random() < 0.5:
            arr, label = arr[:, ::-1], label[:, ::-1]
        return {"img": normalize(arr), "label": torch.from_numpy(label.astype(np.int64)), "name": self.name(index)}

    def __getitem__(self, index: int) -> dict:
        if self.mode == "train":
            return self.train_sample(index, np.random.default_rng(index))
        img, label = self.load(index)
        img, _ = resize(img, None, self.cfg.resize, self.cfg.keep_ratio)
        return {"img": normalize(np.asarray(img)), "label": torch.from_numpy(label.astype(np.int64)),
                "name": self.name(index)}


def build_dataset(cfg: DatasetConfig, mode: str, cat_max_ratio: float = 1.0) -> SegmentationDataset:
    if mode not in ("train", "val"):
        raise ValueError(f"mode must be train or val, got {mode}")
    if not cfg.root:
        raise UserError(f"no root set for the {cfg.kind} dataset: set data.*.root")
    return SegmentationDataset(cfg, mode, cat_max_ratio)
