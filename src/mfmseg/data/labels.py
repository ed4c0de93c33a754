"""Label spaces: Cityscapes' 19 training classes, id -> train-id maps (Cityscapes/GTA5, SYNTHIA), palettes."""

from __future__ import annotations

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
