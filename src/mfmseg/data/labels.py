"""Label spaces: Cityscapes' 19 training classes, id -> train-id maps (Cityscapes/GTA5, SYNTHIA), palettes, and the
named class sets a run can train in (`data.classes`: Cityscapes' 19, IDD's 7 level-1 classes)."""

from __future__ import annotations

import functools

from dataclasses import dataclass

import numpy as np

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
# the colours of Cityscapes' void classes (unlabelled, ego vehicle, static, dynamic, ground, parking, rail track,
# guard rail, bridge, tunnel, caravan, trailer): a colour label in this palette maps them to ignore
CITYSCAPES_VOID_COLORS = (
    (0, 0, 0), (20, 20, 20), (111, 74, 0), (81, 0, 81), (250, 170, 160), (230, 150, 140), (180, 165, 180),
    (150, 100, 100), (150, 120, 90), (0, 0, 90), (0, 0, 110),
)
IGNORE_INDEX = 255
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

# Cityscapes label id -> train id (GTA5 uses the same ids).
CITYSCAPES_ID_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                             25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
SYNTHIA_ID_TO_TRAIN_ID = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 10, 10: 11, 17: 12, 8: 13,
                          19: 15, 12: 17, 11: 18}
SYNTHIA_16_CLASSES = tuple(sorted(SYNTHIA_ID_TO_TRAIN_ID.values()))  # train ids SYNTHIA has (no terrain/truck/train)
SYNTHIA_13_CLASSES = tuple(c for c in SYNTHIA_16_CLASSES if c not in (3, 4, 5))  # minus wall, fence, pole


def lookup_table(mapping: dict[int, int], size: int = 65536) -> np.ndarray:
    """A dense id -> train-id array; every id outside `mapping` maps to 255."""
    lut = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    for k, v in mapping.items():
        lut[k] = v
    return lut


TRAIN_ID_TO_CITYSCAPES_ID = np.array([k for k, _ in sorted(CITYSCAPES_ID_TO_TRAIN_ID.items(), key=lambda kv: kv[1])],
                                     dtype=np.uint8)


# ---- class sets: the label space a run trains and scores in (`data.classes`) ----------------------------------

@dataclass(frozen=True)
class ClassSet:
    """A named label space. `from_cityscapes[c]` is this set's train id for Cityscapes train id `c`: datasets
    labelled in Cityscapes' 19 classes (GTA5, SYNTHIA, Cityscapes, ACDC, KITTI) are mapped down to it when a run
    uses it. The map goes one way only: a coarse label cannot be split back into fine classes."""
    name: str
    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    from_cityscapes: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.names)


CITYSCAPES = ClassSet("cityscapes", CITYSCAPES_CLASSES, CITYSCAPES_PALETTE)
# IDD's level-1 classes (IDD-Lite's labels 0..6): road -> drivable; sidewalk, terrain -> non-drivable; person, rider
# -> living things; car ... bicycle -> vehicles; wall, fence, pole, light, sign -> roadside objects; building,
# vegetation -> far objects; sky -> sky.
IDD_LEVEL1 = ClassSet(
    "idd_level1",
    ("drivable", "non-drivable", "living things", "vehicles", "roadside objects", "far objects", "sky"),
    ((128, 64, 128), (244, 35, 232), (220, 20, 60), (0, 0, 142), (220, 220, 0), (70, 70, 70), (70, 130, 180)),
    from_cityscapes=(0, 1, 5, 4, 4, 4, 4, 4, 5, 1, 6, 2, 2, 3, 3, 3, 3, 3, 3),
)
CLASS_SETS: dict[str, ClassSet] = {s.name: s for s in (CITYSCAPES, IDD_LEVEL1)}


def class_set_remap(native: str, wanted: str) -> np.ndarray | None:
    """A 256-entry train-id lookup from a dataset's `native` class set to the run's `wanted` one (None: same set).
    Raises ValueError when the labels cannot be expressed in the wanted set."""
    if native == wanted:
        return None
    target = CLASS_SETS[wanted]
    if native != CITYSCAPES.name or target.from_cityscapes is None:
        raise ValueError(f"labels in the {native} classes cannot be mapped to the {wanted} classes "
                         f"(only Cityscapes' 19 classes map down to a coarser set)")
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    lut[: len(target.from_cityscapes)] = target.from_cityscapes
    return lut


def decode_color_label(rgb: np.ndarray, palette: tuple[tuple[int, int, int], ...],
                       void: tuple[tuple[int, int, int], ...] = ()) -> tuple[np.ndarray, float]:
    """Colour-coded label (H, W, 3) -> (train ids by exact colour, share of pixels whose colour is neither in
    `palette` nor in `void`). Colours outside the palette -> 255. Exact match only: an anti-aliased or
    JPEG-compressed colour label shows up as a large unknown share, which the caller refuses. One lookup for all
    colours: each pixel's 24-bit code r<<16|g<<8|b indexes `_color_table`."""
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    looked_up = _color_table(tuple(palette), tuple(void))[code]
    known = looked_up != _UNKNOWN_COLOR
    return np.where(known, looked_up, IGNORE_INDEX).astype(np.uint8), float(1 - known.mean()) if code.size else 0.0


_UNKNOWN_COLOR = 256  # a table value no train id takes


@functools.lru_cache(maxsize=4)
def _color_table(palette: tuple[tuple[int, int, int], ...], void: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    """24-bit colour code -> train id (palette; a repeated colour keeps its last id, a palette colour also in `void`
    is the palette's), IGNORE_INDEX (void) or _UNKNOWN_COLOR (neither): 32 MB, built once per process."""
    table = np.full(1 << 24, _UNKNOWN_COLOR, np.uint16)
    for r, g, b in void:
        table[(r << 16) | (g << 8) | b] = IGNORE_INDEX
    for train_id, (r, g, b) in enumerate(palette):
        table[(r << 16) | (g << 8) | b] = train_id
    return table
