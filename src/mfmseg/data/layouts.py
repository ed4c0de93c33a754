"""Where each dataset keeps its images and labels, and how their names pair up.

One small `Layout` per dataset (GTA5, SYNTHIA, Cityscapes, ACDC, Dark Zurich, KITTI, IDD, a generic folder): it
finds (image, label) pairs of a split, names the train-id file written beside a label, and says exactly what is
missing when a folder does not look like the layout it claims to be. A layout also names the class set its labels
are in (`classes`), so that a run in a coarser set maps them down (`labels.class_set_remap`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import yaml

from mfmseg.data.labels import CITYSCAPES_ID_TO_TRAIN_ID, SYNTHIA_ID_TO_TRAIN_ID, lookup_table
from mfmseg.errors import UserError, yaml_error_line

TRAIN_ID_SUFFIX = "_labelTrainIds.png"


class Pair(NamedTuple):
    """An image and its label (None: an unlabelled split). `color_label`: the label as the dataset stores it is
    colour-coded in the Cityscapes palette (the layout's `color_label_dir`), so `prepare` decodes it by colour; when
    `label` is the train-id file written beside it, the flag still says what that file was converted from."""
    image: Path
    label: Path | None
    color_label: bool = False


@dataclass(frozen=True)
class Layout:
    kind: str
    image_dir: str  # relative to the root; "{split}" is replaced
    label_dir: str
    image_suffix: str
    label_suffix: str
    split_in_path: bool
    stats_split: str = "train"
    id_map: dict | None = None
    classes: str | None = "cityscapes"  # the class set of its train ids; None: the run's (folder datasets)
    # other (image suffix, label suffix) namings of the same dataset, tried in order when the first finds no image
    # (IDD-Lite's `_image.jpg`/`_label.png` beside full IDD's)
    variants: tuple[tuple[str, str], ...] = ()
    # a folder of colour-coded labels (Cityscapes palette) used when `label_dir` is absent (KITTI's semantic_rgb/)
    color_label_dir: str | None = None
    # label files are multi-channel 16-bit PNGs with the class id in this channel (RGB order; SYNTHIA: 0, the red
    # one, which PIL cannot read); None: one class id per pixel in a single-channel or palette image
    label_channel: int | None = None

    def splits(self, root: Path) -> list[str]:
        """The split folders that hold this layout's image folder (a stray folder beside them is not a split)."""
        if not self.split_in_path:
            return [self.stats_split]
        base = root / self.image_dir.split("{split}")[0]
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and self._dirs(root, p.name)[0].is_dir())

    def lookup_table(self, folder_map: dict | None = None) -> np.ndarray:
        return lookup_table(folder_map if folder_map is not None else self.id_map)

    @staticmethod
    def train_id_path(label: Path) -> Path:
        name = label.name
        stem = name[: -len("_labelIds.png")] if name.endswith("_labelIds.png") else name[: -len(".png")]
        return label.with_name(stem + TRAIN_ID_SUFFIX)

    def _dirs(self, root: Path, split: str) -> tuple[Path, Path, bool]:
        """The image folder, the label folder and whether that folder holds colour-coded labels."""
        labels = root / self.label_dir.format(split=split)
        if self.color_label_dir and not labels.is_dir():
            colours = root / self.color_label_dir.format(split=split)
            if colours.is_dir():
                return root / self.image_dir.format(split=split), colours, True
        return root / self.image_dir.format(split=split), labels, False

    def _images(self, img_dir: Path) -> tuple[list[Path], str, str]:
        for image_suffix, label_suffix in ((self.image_suffix, self.label_suffix), *self.variants):
            images = sorted(p for p in img_dir.rglob(f"*{image_suffix}") if not p.name.endswith(".tmp.png"))
            if images:
                return images, image_suffix, label_suffix
        return [], self.image_suffix, self.label_suffix

    def find_pairs(self, root: Path, split: str, need_train_ids: bool) -> list[Pair]:
        """Sorted (image, label, color_label) pairs; `label` is the train-id file when `need_train_ids`."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise UserError(f"dataset root {root} is a file, not a folder: give the folder that holds the dataset")
        if not root.is_dir():
            raise UserError(f"dataset root {root} does not exist")
        img_dir, lbl_dir, color = self._dirs(root, split)
        if not img_dir.is_dir():
            raise UserError(f"{self.kind} layout: missing folder {img_dir} (expected {self.image_dir.format(split=split)}"
                            f"/…{self.image_suffix} under {root})")
        images, image_suffix, label_suffix = self._images(img_dir)
        if not images:
            wanted = " or ".join(f"*{s}" for s, _ in ((self.image_suffix, ""), *self.variants))
            raise UserError(f"{self.kind} layout: no {wanted} images under {img_dir}")
        pairs = []
        for img in images:
            rel = img.relative_to(img_dir)
            label = lbl_dir / rel.parent / (img.name[: -len(image_suffix)] + label_suffix)
            if not lbl_dir.is_dir():
                label = None
            elif not label.is_file():
                raise UserError(f"{self.kind} layout: image {img} has no label {label}")
            if label is not None and need_train_ids:
                label = self.train_id_path(label)
                if not label.is_file():
                    raise UserError(f"{label} is missing: run `mfmseg prepare {self.kind} {root}` first")
            pairs.append(Pair(img, label, color and label is not None))
        return pairs


LAYOUTS: dict[str, Layout] = {
    "gta": Layout("gta", "images", "labels", ".png", ".png", False, id_map=CITYSCAPES_ID_TO_TRAIN_ID),
    "synthia": Layout("synthia", "RGB", "GT/LABELS", ".png", ".png", False, id_map=SYNTHIA_ID_TO_TRAIN_ID,
                      label_channel=0),
    "cityscapes": Layout("cityscapes", "leftImg8bit/{split}", "gtFine/{split}", "_leftImg8bit.png",
                         "_gtFine_labelIds.png", True, id_map=CITYSCAPES_ID_TO_TRAIN_ID),
    "acdc": Layout("acdc", "rgb_anon/{split}", "gt/{split}", "_rgb_anon.png", "_gt_labelIds.png", True,
                   id_map=CITYSCAPES_ID_TO_TRAIN_ID),
    "darkzurich": Layout("darkzurich", "rgb_anon/{split}", "gt/{split}", "_rgb_anon.png", "_gt_labelIds.png", True,
                         stats_split="none", id_map=CITYSCAPES_ID_TO_TRAIN_ID),
    # KITTI semantics as distributed (data_semantics.zip): training/ and testing/, each with image_2/; labels in
    # semantic/ (Cityscapes label ids) or, when only those are at hand, semantic_rgb/ (Cityscapes colours)
    "kitti": Layout("kitti", "{split}/image_2", "{split}/semantic", ".png", ".png", True, stats_split="training",
                    id_map=CITYSCAPES_ID_TO_TRAIN_ID, color_label_dir="{split}/semantic_rgb"),
    # IDD's level-1 classes: IDD-Lite (`<id>_image.jpg`, `<id>_label.png` with ids 0..6) or full IDD with the
    # level-1 label files its toolkit writes (`_leftImg8bit.png`, `_gtFine_labellevel1Ids.png`)
    "idd": Layout("idd", "leftImg8bit/{split}", "gtFine/{split}", "_image.jpg", "_label.png", True,
                  id_map={i: i for i in range(7)}, classes="idd_level1",
                  variants=(("_leftImg8bit.png", "_gtFine_labellevel1Ids.png"),)),
    "folder": Layout("folder", "images", "labels", ".png", ".png", False, classes=None),
}
DATASET_KINDS: tuple[str, ...] = tuple(LAYOUTS)  # the one list: config's data.*.kind and `mfmseg prepare` read it


def load_class_map(root: Path, path: str | None = None) -> dict[int, int]:
    """A folder dataset's YAML class map: `names: [...]`, `id_to_train_id: {id: train_id}`, optional `colors`."""
    file = Path(path) if path else Path(root) / "classes.yaml"
    if not file.is_file():
        raise UserError(f"folder dataset: class map {file} not found (YAML with names and id_to_train_id)")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"cannot parse {file}: {yaml_error_line(e)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("id_to_train_id"), dict):
        raise UserError(f"{file}: needs an 'id_to_train_id' mapping (label value -> train id)")
    try:
        mapping = {int(k): int(v) for k, v in data["id_to_train_id"].items()}
    except (TypeError, ValueError):
        raise UserError(f"{file}: id_to_train_id must map integer label values to integer train ids, got "
                        f"{dict(list(data['id_to_train_id'].items())[:3])}") from None
    bad = [v for v in mapping.values() if not 0 <= v < 255]
    if bad:
        raise UserError(f"{file}: train ids must be in 0..254, got {bad[:3]}")
    return mapping
