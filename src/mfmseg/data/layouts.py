"""Where each dataset keeps its images and labels, and how their names pair up.

One small `Layout` per dataset (GTA5, SYNTHIA, Cityscapes, ACDC, Dark Zurich, a generic folder): it finds
(image, label) pairs of a split, names the train-id file written beside a label, and says exactly what is missing
when a folder does not look like the layout it claims to be.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from mfmseg.data.labels import CITYSCAPES_ID_TO_TRAIN_ID, SYNTHIA_ID_TO_TRAIN_ID, lookup_table
from mfmseg.errors import UserError, yaml_error_line

TRAIN_ID_SUFFIX = "_labelTrainIds.png"


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

    def splits(self, root: Path) -> list[str]:
        if not self.split_in_path:
            return ["train"]
        base = root / self.image_dir.split("{split}")[0]
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    def lookup_table(self, folder_map: dict | None = None) -> np.ndarray:
        return lookup_table(folder_map if folder_map is not None else self.id_map)

    @staticmethod
    def train_id_path(label: Path) -> Path:
        name = label.name
        stem = name[: -len("_labelIds.png")] if name.endswith("_labelIds.png") else name[: -len(".png")]
        return label.with_name(stem + TRAIN_ID_SUFFIX)

    def _dirs(self, root: Path, split: str) -> tuple[Path, Path]:
        return root / self.image_dir.format(split=split), root / self.label_dir.format(split=split)

    def find_pairs(self, root: Path, split: str, need_train_ids: bool) -> list[tuple[Path, Path | None]]:
        """Sorted (image, label) pairs; `label` is the train-id file when `need_train_ids`."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise UserError(f"dataset root {root} is a file, not a folder: give the folder that holds the dataset")
        if not root.is_dir():
            raise UserError(f"dataset root {root} does not exist")
        img_dir, lbl_dir = self._dirs(root, split)
        if not img_dir.is_dir():
            raise UserError(f"{self.kind} layout: missing folder {img_dir} (expected {self.image_dir.format(split=split)}"
                            f"/…{self.image_suffix} under {root})")
        images = sorted(p for p in img_dir.rglob(f"*{self.image_suffix}") if not p.name.endswith(".tmp.png"))
        if not images:
            raise UserError(f"{self.kind} layout: no *{self.image_suffix} images under {img_dir}")
        pairs = []
        for img in images:
            rel = img.relative_to(img_dir)
            label = lbl_dir / rel.parent / (img.name[: -len(self.image_suffix)] + self.label_suffix)
            if not lbl_dir.is_dir():
                label = None
            elif not label.is_file():
                raise UserError(f"{self.kind} layout: image {img} has no label {label}")
            if label is not None and need_train_ids:
                label = self.train_id_path(label)
                if not label.is_file():
                    raise UserError(f"{label} is missing: run `mfmseg prepare {self.kind} {root}` first")
            pairs.append((img, label))
        return pairs


LAYOUTS: dict[str, Layout] = {
    "gta": Layout("gta", "images", "labels", ".png", ".png", False, id_map=CITYSCAPES_ID_TO_TRAIN_ID),
    "synthia": Layout("synthia", "RGB", "GT/LABELS", ".png", ".png", False, id_map=SYNTHIA_ID_TO_TRAIN_ID),
    "cityscapes": Layout("cityscapes", "leftImg8bit/{split}", "gtFine/{split}", "_leftImg8bit.png",
                         "_gtFine_labelIds.png", True, id_map=CITYSCAPES_ID_TO_TRAIN_ID),
    "acdc": Layout("acdc", "rgb_anon/{split}", "gt/{split}", "_rgb_anon.png", "_gt_labelIds.png", True,
                   id_map=CITYSCAPES_ID_TO_TRAIN_ID),
    "darkzurich": Layout("darkzurich", "rgb_anon/{split}", "gt/{split}", "_rgb_anon.png", "_gt_labelIds.png", True,
                         stats_split="none", id_map=CITYSCAPES_ID_TO_TRAIN_ID),
    "folder": Layout("folder", "images", "labels", ".png", ".png", False),
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
