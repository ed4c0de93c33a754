"""Segment images: files, folders (recursive) or globs -> colour / overlay / trainId / Cityscapes labelId PNGs."""

from __future__ import annotations

import functools
import glob
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from tqdm import tqdm

from mfmseg.config import Config
from mfmseg.data.datasets import read_image
from mfmseg.data.labels import TRAIN_ID_TO_CITYSCAPES_ID
from mfmseg.data.transforms import normalize, target_size
from mfmseg.engine.evaluation.evaluate import class_palette
from mfmseg.engine.evaluation.inference import infer_labels
from mfmseg.engine.evaluation.report import colorize
from mfmseg.engine.runtime.numerics import autocast, eval_autocast_dtype
from mfmseg.errors import UserError
from mfmseg.files import atomic_write, check_output_dir

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
FORMATS = ("color", "overlay", "trainid", "labelid")
MARK = ("Software", "mfmseg predict")  # a PNG text chunk on every prediction (`written_by_predict`)


def collect_inputs(inputs: list[str]) -> list[tuple[Path, Path]]:
    """(image, path relative to its input root): folders keep their inner structure in the output."""
    found = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += [(f, f.relative_to(p)) for f in sorted(p.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
        elif p.is_file():
            found.append((p, Path(p.name)))
        else:
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise UserError(f"input not found: {item}")
            found += [(Path(m), Path(Path(m).name)) for m in matches if Path(m).suffix.lower() in IMAGE_SUFFIXES]
    if not found:
        raise UserError(f"no images among the inputs {inputs}")
    return found


def output_names(found: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """(image, output path relative to --out): `x.jpg` and `x.png` would both become `x.png` and overwrite each
    other, so colliding names keep their suffix (`x_jpg.png`, `x_png.png`); the same file given twice counts once.
    `os.path.realpath` rather than `Path.resolve`: a symlink loop stays itself (reading it then fails, naming it)
    instead of raising RuntimeError here."""
    unique = list({os.path.realpath(path): (path, rel) for path, rel in found}.values())
    plain = [rel.with_suffix(".png") for _, rel in unique]
    counts: dict[Path, int] = {}
    for out in plain:
        counts[out] = counts.get(out, 0) + 1
    result, taken = [], {}
    for (path, rel), out in zip(unique, plain):
        if counts[out] > 1:
            out = rel.with_name(f"{rel.stem}_{rel.suffix.lstrip('.').lower()}.png")
        if out in taken:
            raise UserError(f"inputs {taken[out]} and {path} would both be written to {out}: predict them "
                            f"into separate --out folders")
        taken[out] = path
        result.append((path, out))
    return result


def written_by_predict(path: Path) -> bool:
    """Whether `path` is a prediction PNG (it carries `MARK`): the one kind of existing file predict replaces."""
    try:
        with Image.open(path) as img:
            return img.format == "PNG" and img.info.get(MARK[0]) == MARK[1]
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def check_outputs(jobs: list[tuple[Path, Path]], out_dir: Path) -> None:
    """Before any work: refuse an output that would overwrite one of the inputs (`--out` = the input folder with
    PNG inputs) or any existing file predict did not write; an earlier prediction may be replaced."""
    inputs = {os.path.realpath(path): path for path, _ in jobs}
    for _, rel in jobs:
        out = out_dir / rel
        if os.path.realpath(out) in inputs:
            raise UserError(f"predict would write {out} over its input {inputs[os.path.realpath(out)]}: choose an "
                            f"--out folder apart from the inputs")
        if os.path.lexists(out) and not (out.is_file() and written_by_predict(out)):
            raise UserError(f"{out} exists and predict did not write it: choose another --out folder, or move it "
                            f"away")


def render(pred: np.ndarray, image: Image.Image, fmt: str, palette: list[list[int]] | None = None) -> Image.Image:
    """`palette`: the class set's colours (`evaluate.class_palette`); None: Cityscapes'."""
    if fmt == "trainid":
        return Image.fromarray(pred.astype(np.uint8), mode="L")
    if fmt == "labelid":
        return Image.fromarray(TRAIN_ID_TO_CITYSCAPES_ID[np.minimum(pred, 18)].astype(np.uint8), mode="L")
    color = colorize(pred) if palette is None else colorize(pred, palette)
    if fmt == "color":
        return Image.fromarray(color)
    mixed = np.asarray(image).astype(np.uint16)  # (a + b) // 2 = int(0.5·a + 0.5·b) without float copies
    mixed += color
    mixed //= 2
    return Image.fromarray(mixed.astype(np.uint8))


def _load(path: Path, cfg: Config) -> tuple[Image.Image, tuple[int, int]]:
    """The image as displayed and the (W, H) the network sees it at; a UserError naming the file if unreadable."""
    image = read_image(path)
    return image, target_size(image.width, image.height, cfg.data.val.resize, cfg.data.val.keep_ratio,
                              f"image {path}")


def _unreadable(failed: list[str], total: int, written: int, out_dir: Path) -> UserError:
    """One error for the images that could not be read: itself when alone, else a count after the list."""
    if len(failed) == 1:
        return UserError(f"{failed[0]} (wrote {written} of {total} predictions to {out_dir})")
    for message in failed:
        tqdm.write(f"  skipped: {message}", file=sys.stderr)
    return UserError(f"{len(failed)} of {total} images could not be read (listed above); wrote {written} "
                     f"predictions to {out_dir}")


@torch.no_grad()
def predict_images(model: torch.nn.Module, cfg: Config, inputs: list[str], out_dir: str | Path, fmt: str = "color",
                   device: str | torch.device = "cpu") -> list[Path]:
    """One output PNG per input image at the input's resolution; the network sees it at `data.val.resize`.

    The network runs under autocast in `eval.amp`'s dtype (`numerics.eval_autocast_dtype`). A batch is not stopped
    by one bad image: every readable image is written, and the unreadable ones are listed
    at the end as a UserError (exit 2). A write failure (full disk) stops at once. An --out folder this call
    created and wrote nothing into is removed, so a failed run leaves no empty folder behind. An output that would
    overwrite an input or a file predict did not write is refused before any image is read (`check_outputs`)."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt} is not one of {', '.join(FORMATS)}")
    if fmt == "labelid" and cfg.data.classes != "cityscapes":
        raise UserError(f"--format labelid writes Cityscapes label ids; this model predicts the {cfg.data.classes} "
                        f"classes: use --format trainid")
    palette = class_palette(cfg.model.num_classes, cfg.data.classes)
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    check_output_dir(out_dir)
    jobs = output_names(collect_inputs(inputs))
    check_outputs(jobs, out_dir)
    info = PngInfo()
    info.add_text(*MARK)
    amp = autocast(device, eval_autocast_dtype(cfg, device))
    written: list[Path] = []
    failed: list[str] = []
    try:
        for path, rel in tqdm(jobs, desc="predict", unit="img"):
            try:
                image, size = _load(path, cfg)
            except UserError as e:
                failed.append(str(e))
                continue
            x = normalize(np.asarray(image.resize(size, Image.BILINEAR)))[None].to(device)
            window = cfg.eval.window
            mode = ("slide" if cfg.eval.mode == "slide" or size[1] > 2 * window[0] or size[0] > 2 * window[1]
                    else "whole")
            with amp:
                pred = infer_labels(model, x, (image.height, image.width), mode, window, cfg.eval.stride,
                                    cfg.eval.batch_size)[0].cpu().numpy()
            picture = render(pred, image, fmt, palette)
            written.append(atomic_write(out_dir / rel, functools.partial(picture.save, pnginfo=info)))
    finally:
        if created and out_dir.is_dir() and not any(p.is_file() for p in out_dir.rglob("*")):
            shutil.rmtree(out_dir, ignore_errors=True)
    if failed:
        raise _unreadable(failed, len(jobs), len(written), out_dir)
    return written
