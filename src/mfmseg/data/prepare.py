"""`mfmseg prepare`: train-id label PNGs and rare-class-sampling statistics, in DAFormer's format.

For every label file a `*_labelTrainIds.png` is written beside it (ids outside the dataset's mapping -> 255), and
the dataset root gets `sample_class_stats.json` (a list of {"<trainId>": pixels, ..., "file": path}),
`sample_class_stats_dict.json` ({path: {"<trainId>": pixels}}) and `samples_with_class.json`
({"<trainId>": [[path, pixels], ...]}), counted at full resolution over the training split; rare class sampling
reads only the first. Paths are relative to the dataset root (DAFormer stores cwd-relative paths; root-relative ones
survive moving the dataset).
Idempotent: existing train-id files are reused after a check (mode, ids the mapping writes), never converted again
unless `--overwrite`; all writes are atomic, and the temporary files of a prepare killed mid-write are removed by
the next one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from mfmseg.data.datasets import open_image, read_train_ids
from mfmseg.data.layouts import LAYOUTS, Layout, load_class_map
from mfmseg.data.parallel import map_jobs
from mfmseg.data.labels import CITYSCAPES_PALETTE, CITYSCAPES_VOID_COLORS, IGNORE_INDEX, decode_color_label
from mfmseg.errors import UserError
from mfmseg.files import atomic_write, atomic_write_text, temp_path


# One integer id per pixel: 8-bit grey, palette (GTA5: the index is the id) or 16-bit grey. A colour (RGB) label
# would otherwise be read as its red channel: empty statistics and all-ignore training labels.
LABEL_ID_MODES = {"1", "L", "P", "I", "I;16", "I;16L", "I;16B"}


def read_label_ids(path: Path, kind: str, channel: int | None = None) -> np.ndarray:
    """Raw label ids as the dataset stores them: one id per pixel, or (`channel`: the layout's `label_channel`) the
    ids in that RGB channel of a multi-channel 16-bit PNG, read with cv2 (BGR order) since PIL cannot."""
    if channel is not None:
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise UserError(f"cannot read label {path}")
        return raw[:, :, 2 - channel].astype(np.int64) if raw.ndim == 3 else raw.astype(np.int64)
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
            raise UserError(f"label {path} is a {img.mode} image: {kind} colour labels ({path.parent.name}/) are RGB "
                            f"PNGs in the Cityscapes palette")
        rgb = np.asarray(img.convert("RGB"))
    train_ids, unknown = decode_color_label(rgb, CITYSCAPES_PALETTE, CITYSCAPES_VOID_COLORS)
    if unknown > 0.05:
        raise UserError(f"label {path}: {unknown:.0%} of its pixels have colours outside the Cityscapes palette: "
                        f"{kind} colour labels must use its exact colours (lossless PNG, no anti-aliasing)")
    return train_ids


def _again(kind: str, root: Path) -> str:
    return f"delete it, or run `mfmseg prepare {kind} {root} --overwrite` to convert every label again"


def _reused(path: Path, kind: str, root: Path, lut: np.ndarray, color_label: bool) -> np.ndarray:
    """The train ids of a file an earlier run wrote, checked before they are trusted: a single-channel PNG holding
    only ids this dataset's mapping (or, for a colour-coded label, the palette) writes (a file from another mapping,
    or damaged, is named with what to do)."""
    train_ids = read_train_ids(path)
    valid = np.union1d(np.arange(len(CITYSCAPES_PALETTE)) if color_label else lut, [IGNORE_INDEX])
    bad = np.setdiff1d(np.unique(train_ids), valid)
    if bad.size:
        raise UserError(f"{path} (kept from an earlier prepare) holds train ids {bad[:5].tolist()} that the {kind} "
                        f"mapping never writes: {_again(kind, root)}")
    return train_ids


def _convert(job: tuple) -> dict:
    label_path, color_label, channel, out_path, kind, lut, rel, root, overwrite = job
    if out_path.exists() and not overwrite:
        train_ids = _reused(out_path, kind, root, lut, color_label)
    else:
        if color_label:  # the layout found it in its colour-label folder (`Pair.color_label`)
            train_ids = read_color_label(label_path, kind)
        else:
            ids = read_label_ids(label_path, kind, channel)
            if ids.max() >= len(lut):
                ids = np.where(ids < len(lut), ids, 0)
            train_ids = lut[ids]
        atomic_write(out_path, Image.fromarray(train_ids.astype(np.uint8), mode="L").save)
    counts = np.bincount(train_ids[train_ids != IGNORE_INDEX].ravel(), minlength=256)
    stats: dict = {str(c): int(n) for c, n in enumerate(counts) if n > 0}
    stats["file"] = rel
    return stats


# DAFormer's three files. Rare class sampling (data.sampling) and the label-free class distribution read only the
# first; the other two are written so that a prepared dataset has DAFormer's format complete.
STATS_FILES = ("sample_class_stats.json", "sample_class_stats_dict.json", "samples_with_class.json")


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1))


def _remove_leftovers(paths: list[Path]) -> None:
    """The temporary files (`x.tmp.png`, `x.tmp.json`) that a prepare killed mid-write (kill -9 skips the cleanup of
    `files.atomic_path`) left beside the files it writes: only those exact names, each a file prepare writes."""
    left = [t for t in map(temp_path, paths) if t.is_file()]
    for tmp in left:
        tmp.unlink()
    if left:
        print(f"removed {len(left)} temporary file(s) left by an interrupted prepare (e.g. {left[0]})")


def prepare_dataset(kind: str, root: str | os.PathLike, nproc: int = 4, class_map: str | None = None,
                    overwrite: bool = False) -> dict:
    """Convert every label of the dataset at `root` and write the statistics of its training split. Train-id files
    of an earlier run are reused after a check (`overwrite`: converted again)."""
    if kind not in LAYOUTS:
        raise UserError(f"unknown dataset kind '{kind}': one of {', '.join(LAYOUTS)}")
    root = Path(root)
    layout: Layout = LAYOUTS[kind]
    lut = layout.lookup_table(load_class_map(root, class_map) if kind == "folder" else None)
    jobs, stats_split = [], []
    for split in layout.splits(root):
        pairs = layout.find_pairs(root, split, need_train_ids=False)
        for pair in pairs:
            if pair.label is None:
                continue
            out = layout.train_id_path(pair.label)
            rel = str(out.relative_to(root))
            jobs.append((pair.label, pair.color_label, layout.label_channel, out, kind, lut, rel, root, overwrite))
            stats_split.append(split == layout.stats_split)
    if not jobs:
        raise UserError(f"no label files found under {root} for a {kind} dataset")
    _remove_leftovers([job[3] for job in jobs] + [root / name for name in STATS_FILES])
    results = map_jobs(_convert, jobs, nproc if len(jobs) > 16 else 1, desc=f"prepare {kind}")
    train_stats = [r for r, keep in zip(results, stats_split) if keep]
    by_file = {s["file"]: {k: v for k, v in s.items() if k != "file"} for s in train_stats}
    with_class: dict[str, list] = {}
    for s in train_stats:
        for k, v in s.items():
            if k != "file":
                with_class.setdefault(k, []).append([s["file"], v])
    with_class = {k: with_class[k] for k in sorted(with_class, key=int)}
    for name, obj in zip(STATS_FILES, (train_stats, by_file, with_class)):
        _write_json(root / name, obj)
    print(f"prepared {len(jobs)} labels of {root} ({len(train_stats)} in the statistics)")
    return {"labels": len(jobs), "stats": len(train_stats)}
