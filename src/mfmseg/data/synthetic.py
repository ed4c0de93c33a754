"""The built-in synthetic UDA benchmark: procedural street scenes in two domains, written in the real layouts.

Both domains draw the same kind of scene (sky over a horizon, a road in perspective with sidewalks, buildings
with windows, vegetation, terrain, walls, fences, poles carrying signs and lights, cars, trucks, buses, persons,
riders on bicycles and motorcycles, painted far-to-near so that near objects occlude far ones) in the Cityscapes
19-class label space. The gap is real and class-conditional:

- "game" source (GTA layout): flat, saturated class colours, clean edges, uniform light;
- "real" target (Cityscapes layout): every class gets its own hue/brightness shift (so no global colour
  normalisation maps one domain to the other), textured surfaces, an illumination gradient, sensor noise and
  blur; content shifts too (bigger and more frequent cars and persons, fewer buildings, more vegetation).

Structure that both domains share (windows on buildings, wheels under cars, the road's lane marks, the layout)
is what adaptation can exploit. Each image depends only on (seed, domain, index): byte-identical under a seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from mfmseg.data.labels import CITYSCAPES_PALETTE, TRAIN_ID_TO_CITYSCAPES_ID
from mfmseg.data.parallel import map_jobs
from mfmseg.errors import UserError
from mfmseg.files import atomic_write, check_output_dir

ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEG, TERRAIN, SKY, PERSON, RIDER, CAR, TRUCK, BUS, \
    TRAIN, MOTO, BIKE = range(19)

SOURCE_COLOURS = np.array([
    (128, 64, 128), (232, 35, 244), (90, 90, 90), (102, 102, 170), (190, 153, 120), (160, 160, 160),
    (250, 170, 30), (230, 230, 0), (60, 160, 40), (150, 240, 150), (80, 150, 230), (230, 20, 60), (255, 40, 0),
    (20, 20, 180), (10, 60, 90), (0, 90, 130), (0, 80, 100), (60, 40, 230), (150, 20, 50),
], dtype=np.float32)
# Class-conditional shift of the target: (hue rotation in degrees, brightness factor). Chosen so that target
# colours of some classes move toward the source colours of others (e.g. road ↔ sidewalk-like tints).
TARGET_SHIFT = [(35, 0.85), (-60, 0.7), (20, 0.8), (90, 0.9), (-40, 1.1), (0, 0.6), (-30, 0.9), (60, 0.8),
                (50, 0.55), (-70, 0.7), (-25, 0.9), (120, 0.8), (70, 0.9), (150, 1.1), (80, 0.8), (-90, 0.9),
                (0, 1.0), (100, 0.8), (-120, 1.0)]


@dataclass(frozen=True)
class DomainStyle:
    name: str
    car_scale: float
    person_rate: float
    building_rate: float
    veg_rate: float


SOURCE = DomainStyle("source", car_scale=1.0, person_rate=1.0, building_rate=1.0, veg_rate=0.6)
TARGET = DomainStyle("target", car_scale=1.35, person_rate=1.8, building_rate=0.7, veg_rate=1.2)


def _rotate_hue(rgb: np.ndarray, degrees: float, brightness: float) -> np.ndarray:
    """Rotate colours about the grey axis (a hue rotation that keeps luminance), then scale brightness."""
    theta = np.deg2rad(degrees)
    k = np.ones(3) / np.sqrt(3)
    cos, sin = np.cos(theta), np.sin(theta)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rot = cos * np.eye(3) + sin * kx + (1 - cos) * np.outer(k, k)
    return np.clip(rgb @ rot.T * brightness, 0, 255)


TARGET_COLOURS = np.stack([_rotate_hue(SOURCE_COLOURS[c], *TARGET_SHIFT[c]) for c in range(19)]).astype(np.float32)


class Canvas:
    """A label map painted with simple shapes; later shapes occlude earlier ones."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.label = np.full((h, w), SKY, np.uint8)
        self.yy, self.xx = np.mgrid[0:h, 0:w]
        self.detail = np.zeros((h, w), np.float32)  # shared structure: windows, wheels, lane marks (darken/lighten)

    def rect(self, cls: int, y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
        y0, y1 = int(max(0, y0)), int(min(self.h, y1))
        x0, x1 = int(max(0, x0)), int(min(self.w, x1))
        m = np.zeros((self.h, self.w), bool)
        if y1 > y0 and x1 > x0:
            m[y0:y1, x0:x1] = True
            self.label[m] = cls
            self.detail[m] = 0
        return m

    def ellipse(self, cls: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
        m = ((self.yy - cy) / max(ry, 0.5)) ** 2 + ((self.xx - cx) / max(rx, 0.5)) ** 2 <= 1
        self.label[m] = cls
        self.detail[m] = 0
        return m


def _scene(rng: np.random.Generator, h: int, w: int, style: DomainStyle) -> Canvas:
    c = Canvas(h, w)
    horizon = h * rng.uniform(0.38, 0.5)
    vx = w * rng.uniform(0.35, 0.65)
    half_bottom = w * rng.uniform(0.3, 0.45)
    rows = np.arange(h)
    depth = np.clip((rows - horizon) / (h - horizon), 0, 1)  # 0 at horizon, 1 at the bottom
    # far background: buildings with windows, vegetation, terrain below the horizon
    c.rect(TERRAIN, horizon, h, 0, w)
    x = -rng.uniform(0, w * 0.1)
    while x < w:
        bw = w * rng.uniform(0.06, 0.18)
        if rng.random() < 0.75 * style.building_rate:
            top = horizon - h * rng.uniform(0.1, 0.35)
            m = c.rect(BUILDING, top, horizon + h * 0.04, x, x + bw)
            win = m & ((c.yy // max(2, h // 40)) % 2 == 0) & ((c.xx // max(2, w // 60)) % 3 == 0)
            c.detail[win] = -0.35
        elif rng.random() < 0.8 * style.veg_rate:
            c.ellipse(VEG, horizon - h * rng.uniform(0.02, 0.12), x + bw / 2, h * rng.uniform(0.06, 0.15), bw / 1.5)
        x += bw
    # road and sidewalks in perspective (per-row spans)
    half = half_bottom * depth
    side = half * rng.uniform(0.25, 0.45)
    for y in range(int(np.ceil(horizon)), h):
        hw, sw = half[y], side[y]
        c.label[y, int(max(0, vx - hw - sw)):int(max(0, vx - hw))] = SIDEWALK
        c.label[y, int(min(w, vx + hw)):int(min(w, vx + hw + sw))] = SIDEWALK
        c.label[y, int(max(0, vx - hw)):int(min(w, vx + hw))] = ROAD
        c.detail[y, :] = 0
        if (y // max(2, h // 30)) % 2 == 0:  # dashed centre lane mark
            c.detail[y, int(vx - max(1, hw * 0.03)):int(vx + max(1, hw * 0.03)) + 1] = 0.45
    # walls / fences / vegetation behind the sidewalks
    for sgn in (-1, 1):
        y0 = horizon + (h - horizon) * rng.uniform(0.0, 0.1)
        xs = vx + sgn * (half_bottom * 1.3)
        if rng.random() < 0.5:
            cls = WALL if rng.random() < 0.5 else FENCE
            m = c.rect(cls, y0 - h * 0.06, y0 + h * 0.12, min(xs, vx + sgn * half_bottom * 0.5),
                       max(xs, vx + sgn * half_bottom * 0.5))
            if cls == FENCE:
                c.detail[m & (c.xx % 4 == 0)] = -0.4
        if rng.random() < 0.6 * style.veg_rate:
            c.ellipse(VEG, y0 - h * 0.12, vx + sgn * w * rng.uniform(0.35, 0.5), h * 0.15, w * 0.1)
    objects = []  # (depth, kind) painted far-to-near
    for _ in range(rng.poisson(3 * style.car_scale)):
        objects.append((rng.uniform(0.05, 1), "car"))
    for _ in range(rng.poisson(0.4)):
        objects.append((rng.uniform(0.05, 0.8), "truck" if rng.random() < 0.6 else "bus"))
    for _ in range(rng.poisson(2.2 * style.person_rate)):
        objects.append((rng.uniform(0.05, 1), "person"))
    for _ in range(rng.poisson(0.8)):
        objects.append((rng.uniform(0.1, 1), "rider"))
    for _ in range(rng.poisson(2.0)):
        objects.append((rng.uniform(0.0, 0.9), "pole"))
    for d, kind in sorted(objects):
        y = horizon + d * (h - horizon)
        s = (0.08 + 0.92 * d) * h  # object scale grows toward the bottom
        if kind in ("car", "truck", "bus"):
            xc = vx + rng.uniform(-0.8, 0.8) * half_bottom * d
            size = {"car": 0.22, "truck": 0.36, "bus": 0.4}[kind] * (style.car_scale if kind == "car" else 1)
            bw, bh = s * size * 1.6, s * size
            cls = {"car": CAR, "truck": TRUCK, "bus": BUS}[kind]
            m = c.rect(cls, y - bh, y, xc - bw / 2, xc + bw / 2)
            c.detail[m & (c.yy < y - bh * 0.55) & (c.yy > y - bh * 0.9)] = -0.4  # windows
            for wx in (xc - bw * 0.3, xc + bw * 0.3):  # wheels
                wm = ((c.yy - y) / max(bh * 0.18, 0.5)) ** 2 + ((c.xx - wx) / max(bw * 0.1, 0.5)) ** 2 <= 1
                c.label[wm] = cls
                c.detail[wm] = -0.6
        elif kind == "person":
            sgn = -1 if rng.random() < 0.5 else 1
            xc = vx + sgn * (half_bottom * d * rng.uniform(1.02, 1.3))
            ph = s * 0.45
            c.ellipse(PERSON, y - ph * 0.45, xc, ph * 0.42, ph * 0.13)
            c.ellipse(PERSON, y - ph * 0.92, xc, ph * 0.09, ph * 0.08)
        elif kind == "rider":
            xc = vx + rng.uniform(-0.7, 0.7) * half_bottom * d
            ph = s * 0.4
            vehicle = BIKE if rng.random() < 0.6 else MOTO
            c.rect(vehicle, y - ph * 0.35, y, xc - ph * 0.35, xc + ph * 0.35)
            for wx in (xc - ph * 0.25, xc + ph * 0.25):
                wm = ((c.yy - y + ph * 0.12) / max(ph * 0.12, 0.5)) ** 2 + ((c.xx - wx) / max(ph * 0.12, .5)) ** 2
                c.detail[(wm <= 1) & (c.label == vehicle)] = -0.5
            c.ellipse(RIDER, y - ph * 0.6, xc, ph * 0.3, ph * 0.12)
            c.ellipse(RIDER, y - ph * 0.95, xc, ph * 0.08, ph * 0.07)
        else:  # pole with a sign or a traffic light
            sgn = -1 if rng.random() < 0.5 else 1
            xc = vx + sgn * half_bottom * d * rng.uniform(1.05, 1.4)
            ph = s * 0.9
            c.rect(POLE, y - ph, y, xc - max(1, s * 0.015), xc + max(1, s * 0.015))
            if rng.random() < 0.5:
                c.rect(SIGN, y - ph, y - ph + s * 0.12, xc - s * 0.07, xc + s * 0.07)
            else:
                m = c.rect(LIGHT, y - ph, y - ph + s * 0.2, xc - s * 0.035, xc + s * 0.035)
                c.detail[m & ((c.yy - int(y - ph)) % max(2, int(s * 0.07)) < max(1, int(s * 0.03)))] = 0.4
    return c


def _render(c: Canvas, rng: np.random.Generator, style: DomainStyle) -> np.ndarray:
    """Colours from the domain's palette, the shared detail, and (target) texture, light, noise and blur."""
    h, w = c.label.shape
    if style.name == "source":
        jitter = rng.uniform(-12, 12, size=(19, 3)).astype(np.float32)
        img = SOURCE_COLOURS[c.label] + jitter[c.label]
        img *= (1 + 0.6 * c.detail)[..., None]
        return np.clip(img, 0, 255).astype(np.uint8)
    jitter = rng.normal(0, 18, size=(19, 3)).astype(np.float32)
    img = TARGET_COLOURS[c.label] + jitter[c.label]
    texture = rng.normal(0, 1, size=(h // 4 + 1, w // 4 + 1)).astype(np.float32)
    texture = np.kron(texture, np.ones((4, 4), np.float32))[:h, :w]
    img *= (1 + 0.12 * texture + 0.6 * c.detail)[..., None]
    light = 1 + rng.uniform(-0.35, 0.35) * (np.linspace(-1, 1, w)[None, :]) + rng.uniform(-0.2, 0.1)
    img *= light[..., None]
    img += rng.normal(0, 8, size=img.shape)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return np.asarray(pil.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.4, 1.2)))))


def make_sample(seed: int, domain: str, index: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 H×W×3, train ids uint8 H×W) for one image, a pure function of its arguments."""
    style = SOURCE if domain == "source" else TARGET
    rng = np.random.default_rng([seed, 0 if domain == "source" else 1, index])
    canvas = _scene(rng, size[0], size[1], style)
    return _render(canvas, rng, style), canvas.label


def _atomic_png(img: Image.Image, path: Path) -> None:
    atomic_write(path, lambda tmp: img.save(tmp, optimize=False))


def _gta_palette_image(label_ids: np.ndarray) -> Image.Image:
    """A palette PNG whose indices are Cityscapes label ids, like GTA5's labels."""
    img = Image.fromarray(label_ids, mode="P")
    pal = np.zeros((256, 3), np.uint8)
    for train_id, label_id in enumerate(TRAIN_ID_TO_CITYSCAPES_ID):
        pal[label_id] = CITYSCAPES_PALETTE[train_id]
    img.putpalette(pal.flatten().tolist())
    return img


def _write_one(job: tuple) -> None:
    out, seed, domain, split, index, size = job
    img, train_ids = make_sample(seed, domain, index if split != "val" else 100_000 + index, size)
    label_ids = TRAIN_ID_TO_CITYSCAPES_ID[train_ids]
    if domain == "source":
        _atomic_png(Image.fromarray(img), out / "gta" / "images" / f"{index:05d}.png")
        _atomic_png(_gta_palette_image(label_ids), out / "gta" / "labels" / f"{index:05d}.png")
    else:
        city = "synthcity" if split == "train" else "valcity"
        stem = f"{city}_{index // 1000:06d}_{index % 1000:06d}"
        _atomic_png(Image.fromarray(img), out / "cityscapes" / "leftImg8bit" / split / city /
                    f"{stem}_leftImg8bit.png")
        _atomic_png(Image.fromarray(label_ids, mode="L"), out / "cityscapes" / "gtFine" / split / city /
                    f"{stem}_gtFine_labelIds.png")


def write_benchmark(out: str | os.PathLike, seed: int = 0, num_source: int = 400, num_target: int = 400,
                    num_val: int = 100, size: tuple[int, int] = (256, 512), nproc: int = 2) -> Path:
    """Write `out/gta` (source) and `out/cityscapes` (target train + val) in the real layouts."""
    out = check_output_dir(out)
    h, w = size
    if h < 32 or w < 32:
        raise UserError(f"synthetic images must be at least 32×32 (--size 32x32), got {h}×{w}")
    jobs = [(out, seed, "source", "train", i, size) for i in range(num_source)]
    jobs += [(out, seed, "target", "train", i, size) for i in range(num_target)]
    jobs += [(out, seed, "target", "val", i, size) for i in range(num_val)]
    map_jobs(_write_one, jobs, nproc if len(jobs) > 32 else 1, desc="synth", unit="img", chunksize=16)
    return out
