"""`mfmseg prepare`: train-id label PNGs and rare-class-sampling statistics, in DAFormer's format.

For every label file a `*_labelTrainIds.png` is written beside it (ids outside the dataset's mapping -> 255), and
the dataset root gets `sample_class_stats.json` (a list of {"<trainId>": pixels, ..., "file": path}),
`sample_class_stats_dict.json` ({path: {"<trainId>": pixels}}) and `samples_with_class.json`
({"<trainId>": [[path, pixels], ...]}), counted at full resolution over the training split. Paths are relative
to the dataset root (DAFormer stores cwd-relative paths; root-relative ones survive moving the dataset).
Idempotent: existing train-id files are reused, never converted again; all writes are atomic.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from mfmseg.data.datasets import open_image
from mfmseg.data.layouts import LAYOUTS, Layout, load_class_map
from mfmseg.data.parallel import map_jobs
from mfmseg.data.labels import CITYSCAPES_PALETTE, CITYSCAPES_VOID_COLORS, IGNORE_INDEX, decode_color_label
from mfmseg.errors import UserError
from mfmseg.files import atomic_write, atomic_write_text


# One integer id per pixel: 8-bit grey, palette (GTA5: the index is the id) or 16-bit grey. A colour (RGB) label
# would otherwise be read as its red channel: empty statistics and all-ignore training labels.
LABEL_ID_MODES = {"1", "L", "P", "I", "I;16", "I;16L", "I;16B"}


def read_label_ids(path: Path, kind: str) -> np.ndarray:
    """Raw label ids as the dataset stores them (SYNTHIA: 16-bit, class id in PIL's first / cv2's last channel)."""
    if kind == "synthia":
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise UserError(f"cannot read label {path}")
        return raw[:, :, 2].astype(np.int64) if raw.ndim == 3 else raw.astype(np.int64)
    with open_image(path, "label") as img:
        mode, arr = img.mode, np.asarray(img)
    if mode not in LABEL_ID_MODES or arr.ndim != 2:
        raise UserError(f"label {path} is a {mode} image: {kind} labels must hold one class id per pixel (a "
                        f"single-channel 8/16-bit or palette PNG); convert colour-coded labels to ids first")
    return arr.astype(np.int64)


def read_color_label(path: Path, kind: str) -> np.ndarray:
    """Train ids of a colour-coded label in the Cityscapes palette (KITTI's semantic_rgb/). Exact colours only;
    a file where most pixels match no palette colour is not a colour label of this palette (or was compressed)."""
    with open_image(path, "label") as img:
        if img.mode not in ("RGB", "RGBA"):
            raise UserError(f"label {path} is a {img.mode} image: {kind} colour labels (semantic_rgb/) are RGB "
                            f"PNGs in the Cityscapes palette")
        rgb = np.asarray(img.convert("RGB"))
    train_ids, unknown = decode_color_label(rgb, CITYSCAPES_PALETTE, CITYSCAPES_VOID_COLORS)
    if unknown > 0.05:
        raise UserError(f"label {path}: {unknown:.0%} of its pixels have colours outside the Cityscapes palette: "
                        f"{kind} colour labels must use its exact colours (lossless PNG, no anti-aliasing)")
    return train_ids


def _convert(job: tuple) -> dict:
    label_path, out_path, kind, lut, rel = job
    if out_path.exists():
        train_ids = np.asarray(Image.open(out_path))
    else:
        layout = LAYOUTS[kind]
        colour_dir = layout.color_label_dir and label_path.parent.name == Path(layout.color_label_dir).name
        if colour_dir:
            train_ids = read_color_label(label_path, kind)
        else:
            ids = read_label_ids(label_path, kind)
            if ids.max() >= len(lut):
                ids = np.where(ids < len(lut), ids, 0)
            train_ids = lut[ids]
        atomic_write(out_path, Image.fromarray(train_ids.astype(np.uint8), mode="L").save)
    counts = np.bincount(train_ids[train_ids != IGNORE_INDEX].ravel(), minlength=256)
    stats: dict = {str(c): int(n) for c, n in enumerate(counts) if n > 0}
    stats["file"] = rel
    return stats


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1))


def prepare_dataset(kind: str, root: str | os.PathLike, nproc: int = 4, class_map: str | None = None) -> dict:
    """Convert every label of the dataset at `root` and write the statistics of its training split."""
    if kind not in LAYOUTS:
        raise UserError(f"unknown dataset kind '{kind}': one of {', '.join(LAYOUTS)}")
    root = Path(root)
    layout: Layout = LAYOUTS[kind]
    lut = layout.lookup_table(load_class_map(root, class_map) if kind == "folder" else None)
    jobs, stats_split = [], []
    for split in layout.splits(root):
        pairs = layout.find_pairs(root, split, need_train_ids=False)
        for _, label in pairs:
            if label is None:
                continue
            out = layout.train_id_path(label)
            rel = str(out.relative_to(root))
            jobs.append((label, out, kind, lut, rel))
            stats_split.append(split == layout.stats_split)
    if not jobs:
        raise UserError(f"no label files found under {root} for a {kind} dataset")
    results = map_jobs(_convert, jobs, nproc if len(jobs) > 16 else 1, desc=f"prepare {kind}")
    train_stats = [r for r, keep in zip(results, stats_split) if keep]
    by_file = {s["file"]: {k: v for k, v in s.items() if k != "file"} for s in train_stats}
    with_class: dict[str, list] = {}
    for s in train_stats:
        for k, v in s.items():
            if k != "file":
                with_class.setdefault(k, []).append([s["file"], v])
    with_class = {k: with_class[k] for k in sorted(with_class, key=int)}
    _write_json(root / "sample_class_stats.json", train_stats)
    _write_json(root / "sample_class_stats_dict.json", by_file)
    _write_json(root / "samples_with_class.json", with_class)
    print(f"prepared {len(jobs)} labels of {root} ({len(train_stats)} in the statistics)")
    return {"labels": len(jobs), "stats": len(train_stats)}
