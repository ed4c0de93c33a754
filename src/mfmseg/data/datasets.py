"""Datasets over the real layouts (see `layouts.py`): training crops and full-resolution validation samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from mfmseg.config import DatasetConfig
from mfmseg.data.labels import IGNORE_INDEX, class_set_remap
from mfmseg.data.layouts import LAYOUTS
from mfmseg.data.transforms import normalize, random_crop, resize
from mfmseg.errors import UserError


# Modes whose conversion to 8-bit RGB is exact; 16-bit and float images would be clipped (a 16-bit grey image
# turns white), so they are refused rather than silently corrupted.
IMAGE_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
# A train-id label is one integer per pixel: 8-bit, or 16-bit as long as the values fit 0..255.
TRAIN_ID_MODES = {"L", "P", "I", "I;16", "I;16L", "I;16B"}


def open_image(path: Path, what: str) -> Image.Image:
    """The one place mfmseg opens an image or a label: loaded, and turned as a viewer displays it (EXIF
    orientation: a phone photo stored sideways with orientation 6 is read upright), so that datasets, prepare,
    predict and evaluate all see the picture the user sees, and a prediction lines up with it."""
    try:
        img = Image.open(path)
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
        return img
    except Exception as e:
        raise UserError(f"cannot read {what} {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None


def read_image(path: Path) -> Image.Image:
    """8-bit RGB; other depths are an error that names the file."""
    with open_image(path, "image") as img:
        if img.mode not in IMAGE_MODES:
            raise UserError(f"image {path} has mode {img.mode} (16-bit or float): mfmseg reads 8-bit RGB or "
                            f"greyscale images; convert it to 8 bits per channel first")
        return img.convert("RGB")


def read_train_ids(path: Path) -> np.ndarray:
    """A single-channel train-id map; a colour image or values beyond 255 are an error, never truncated."""
    with open_image(path, "label") as img:
        mode, arr = img.mode, np.asarray(img)
    if mode not in TRAIN_ID_MODES or arr.ndim != 2:
        raise UserError(f"label {path} must be a single-channel train-id PNG (mode L), got mode {mode} with shape "
                        f"{arr.shape}: convert the dataset's original labels again (`mfmseg prepare KIND ROOT "
                        f"--overwrite`, or delete it and run prepare)")
    if arr.dtype != np.uint8 and arr.size and int(arr.max()) > 255:
        raise UserError(f"label {path} holds values up to {int(arr.max())}: train ids are 0..254 and 255 (ignore)")
    return arr.astype(np.uint8)


def check_train_ids(label: np.ndarray, path: Path, num_classes: int) -> None:
    """Ids between num_classes and 254 would index past the classifier (an IndexError in the loss, naming no
    file) or be silently ignored by the evaluation."""
    bad = np.unique(label[(label >= num_classes) & (label != IGNORE_INDEX)])
    if bad.size:
        raise UserError(f"label {path} holds train ids {bad[:5].tolist()} but the model has {num_classes} classes "
                        f"(valid: 0..{num_classes - 1} and 255 = ignore): check the dataset's class map, then "
                        f"convert its labels again (`mfmseg prepare KIND ROOT --overwrite`)")


class SegmentationDataset(Dataset):
    """(image, train-id label) pairs of one split of one layout."""

    def __init__(self, cfg: DatasetConfig, mode: str, cat_max_ratio: float = 1.0, num_classes: int = 255,
                 classes: str = "cityscapes") -> None:
        if cfg.kind not in LAYOUTS:
            raise UserError(f"unknown dataset kind '{cfg.kind}'")
        self.cfg, self.mode, self.cat_max_ratio, self.num_classes = cfg, mode, cat_max_ratio, num_classes
        self.root = Path(cfg.root)
        native = LAYOUTS[cfg.kind].classes or classes
        try:  # train ids of the dataset's own class set -> the run's (None: the same set)
            self.remap = class_set_remap(native, classes)
        except ValueError as e:
            raise UserError(f"{cfg.kind} dataset at {cfg.root}: {e}; set data.classes={native} or use another "
                            f"dataset") from None
        pairs = LAYOUTS[cfg.kind].find_pairs(self.root, cfg.split, need_train_ids=mode != "images")
        # (image, train-id file); mode "images": the images alone, labels or not (label-free monitoring on target
        # training images)
        self.pairs = [(p.image, None if mode == "images" else p.label) for p in pairs]
        # a layout has a label for every image or no label folder at all (`find_pairs`): an unlabelled val split
        # gets the label-free metrics only (issue 19)
        self.has_labels = all(label is not None for _, label in self.pairs)
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
        if label is not None and self.remap is not None:
            label = self.remap[label]
        if label is not None and label.shape != (img.height, img.width):
            raise UserError(f"label {label_path} is {label.shape[1]}×{label.shape[0]} but image {img_path} is "
                            f"{img.width}×{img.height}")
        if label is not None:
            check_train_ids(label, label_path, self.num_classes)
        return img, label

    def train_sample(self, index: int, rng: np.random.Generator) -> dict:
        """Resize, crop (class-ratio constrained), flip, normalise."""
        img, label = self.load(index)
        if label is None:
            label = np.full((img.height, img.width), 255, np.uint8)
        img, label = resize(img, label, self.cfg.resize, self.cfg.keep_ratio, f"image {self.pairs[index][0]}")
        arr, label = random_crop(np.asarray(img), label, tuple(self.cfg.crop), rng, self.cat_max_ratio)
        if rng.random() < 0.5:
            arr, label = arr[:, ::-1], label[:, ::-1]
        return {"img": normalize(arr), "label": torch.from_numpy(label.astype(np.int64)), "name": self.name(index)}

    def __getitem__(self, index: int) -> dict:
        if self.mode == "train":
            return self.train_sample(index, np.random.default_rng(index))
        img, label = self.load(index)
        img, _ = resize(img, None, self.cfg.resize, self.cfg.keep_ratio, f"image {self.pairs[index][0]}")
        sample = {"img": normalize(np.asarray(img)), "name": self.name(index)}
        if label is not None:
            sample["label"] = torch.from_numpy(label.astype(np.int64))
        return sample


def build_dataset(cfg: DatasetConfig, mode: str, cat_max_ratio: float = 1.0,
                  num_classes: int = 255, classes: str = "cityscapes") -> SegmentationDataset:
    """`num_classes`: label ids from it to 254 are an error naming the file (255 = no check). `classes`: the run's
    class set (`data.classes`); labels of a finer set are mapped down to it. `images`: the resized images without
    labels (as `val`, `has_labels` False)."""
    if mode not in ("train", "val", "images"):
        raise ValueError(f"mode must be train, val or images, got {mode}")
    if not cfg.root:
        raise UserError(f"no root set for the {cfg.kind} dataset: set data.*.root")
    return SegmentationDataset(cfg, mode, cat_max_ratio, num_classes, classes)
