"""Synthetic colour fundus photographs with ICDR grades and pixel lesion masks.

No labelled fundus data can be downloaded where this demo is built, so its models are trained on these
images, and the lesion masks later measure whether Grad-CAM points at lesions. The images copy what a
grader sees in EyePACS photos (field of view on black, optic disc, macula, vessel arcades, camera
variety) and the lesions follow the ICDR definitions, with counts that overlap between neighbouring
grades as in real data while never breaking a definition:

    0 No DR           no lesions
    1 Mild NPDR       microaneurysms only
    2 Moderate NPDR   microaneurysms plus haemorrhages, hard exudates and/or cotton-wool spots (not severe)
    3 Severe NPDR     4-2-1 rule: >20 haemorrhages in all four quadrants, venous beading in 2+ quadrants,
                      and/or IRMA; plus moderate lesions
    4 PDR             neovascularisation and/or preretinal (or vitreous) haemorrhage, usually plus severe signs

Every length is a fraction of the field-of-view diameter or of the image size, so a lesion that defines a
grade stays visible after the field of view is cropped and resized to a 224-299 px model input.

    python -m drdemo.data.synthetic --out DIR --n N --seed S [--size 512] [--class-balance uniform|eyepacs]

The module is longer than 400 lines because the generator is one deterministic program: the scene,
anatomy and lesion stages draw from one random stream per image in a fixed order, so a seed always
gives the same images (the checkpoints' cards name seeds); keeping the stages in one file keeps that
order in view.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import multiprocessing
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from drdemo.errors import DrdemoError
from drdemo.tasks import NUM_GRADES

LESION_TYPES = (
    "microaneurysm",
    "haemorrhage",
    "hard_exudate",
    "cotton_wool_spot",
    "venous_beading",
    "irma",
    "neovascularisation",
    "preretinal_haemorrhage",
)
# Grade counts of the EyePACS (Kaggle 2015) training set, 35126 images; "uniform" gives 1/5 each.
CLASS_BALANCES = {"uniform": (1, 1, 1, 1, 1), "eyepacs": (25810, 2443, 5292, 873, 708)}
# A patient's second eye has the first eye's grade this often, else an independent draw from the
# marginal: the two eyes correlate as in real screening data and the marginal stays exact.
SECOND_EYE_SAME_GRADE = 0.6
MIN_SIZE, MAX_SIZE = 128, 4096
GENERATOR_VERSION = 1

# Drawing coordinates carry this many fractional bits (cv2 `shift`), so small lesions are placed and
# sized to 1/16 px and stay round when anti-aliased.
_SHIFT = 4
_ONE = 1 << _SHIFT
_AA = cv2.LINE_AA

# Multiplicative tints (RGB) for things that absorb light; bright lesions are blended towards a colour.
_VEIN_TINT = np.array([0.60, 0.36, 0.50], np.float32)
_ARTERY_TINT = np.array([0.82, 0.58, 0.68], np.float32)
_RED_LESION_TINT = {
    "microaneurysm": np.array([0.52, 0.20, 0.30], np.float32),
    "haemorrhage": np.array([0.55, 0.24, 0.34], np.float32),
    "venous_beading": _VEIN_TINT,
    "irma": np.array([0.62, 0.30, 0.42], np.float32),
    "neovascularisation": np.array([0.70, 0.34, 0.46], np.float32),
    "preretinal_haemorrhage": np.array([0.45, 0.16, 0.26], np.float32),
}
_BRIGHT_LESION_COLOUR = {
    "hard_exudate": np.array([1.00, 0.90, 0.45], np.float32),
    "cotton_wool_spot": np.array([0.96, 0.90, 0.80], np.float32),
}
# Colour casts of real fundus cameras: (probability, per-channel gain, haze towards grey).
_CASTS = {
    "neutral": (0.42, (1.00, 1.00, 1.00), 0.0),
    "yellow": (0.16, (1.02, 1.10, 0.60), 0.0),
    "dark": (0.14, (0.62, 0.58, 0.58), 0.0),
    "washed_out": (0.12, (0.95, 1.05, 1.20), 0.22),
    "greenish": (0.08, (0.82, 1.18, 1.05), 0.0),
    "red": (0.08, (1.05, 0.82, 0.80), 0.0),
}


class SyntheticDataError(DrdemoError, ValueError):
    """Bad arguments for the generator; the message says which one and what is allowed."""


@dataclass
class SyntheticFundus:
    """One synthetic photograph: RGB image, a boolean mask per lesion type (all of LESION_TYPES), grade, eye."""

    image: np.ndarray
    masks: dict[str, np.ndarray]
    grade: int
    eye: str
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- helpers


def _pt(x: float, y: float) -> tuple[int, int]:
    return round(x * _ONE), round(y * _ONE)


def _poly(points: np.ndarray) -> np.ndarray:
    return np.round(points * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _smooth_noise(rng: np.random.Generator, grid: int, h: int, w: int) -> np.ndarray:
    """Band-limited noise (std ~0.5-1): a small random grid upsampled, the cheap stand-in for Perlin noise."""
    small = rng.standard_normal((grid, grid)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _blur(layer: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.3:
        return layer
    return cv2.GaussianBlur(layer, (0, 0), sigma)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius < 1:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask, kernel)


class _Scene:
    """Geometry of one photograph: canvas, field of view, crop, optic disc, fovea, vessels."""

    def __init__(self, rng: np.random.Generator, size: int, eye: str):
        self.rng = rng
        self.size = size
        self.px = size / 512.0  # one pixel of a 512 px image
        self.eye = eye
        self.layout = rng.choice(["circle", "clipped", "rect"], p=[0.55, 0.30, 0.15])
        c = size / 2.0
        if self.layout == "circle":
            self.radius = size * rng.uniform(0.43, 0.49)
            box_w = box_h = size
        elif self.layout == "clipped":
            self.radius = size * rng.uniform(0.46, 0.495)
            box_w, box_h = size, round(2 * self.radius * rng.uniform(0.80, 0.92))
        else:
            self.radius = size * rng.uniform(0.62, 0.72)
            aspect = rng.uniform(0.72, 1.0)
            half_w = min(size / 2.0, 0.97 * self.radius / math.sqrt(1.0 + aspect * aspect))
            box_w, box_h = int(2 * half_w), int(2 * half_w * aspect)
        self.cx = c + rng.uniform(-0.02, 0.02) * size
        self.cy = c + rng.uniform(-0.02, 0.02) * size
        x0 = round(c - box_w / 2.0)
        y0 = round(c - box_h / 2.0)
        self.box = (x0, y0, x0 + box_w, y0 + box_h)  # left, top, right, bottom of the output image
        if self.layout == "rect":  # the crop shows no black, so the circle is centred on it
            self.cx, self.cy = c, c

        # Optic disc ~1/6.5 of the field of view, on the nasal side (right eye: right of the image);
        # the fovea 2.5 disc diameters temporal to it and a little lower. A small camera rotation tilts both.
        fov_diameter = 2 * min(self.radius, size * 0.49) if self.layout != "rect" else 2 * self.radius * 0.8
        self.dd = fov_diameter / rng.uniform(6.0, 7.0)
        self.temporal = -1.0 if eye == "right" else 1.0
        self.rotation = math.radians(rng.uniform(-10, 10))
        half = 1.25 * self.dd
        offset = rng.uniform(-0.25, 0.25) * self.dd
        self.disc = self._to_image(-half + offset, rng.uniform(-0.35, 0.05) * self.dd)
        self.fovea = self._to_image(half + offset, rng.uniform(0.05, 0.35) * self.dd)
        self.small = max(32, size // 4)  # side of the grid for smooth fields
        self.vessels: list[dict] = []

    def _to_image(self, u: float, v: float) -> tuple[float, float]:
        """Anatomical frame (u temporal, v inferior, origin between disc and fovea) to image pixels."""
        cos, sin = math.cos(self.rotation), math.sin(self.rotation)
        u *= self.temporal
        return self.cx + u * cos - v * sin, self.cy + u * sin + v * cos

    def direction(self, angle: float) -> float:
        """An angle in the anatomical frame (0 = temporal, +90 = inferior) as an image angle."""
        a = angle if self.temporal > 0 else math.pi - angle
        return a + self.rotation

    def visible(self, x: np.ndarray, y: np.ndarray, inset: float = 0.92) -> np.ndarray:
        """Points well inside both the field of view and the output crop."""
        left, top, right, bottom = self.box
        margin = 0.03 * self.size
        inside = ((x - self.cx) ** 2 + (y - self.cy) ** 2) < (inset * self.radius) ** 2
        return inside & (x > left + margin) & (x < right - margin) & (y > top + margin) & (y < bottom - margin)

    def quadrant(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """0-3: the quadrant around the centre of the visible retina."""
        left, top, right, bottom = self.box
        return (y > (top + bottom) / 2).astype(int) * 2 + (x > (left + right) / 2).astype(int)

    def sample_points(self, k: int, near_fovea: float = 0.5, quadrant: int | None = None,
                      avoid_disc: float = 0.85) -> np.ndarray:
        """k lesion positions inside the visible retina, off the disc; a share clustered at the posterior pole."""
        rng, found = self.rng, []
        total = 0
        for _ in range(50):
            m = 4 * k + 16
            theta = rng.uniform(0, 2 * np.pi, m)
            rad = self.radius * np.sqrt(rng.uniform(0, 1, m))
            x, y = self.cx + rad * np.cos(theta), self.cy + rad * np.sin(theta)
            pole = rng.uniform(size=m) < near_fovea
            x[pole] = self.fovea[0] + rng.normal(0, 1.6 * self.dd, pole.sum())
            y[pole] = self.fovea[1] + rng.normal(0, 1.3 * self.dd, pole.sum())
            ok = self.visible(x, y)
            ok &= np.hypot(x - self.disc[0], y - self.disc[1]) > avoid_disc * self.dd
            if quadrant is not None:
                ok &= self.quadrant(x, y) == quadrant
            found.append(np.stack([x[ok], y[ok]], axis=1))
            total += int(ok.sum())
            if total >= k:
                break
        return np.concatenate(found)[:k]


# --------------------------------------------------------------------------------------------- anatomy


def _small_grid(scene: _Scene) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (in full-size pixels) of the reduced grid on which smooth fields are computed."""
    n = scene.small
    f = scene.size / n
    coords = (np.arange(n, dtype=np.float32) + 0.5) * np.float32(f) - 0.5
    return coords[None, :], coords[:, None]


def _background(scene: _Scene) -> tuple[np.ndarray, np.ndarray]:
    """Orange-red retina: radial illumination fall-off, pigment texture, subtle choroidal pattern, darker macula.

    Everything here is smooth, so it is computed on a grid a quarter of the size and upsampled: the
    transcendental functions would otherwise dominate the cost. Returns the small image and illumination.
    """
    rng, n, dd = scene.rng, scene.small, scene.dd
    xs, ys = _small_grid(scene)
    r2 = ((xs - scene.cx) ** 2 + (ys - scene.cy) ** 2) / np.float32(scene.radius**2)
    falloff = rng.uniform(0.35, 0.6)
    illum = 1.0 - falloff * np.minimum(r2, 1.3) ** rng.uniform(0.9, 1.4)
    illum = illum + 0.08 * _smooth_noise(rng, 5, n, n)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = ((xs - scene.cx) * math.cos(angle) + (ys - scene.cy) * math.sin(angle)) / scene.radius
    illum += rng.uniform(0.0, 0.22) * ramp
    # Peripapillary nerve fibres reflect a little more light around the disc.
    d2 = ((xs - scene.disc[0]) ** 2 + (ys - scene.disc[1]) ** 2) / np.float32(dd * dd)
    illum += np.exp(-d2 / (2 * 0.7**2)) * 0.1
    illum = np.clip(illum, 0.08, 1.3).astype(np.float32)

    # Pigmentation differs between people: redder/browner or more orange retinas.
    pigment = rng.uniform(-1, 1)
    base = np.array([0.80 + 0.05 * pigment, 0.36 - 0.05 * pigment, 0.13 - 0.03 * pigment], np.float32)
    texture = 1.0 + 0.03 * _smooth_noise(rng, 24, n, n)
    # Choroidal vessels: ridges of band-limited noise, seen through a thin pigment epithelium.
    ridges = np.exp(-(_smooth_noise(rng, 12, n, n) / 0.3) ** 2)
    tessellation = rng.uniform(0.0, 0.15) if rng.uniform() < 0.4 else rng.uniform(0.0, 0.04)
    # Macula: darker and browner, with a darker fovea.
    d2 = ((xs - scene.fovea[0]) ** 2 + (ys - scene.fovea[1]) ** 2) / np.float32(dd * dd)
    macula = np.exp(-d2 / (2 * rng.uniform(0.45, 0.7) ** 2)) * rng.uniform(0.2, 0.4)
    macula += np.exp(-d2 / (2 * 0.15**2)) * rng.uniform(0.1, 0.2)
    vignette = 1.0 - rng.uniform(0.0, 0.35) * np.minimum(r2, 1.0) ** 3

    image = np.empty((3, n, n), np.float32)  # channel-first: per-pixel factors broadcast cheaply
    for c, (power, darken, choroid) in enumerate(((0.8, 0.6, 0.25), (1.35, 1.0, -1.0), (1.6, 0.9, -1.0))):
        # the periphery darkens towards red: green and blue fall off faster than red
        image[c] = (base[c] * illum**power * texture * (1.0 + choroid * tessellation * ridges)
                         * (1.0 - darken * macula) * vignette)
    return image, illum


def _optic_disc(scene: _Scene, image: np.ndarray) -> None:
    """Bright yellow-pink disc (slightly vertical oval) with a paler cup, drawn in its own small window."""
    rng, dd = scene.rng, scene.dd
    dx, dy = scene.disc
    half = int(0.8 * dd) + 2
    x0, y0 = max(0, int(dx) - half), max(0, int(dy) - half)
    x1, y1 = min(scene.size, int(dx) + half), min(scene.size, int(dy) + half)
    if x1 <= x0 or y1 <= y0:
        return
    window = image[:, y0:y1, x0:x1]
    layer = np.zeros(window.shape[1:], np.uint8)
    axes = (0.5 * dd * rng.uniform(0.85, 0.95), 0.5 * dd * rng.uniform(0.98, 1.05))
    cv2.ellipse(layer, _pt(dx - x0, dy - y0), _pt(*axes), rng.uniform(-10, 10), 0, 360, 255, -1, _AA, _SHIFT)
    disc = _blur(layer, 0.03 * dd).astype(np.float32) * np.float32(rng.uniform(0.85, 0.97) / 255)
    layer[:] = 0
    cup = rng.uniform(0.3, 0.6)
    cup_x = dx + scene.temporal * 0.06 * dd - x0
    cv2.ellipse(layer, _pt(cup_x, dy - y0), _pt(axes[0] * cup, axes[1] * cup), 0, 0, 360, 255, -1, _AA, _SHIFT)
    cupm = _blur(layer, 0.08 * dd).astype(np.float32) * np.float32(rng.uniform(0.6, 0.9) / 255)
    rim = np.array([1.0, 0.74, 0.46], np.float32) * np.float32(rng.uniform(0.92, 1.05))
    pale = np.array([1.0, 0.93, 0.75], np.float32)
    for a, colour in ((disc, rim), (cupm, pale)):
        window *= 1.0 - a
        window += a * colour[:, None, None]


def _grow_vessel(scene: _Scene, start: tuple[float, float], angle: float, width: float, length: float,
                 turn: float, kind: str, depth: int) -> None:
    """One curved, tapering vessel and, recursively, its branches (appended to scene.vessels)."""
    rng, dd = scene.rng, scene.dd
    step = 2.5 * scene.px
    n = max(3, int(length / step))
    angles = angle + np.cumsum(turn / n + rng.normal(0, 0.045, n))
    pts = np.empty((n + 1, 2))
    pts[0] = start
    pts[1:, 0] = start[0] + np.cumsum(step * np.cos(angles))
    pts[1:, 1] = start[1] + np.cumsum(step * np.sin(angles))
    t = np.linspace(0, 1, n + 1)
    widths = width * (1.0 - 0.55 * t)
    # Stop at the edge of the field of view and before the foveal avascular zone.
    stop = (((pts[:, 0] - scene.cx) ** 2 + (pts[:, 1] - scene.cy) ** 2) > (1.03 * scene.radius) ** 2)
    stop |= np.hypot(pts[:, 0] - scene.fovea[0], pts[:, 1] - scene.fovea[1]) < 0.35 * dd
    stop[0] = False
    if stop.any():
        n = int(np.argmax(stop))
        pts, widths, angles = pts[: n + 1], widths[: n + 1], angles[:n]
    if len(pts) < 3:
        return
    scene.vessels.append({"points": pts, "widths": widths, "kind": kind, "depth": depth})
    if depth >= 4:
        return
    n_branches = int(rng.poisson(len(pts) * step / (1.3 * dd) + 0.3))
    for _ in range(n_branches):
        i = int(rng.integers(max(1, len(pts) // 8), len(pts) - 1))
        child_w = widths[i] * rng.uniform(0.45, 0.8)
        if child_w < 0.5 * scene.px:
            continue
        side = rng.choice([-1.0, 1.0])
        child_angle = angles[min(i, len(angles) - 1)] + side * math.radians(rng.uniform(25, 70))
        child_len = min(length * rng.uniform(0.3, 0.7), child_w / scene.px * rng.uniform(25, 45) * scene.px)
        _grow_vessel(scene, tuple(pts[i]), child_angle, child_w, child_len,
                     rng.normal(0, 0.6), kind, depth + 1)


def _vessel_tree(scene: _Scene) -> None:
    """Arteries and veins leave the disc in four arcades; the temporal arcades curve around the macula."""
    rng, dd = scene.rng, scene.dd
    dx, dy = scene.disc
    vein_w = dd * rng.uniform(0.07, 0.085)
    artery_w = vein_w * rng.uniform(0.7, 0.8)
    for sign in (-1.0, 1.0):  # superior, inferior
        for kind, w in (("vein", vein_w), ("artery", artery_w)):
            jitter = math.radians(rng.uniform(-8, 8))
            # temporal arcade: leaves steeply up (down), then bends temporally around the macula
            start = (dx + rng.uniform(-0.08, 0.08) * dd, dy + sign * rng.uniform(0.0, 0.1) * dd)
            a0 = sign * math.radians(rng.uniform(70, 95)) + jitter
            a0 = scene.direction(a0)
            turn = -sign * math.radians(rng.uniform(90, 130)) * scene.temporal
            _grow_vessel(scene, start, a0, w, dd * rng.uniform(4.5, 6.0), turn, kind, 0)
            # nasal arcade: shorter, thinner
            a1 = scene.direction(sign * math.radians(rng.uniform(120, 160)))
            _grow_vessel(scene, start, a1, w * rng.uniform(0.6, 0.75), dd * rng.uniform(2.5, 3.5),
                         sign * math.radians(rng.uniform(0, 40)) * scene.temporal, kind, 1)
        # small macular branches straight towards the fovea
        for _ in range(int(rng.integers(1, 3))):
            a2 = scene.direction(sign * math.radians(rng.uniform(5, 35)))
            _grow_vessel(scene, (dx, dy), a2, artery_w * rng.uniform(0.35, 0.5), dd * rng.uniform(1.0, 1.8),
                         0.0, rng.choice(["artery", "vein"]), 2)


def _draw_vessel(layer: np.ndarray, pts: np.ndarray, widths: np.ndarray, scale: float = 1.0) -> None:
    """Polylines of equal integer thickness; sub-pixel widths are drawn 1 px wide and proportionally fainter."""
    thick = np.maximum(1, np.round(widths * scale)).astype(int)
    level = np.round(np.clip(widths * scale, 0.2, 1.0) * 5).astype(int)
    key = thick * 16 + level
    cuts = np.flatnonzero(key[1:] != key[:-1]) + 1
    starts = [0, *cuts.tolist()]
    ends = [*cuts.tolist(), len(pts)]
    poly = _poly(pts)
    for lo, hi in zip(starts, ends):
        cv2.polylines(layer, [poly[max(0, lo - 1): hi + 1]], False, int(51 * level[lo]), int(thick[lo]), _AA, _SHIFT)


def _vessel_layers(scene: _Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Alpha layers (uint8) of veins, arteries and the arteries' central light reflex."""
    size, px = scene.size, scene.px
    veins = np.zeros((size, size), np.uint8)
    arteries = np.zeros((size, size), np.uint8)
    reflex = np.zeros((size, size), np.uint8)
    for v in scene.vessels:
        _draw_vessel(veins if v["kind"] == "vein" else arteries, v["points"], v["widths"])
        if v["kind"] == "artery" and v["widths"][0] > 3 * px:
            _draw_vessel(reflex, v["points"], v["widths"], 0.25)
    return _blur(veins, 0.5 * px), _blur(arteries, 0.5 * px), _blur(reflex, 0.6 * px)


# --------------------------------------------------------------------------------------------- lesions


def _lesion_plan(rng: np.random.Generator, grade: int) -> dict:
    """How many of each lesion an image of this grade gets; the ranges overlap between neighbouring grades."""
    plan = {"microaneurysm": 0, "haemorrhage": 0, "haemorrhage_all_quadrants": False, "exudate_clusters": 0,
            "cotton_wool_spot": 0, "beading_quadrants": 0, "irma": 0, "nv_disc": False, "nv_elsewhere": 0,
            "preretinal": False, "vitreous": False}
    if grade == 0:
        return plan
    if grade == 1:
        plan["microaneurysm"] = int(min(10, rng.geometric(0.25)))
        return plan
    plan["microaneurysm"] = int(rng.integers(2, 21)) if grade == 2 else int(rng.integers(5, 31))
    severe = grade == 3 or (grade == 4 and rng.uniform() < 0.7)
    if not severe:  # moderate: at least one lesion beyond microaneurysms
        while True:
            if rng.uniform() < 0.75:
                plan["haemorrhage"] = int(rng.integers(1, 16))
            if rng.uniform() < 0.45:
                plan["exudate_clusters"] = int(rng.integers(1, 4))
            if rng.uniform() < 0.35:
                plan["cotton_wool_spot"] = int(rng.integers(1, 4))
            if plan["haemorrhage"] or plan["exudate_clusters"] or plan["cotton_wool_spot"]:
                break
    else:
        while True:
            plan["haemorrhage_all_quadrants"] = bool(rng.uniform() < 0.7)
            plan["beading_quadrants"] = int(rng.integers(2, 5)) if rng.uniform() < 0.4 else 0
            plan["irma"] = int(rng.integers(1, 4)) if rng.uniform() < 0.45 else 0
            if plan["haemorrhage_all_quadrants"] or plan["beading_quadrants"] or plan["irma"]:
                break
        plan["haemorrhage"] = int(rng.integers(21, 51)) if plan["haemorrhage_all_quadrants"] else int(
            rng.integers(3, 16))
        plan["exudate_clusters"] = int(rng.integers(1, 5)) if rng.uniform() < 0.55 else 0
        plan["cotton_wool_spot"] = int(rng.integers(1, 7)) if rng.uniform() < 0.55 else 0
    if grade == 4:
        while True:
            plan["nv_disc"] = bool(rng.uniform() < 0.5)
            plan["nv_elsewhere"] = int(rng.integers(1, 3)) if rng.uniform() < 0.5 else 0
            plan["preretinal"] = bool(rng.uniform() < 0.35)
            if plan["nv_disc"] or plan["nv_elsewhere"] or plan["preretinal"]:
                break
        plan["vitreous"] = bool(plan["preretinal"] and rng.uniform() < 0.35)
    return plan


def _microaneurysms(scene: _Scene, layer: np.ndarray, k: int) -> int:
    rng, px = scene.rng, scene.px
    points = scene.sample_points(k, near_fovea=0.65)
    for x, y in points:
        r = rng.uniform(1.5, 3.0) * px  # 3-6 px diameter at 512 px
        cv2.circle(layer, _pt(x, y), int(r * _ONE), int(rng.uniform(200, 255)), -1, _AA, _SHIFT)
    return len(points)


def _haemorrhages(scene: _Scene, layer: np.ndarray, k: int, all_quadrants: bool) -> int:
    """Dot, blot and flame haemorrhages; with all_quadrants at least a quarter of k in each quadrant."""
    rng, px = scene.rng, scene.px
    if all_quadrants:
        per = max(5, k // 5)
        pts = [scene.sample_points(per, near_fovea=0.2, quadrant=q) for q in range(4)]
        pts.append(scene.sample_points(k - 4 * per, near_fovea=0.4))
        points = np.concatenate(pts)
    else:
        points = scene.sample_points(k, near_fovea=0.5)
    for x, y in points:
        kind = rng.choice(["dot", "blot", "flame"], p=[0.45, 0.4, 0.15])
        value = int(rng.uniform(190, 255))
        if kind == "dot":
            cv2.circle(layer, _pt(x, y), int(rng.uniform(3.0, 5.5) * px * _ONE), value, -1, _AA, _SHIFT)
        elif kind == "blot":
            r = rng.uniform(5.0, 11.0) * px
            for _ in range(int(rng.integers(2, 5))):
                ox, oy = rng.normal(0, 0.35 * r, 2)
                axes = _pt(r * rng.uniform(0.5, 0.9), r * rng.uniform(0.4, 0.8))
                cv2.ellipse(layer, _pt(x + ox, y + oy), axes, rng.uniform(0, 180), 0, 360, value, -1, _AA, _SHIFT)
        else:  # flame: along the nerve fibres, i.e. roughly radial from the disc
            ang = math.degrees(math.atan2(y - scene.disc[1], x - scene.disc[0])) + rng.normal(0, 15)
            axes = _pt(rng.uniform(7, 14) * px, rng.uniform(2.0, 3.5) * px)
            cv2.ellipse(layer, _pt(x, y), axes, ang, 0, 360, value, -1, _AA, _SHIFT)
    return len(points)


def _hard_exudates(scene: _Scene, layer: np.ndarray, clusters: int) -> int:
    """Yellow waxy dots in clusters, often circinate rings, mostly around the macula."""
    rng, px, dd = scene.rng, scene.px, scene.dd
    total = 0
    for _ in range(clusters):
        if rng.uniform() < 0.65:
            centre = scene.fovea + rng.normal(0, 0.9 * dd, 2)
            if not scene.visible(np.array([centre[0]]), np.array([centre[1]]))[0]:
                centre = scene.sample_points(1, near_fovea=1.0)[0]
        else:
            centre = scene.sample_points(1, near_fovea=0.3)[0]
        m = int(rng.integers(6, 35))
        if rng.uniform() < 0.4:  # circinate ring around a leaking centre
            ring = rng.uniform(0.25, 0.6) * dd
            theta = rng.uniform(0, 2 * np.pi) + rng.uniform(0.6, 1.0) * 2 * np.pi * np.sort(rng.uniform(0, 1, m))
            rad = ring * rng.normal(1.0, 0.12, m)
            xs, ys = centre[0] + rad * np.cos(theta), centre[1] + rad * np.sin(theta)
        else:
            spread = rng.uniform(0.12, 0.4) * dd
            xs, ys = centre[0] + rng.normal(0, spread, m), centre[1] + rng.normal(0, spread, m)
        ok = scene.visible(xs, ys) & (np.hypot(xs - scene.disc[0], ys - scene.disc[1]) > 0.8 * dd)
        for x, y in zip(xs[ok], ys[ok]):
            if rng.uniform() < 0.2:  # waxy plaque
                axes = _pt(rng.uniform(2.5, 5.0) * px, rng.uniform(1.8, 3.5) * px)
                cv2.ellipse(layer, _pt(x, y), axes, rng.uniform(0, 180), 0, 360, 255, -1, _AA, _SHIFT)
            else:
                cv2.circle(layer, _pt(x, y), int(rng.uniform(1.5, 2.8) * px * _ONE), 255, -1, _AA, _SHIFT)
        total += int(ok.sum())
    if total == 0:  # a cluster fell outside the visible retina: keep the planned lesion
        x, y = scene.sample_points(1, near_fovea=1.0)[0]
        cv2.circle(layer, _pt(x, y), int(2.5 * px * _ONE), 255, -1, _AA, _SHIFT)
        total = 1
    return total


def _vessel_point(scene: _Scene, min_width: float, max_dist_dd: float | None = None) -> tuple[np.ndarray, float, dict]:
    """A random point on a vessel at least min_width wide (optionally within some disc diameters of the disc)."""
    rng = scene.rng
    for _ in range(200):
        v = scene.vessels[int(rng.integers(len(scene.vessels)))]
        i = int(rng.integers(len(v["points"]) - 1))
        p = v["points"][i]
        if v["widths"][i] < min_width:
            continue
        if max_dist_dd is not None and np.hypot(*(p - scene.disc)) > max_dist_dd * scene.dd:
            continue
        if np.hypot(*(p - scene.disc)) < 0.9 * scene.dd or not scene.visible(p[:1], p[1:])[0]:
            continue
        d = v["points"][i + 1] - p
        return p, math.atan2(d[1], d[0]), v
    return scene.sample_points(1)[0], 0.0, scene.vessels[0]


def _cotton_wool_spots(scene: _Scene, layer: np.ndarray, k: int) -> int:
    """Pale fluffy white patches beside the large vessels of the posterior pole."""
    rng, dd, px = scene.rng, scene.dd, scene.px
    for _ in range(k):
        p, ang, _v = _vessel_point(scene, 2.0 * px, max_dist_dd=3.5)
        normal = ang + math.pi / 2
        off = rng.uniform(0.1, 0.3) * dd * rng.choice([-1, 1])
        x, y = p[0] + off * math.cos(normal), p[1] + off * math.sin(normal)
        r = rng.uniform(0.18, 0.33) * dd
        for _ in range(int(rng.integers(2, 5))):
            ox, oy = rng.normal(0, 0.25 * r, 2)
            axes = _pt(r * rng.uniform(0.6, 1.0), r * rng.uniform(0.35, 0.6))
            cv2.ellipse(layer, _pt(x + ox, y + oy), axes, math.degrees(ang) + rng.normal(0, 20), 0, 360,
                        int(rng.uniform(150, 230)), -1, _AA, _SHIFT)
    return k


def _venous_beading(scene: _Scene, layer: np.ndarray, n_quadrants: int) -> int:
    """Sausage-like calibre variation along a stretch of a vein in each of n_quadrants quadrants."""
    rng, px = scene.rng, scene.px
    veins = [v for v in scene.vessels if v["kind"] == "vein" and v["widths"][0] > 2.0 * px and len(v["points"]) > 20]
    by_quadrant: dict[int, list[tuple[dict, int]]] = {q: [] for q in range(4)}
    for v in veins:
        pts = v["points"]
        ok = scene.visible(pts[:, 0], pts[:, 1], inset=0.85)
        ok &= np.hypot(pts[:, 0] - scene.disc[0], pts[:, 1] - scene.disc[1]) > 1.2 * scene.dd
        quads = scene.quadrant(pts[:, 0], pts[:, 1])
        for i in np.flatnonzero(ok)[::6]:
            by_quadrant[int(quads[i])].append((v, int(i)))
    available = [q for q in range(4) if by_quadrant[q]]
    chosen = rng.permutation(available)[:n_quadrants]
    for q in chosen:
        v, i = by_quadrant[int(q)][int(rng.integers(len(by_quadrant[int(q)])))]
        pts, widths = v["points"], v["widths"]
        span = int(rng.uniform(0.8, 1.6) * scene.dd / (2.5 * px))
        lo, hi = max(0, i - span // 2), min(len(pts), i + span // 2)
        period = rng.uniform(3.0, 4.5) * widths[lo]
        arc = np.r_[0, np.cumsum(np.hypot(*np.diff(pts[lo:hi], axis=0).T))]
        bead = 1.0 + rng.uniform(0.6, 0.9) * np.maximum(0.0, np.sin(2 * np.pi * arc / period)) ** 0.7
        thin = 1.0 - 0.25 * np.maximum(0.0, -np.sin(2 * np.pi * arc / period))
        for (x, y), w, b, t in zip(pts[lo:hi], widths[lo:hi], bead, thin):
            cv2.circle(layer, _pt(x, y), int(0.5 * w * b * t * _ONE), 255, -1, _AA, _SHIFT)
    return len(chosen)


def _tortuous(scene: _Scene, layer: np.ndarray, centre: np.ndarray, extent: float, strands: int, wiggle: float,
              width: int, value: int) -> None:
    """Fine tortuous vessels: random walks with strong turning, the shared shape of IRMA and neovascularisation."""
    rng, px = scene.rng, scene.px
    for _ in range(strands):
        n = int(rng.integers(15, 40))
        a = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, wiggle, n) + rng.choice([-1, 1]) * 0.25)
        step = 1.6 * px * extent / (20 * px) if extent > 20 * px else 1.6 * px
        start = centre + rng.normal(0, 0.35 * extent, 2)
        pts = start + np.cumsum(np.stack([np.cos(a), np.sin(a)], 1) * step, axis=0)
        keep = np.hypot(*(pts - centre).T) < extent
        if keep.sum() >= 3:
            cv2.polylines(layer, [_poly(pts[keep])], False, value, width, _AA, _SHIFT)


def _irma(scene: _Scene, layer: np.ndarray, k: int) -> int:
    """Intraretinal microvascular abnormalities: small tangles of fine vessels beside the veins."""
    rng, dd, px = scene.rng, scene.dd, scene.px
    for _ in range(k):
        p, ang, _v = _vessel_point(scene, 1.5 * px)
        normal = ang + math.pi / 2
        off = rng.uniform(0.15, 0.4) * dd * rng.choice([-1, 1])
        centre = np.array([p[0] + off * math.cos(normal), p[1] + off * math.sin(normal)])
        if not scene.visible(centre[:1], centre[1:])[0]:
            centre = p
        _tortuous(scene, layer, centre, rng.uniform(0.25, 0.45) * dd, int(rng.integers(4, 8)), 0.5,
                  max(1, round(1.3 * px)), 230)
    return k


def _neovascularisation(scene: _Scene, layer: np.ndarray, haze: np.ndarray, on_disc: bool, elsewhere: int) -> int:
    """Disorganised tufts of fine looping vessels on the disc (NVD) or along the arcades (NVE)."""
    rng, dd, px = scene.rng, scene.dd, scene.px
    sites = []
    if on_disc:
        sites.append((np.array(scene.disc) + rng.normal(0, 0.15 * dd, 2), rng.uniform(0.45, 0.8) * dd))
    for _ in range(elsewhere):
        p, _ang, _v = _vessel_point(scene, 2.0 * px, max_dist_dd=5.0)
        sites.append((p, rng.uniform(0.3, 0.55) * dd))
    for centre, extent in sites:
        _tortuous(scene, layer, centre, extent, int(rng.integers(10, 22)), 0.75, max(1, round(1.2 * px)), 255)
        if rng.uniform() < 0.5:  # fibrous tissue around the new vessels
            cv2.circle(haze, _pt(*centre), int(0.8 * extent * _ONE), int(rng.uniform(60, 120)), -1, _AA, _SHIFT)
    return len(sites)


def _preretinal(scene: _Scene, layer: np.ndarray) -> int:
    """Boat-shaped haemorrhage: the lower part of an ellipse under a flat, horizontal fluid level."""
    rng, dd = scene.rng, scene.dd
    p, _ang, _v = _vessel_point(scene, 2.0 * scene.px, max_dist_dd=4.0)
    a, b = rng.uniform(0.5, 1.2) * dd, rng.uniform(0.35, 0.7) * dd
    blob = np.zeros_like(layer)
    cv2.ellipse(blob, _pt(*p), _pt(a, b), rng.normal(0, 8), 0, 360, 255, -1, _AA, _SHIFT)
    top = int(p[1] - b * rng.uniform(0.0, 0.4))
    blob[: max(0, top)] = 0
    np.maximum(layer, blob, out=layer)
    return 1


# --------------------------------------------------------------------------------------------- assembly

# Gaussian blur (in px of a 512 px image) that turns each lesion's hard drawing into a natural edge.
_LESION_BLUR = {"microaneurysm": 0.45, "haemorrhage": 0.9, "hard_exudate": 0.4, "cotton_wool_spot": 4.0,
                "venous_beading": 0.5, "irma": 0.4, "neovascularisation": 0.4, "preretinal_haemorrhage": 1.5}
# Tiny lesions whose masks grow by ~1 px (of 512) so they survive resizing to a model input.
_DILATED = ("microaneurysm", "hard_exudate", "irma", "neovascularisation")
_REFLEX_GAIN = 0.12


def _camera_lut(rng: np.random.Generator, meta: dict) -> np.ndarray:
    """Per-photo exposure, colour cast, haze and gamma as one 8-bit lookup table (256, 1, 3) in RGB order.

    Black stays black (the haze lifts only lit pixels), so the surround of the field of view is unchanged.
    """
    names = list(_CASTS)
    cast = names[int(rng.choice(len(names), p=[_CASTS[c][0] for c in names]))]
    _p, gains, haze = _CASTS[cast]
    gain = np.array(gains) * rng.uniform(0.8, 1.15) * rng.uniform(0.92, 1.08, 3)
    gamma = rng.uniform(0.85, 1.15)
    v = np.arange(256) / 255.0
    lut = np.empty((256, 1, 3), np.uint8)
    for c, hc in enumerate((0.75, 0.55, 0.45)):
        out = v * gain[c]
        out = out * (1.0 - haze) + haze * hc * np.minimum(1.0, v / 0.12)
        lut[:, 0, c] = np.round(np.clip(out, 0.0, 1.0) ** gamma * 255)
    meta.update(cast=cast, gamma=round(float(gamma), 3))
    return lut


def _composite_bright(image: np.ndarray, alpha: np.ndarray, colour: np.ndarray, illum: np.ndarray) -> None:
    """Blend towards a colour, shaded by the local illumination (bright lesions are dimmer in the periphery)."""
    shaded = alpha * np.minimum(1.0, 0.35 + 0.75 * illum)
    image *= 1.0 - alpha
    for c in range(3):
        image[c] += shaded * colour[c]


def generate_fundus(seed: int | np.random.SeedSequence, grade: int, size: int = 512,
                    eye: str = "left") -> SyntheticFundus:
    """One synthetic fundus photograph of the given ICDR grade with a boolean mask per lesion type.

    The same seed gives the same image; masks cover every lesion pixel (tiny lesions dilated by ~1 px of a
    512 px image so they survive resizing) and lie inside the field of view.
    """
    if grade not in range(NUM_GRADES):
        raise SyntheticDataError(f"grade must be 0-4 (ICDR), got {grade!r}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise SyntheticDataError(f"size must be {MIN_SIZE}-{MAX_SIZE} px, got {size}")
    if eye not in ("left", "right"):
        raise SyntheticDataError(f"eye must be 'left' or 'right', got {eye!r}")
    rng = np.random.default_rng(seed)
    scene = _Scene(rng, size, eye)
    px = scene.px
    small, illum_small = _background(scene)
    image = np.stack([cv2.resize(plane, (size, size), interpolation=cv2.INTER_LINEAR) for plane in small])
    image *= 1.0 + 0.025 * _smooth_noise(rng, 80, size, size)
    _optic_disc(scene, image)
    _vessel_tree(scene)

    plan = _lesion_plan(rng, grade)
    layers = {name: np.zeros((size, size), np.uint8) for name in LESION_TYPES}
    counts = dict.fromkeys(LESION_TYPES, 0)
    fibrous = np.zeros((size, size), np.uint8)
    if plan["beading_quadrants"]:
        counts["venous_beading"] = _venous_beading(scene, layers["venous_beading"], plan["beading_quadrants"])
    if plan["microaneurysm"]:
        counts["microaneurysm"] = _microaneurysms(scene, layers["microaneurysm"], plan["microaneurysm"])
    if plan["haemorrhage"]:
        counts["haemorrhage"] = _haemorrhages(scene, layers["haemorrhage"], plan["haemorrhage"],
                                              plan["haemorrhage_all_quadrants"])
    if plan["exudate_clusters"]:
        counts["hard_exudate"] = _hard_exudates(scene, layers["hard_exudate"], plan["exudate_clusters"])
    if plan["cotton_wool_spot"]:
        counts["cotton_wool_spot"] = _cotton_wool_spots(scene, layers["cotton_wool_spot"], plan["cotton_wool_spot"])
    if plan["irma"]:
        counts["irma"] = _irma(scene, layers["irma"], plan["irma"])
    if plan["nv_disc"] or plan["nv_elsewhere"]:
        counts["neovascularisation"] = _neovascularisation(scene, layers["neovascularisation"], fibrous,
                                                           plan["nv_disc"], plan["nv_elsewhere"])
    if plan["preretinal"]:
        counts["preretinal_haemorrhage"] = _preretinal(scene, layers["preretinal_haemorrhage"])
    alphas = {name: _blur(layers[name], _LESION_BLUR[name] * px) for name in LESION_TYPES if counts[name]}

    # Everything that absorbs light (vessels, red lesions) as one transmission map.
    veins, arteries, reflex = _vessel_layers(scene)
    stack, absorb = [veins, arteries, reflex], [1.0 - _VEIN_TINT, 1.0 - _ARTERY_TINT, np.full(3, -_REFLEX_GAIN)]
    if "venous_beading" in alphas:  # beads are the vein itself, swollen: no double absorption
        stack[0] = np.maximum(veins, alphas["venous_beading"])
    for name in ("haemorrhage", "microaneurysm", "irma", "neovascularisation"):
        if name in alphas:
            stack.append(alphas[name])
            absorb.append(0.95 * (1.0 - _RED_LESION_TINT[name]))
    transmission = np.ones((3, size, size), np.float32)
    for layer, weights in zip(stack, absorb):
        alpha = layer.astype(np.float32)
        for c in range(3):
            transmission[c] -= alpha * np.float32(weights[c] / 255)
    image *= np.maximum(transmission, 0.05)

    illum = None
    bright = [(fibrous, 6.0, np.array([0.95, 0.85, 0.75], np.float32), 1.0)] if fibrous.any() else []
    bright += [(alphas[name], 0.0, _BRIGHT_LESION_COLOUR[name], 0.95 if name == "hard_exudate" else 0.8)
               for name in ("hard_exudate", "cotton_wool_spot") if name in alphas]
    for layer, sigma, colour, strength in bright:
        if illum is None:
            illum = cv2.resize(illum_small, (size, size), interpolation=cv2.INTER_LINEAR)
        alpha = _blur(layer, sigma * px).astype(np.float32) * np.float32(strength / 255)
        if layer is alphas.get("cotton_wool_spot"):  # fluffy: uneven density
            alpha *= np.clip(0.8 + 0.35 * _smooth_noise(rng, 64, size, size), 0.3, 1.0)
        _composite_bright(image, alpha, colour, illum)
    haze = None
    if "preretinal_haemorrhage" in alphas:  # in front of the retina: covers the vessels
        haze = alphas["preretinal_haemorrhage"].astype(np.float32) * np.float32(0.97 / 255)
    if plan["vitreous"]:  # a large diffuse dark haze over part of the view
        centre = scene.sample_points(1, near_fovea=0.3)[0]
        xs, ys = _small_grid(scene)
        spread = rng.uniform(1.2, 2.2) * scene.dd
        d2 = ((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / np.float32(spread**2)
        n = scene.small
        cloud = np.exp(-0.5 * d2) * np.clip(1.0 + 0.3 * _smooth_noise(rng, 8, n, n), 0, 1.3) * rng.uniform(0.6, 0.85)
        cloud = cv2.resize(cloud.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
        haze = cloud if haze is None else np.maximum(haze, cloud)
        alphas["preretinal_haemorrhage"] = (haze * 255).astype(np.uint8)
    if haze is not None:  # translucent dark red over whatever lies behind it
        for c, tint in enumerate((0.50, 0.14, 0.22)):
            image[c] *= 1.0 - haze * np.float32(1.0 - tint)

    # Field of view: an anti-aliased circle on black, sensor noise, then the camera's exposure and cast.
    fov = np.zeros((size, size), np.uint8)
    cv2.circle(fov, _pt(scene.cx, scene.cy), int(scene.radius * _ONE), 255, -1, _AA, _SHIFT)
    image *= fov.astype(np.float32) * np.float32(1 / 255)
    noise_level = rng.uniform(0.003, 0.015)
    grain = np.frombuffer(rng.bytes(size * size), np.uint8).reshape(size, size)
    image += (grain.astype(np.float32) - np.float32(127.5)) * np.float32(noise_level * 3.4 / 255)
    image *= 255
    image += 0.5
    np.clip(image, 0, 255, out=image)
    rgb = cv2.merge([plane.astype(np.uint8) for plane in image])
    blur = rng.uniform(0.5, 1.8) * px if rng.uniform() < 0.35 else 0.0
    rgb = _blur(rgb, blur)
    meta = {"layout": str(scene.layout), "eye": eye, "rotation_deg": round(math.degrees(scene.rotation), 2),
            "disc": [round(scene.disc[0], 1), round(scene.disc[1], 1)],
            "fovea": [round(scene.fovea[0], 1), round(scene.fovea[1], 1)],
            "disc_diameter": round(scene.dd, 1), "fov_radius": round(scene.radius, 1),
            "fov_centre": [round(scene.cx, 1), round(scene.cy, 1)], "crop_box": list(scene.box),
            "lesion_counts": counts, "haemorrhage_all_quadrants": plan["haemorrhage_all_quadrants"],
            "vitreous_haemorrhage": plan["vitreous"], "blur": round(float(blur), 2),
            "noise": round(float(noise_level), 4)}
    rgb = cv2.LUT(rgb, _camera_lut(rng, meta))
    meta["jpeg_quality"] = int(rng.integers(70, 96))

    left, top, right, bottom = scene.box
    inside = fov[top:bottom, left:right] > 127
    grow = max(1, round(px))
    masks = {}
    for name in LESION_TYPES:
        if name in alphas:
            m = (alphas[name][top:bottom, left:right] > 64).astype(np.uint8)
            if name in _DILATED:
                m = _dilate(m, grow)
            masks[name] = m.view(bool) & inside
        else:
            masks[name] = np.zeros((bottom - top, right - left), bool)
    rgb = np.ascontiguousarray(rgb[top:bottom, left:right])
    meta["present"] = [name for name in LESION_TYPES if masks[name].any()]
    return SyntheticFundus(image=rgb, masks=masks, grade=grade, eye=eye, meta=meta)


# --------------------------------------------------------------------------------------------- dataset


def sample_grades(n: int, seed: int, class_balance: str = "uniform") -> list[int]:
    """Grades of n images in id order (left then right eye of each patient), with the marginal of class_balance.

    A patient's second eye repeats the first eye's grade with probability SECOND_EYE_SAME_GRADE, else it is an
    independent draw from the same marginal, which leaves the marginal exact.
    """
    if class_balance not in CLASS_BALANCES:
        raise SyntheticDataError(f"unknown class balance {class_balance!r}; use one of {sorted(CLASS_BALANCES)}")
    weights = np.asarray(CLASS_BALANCES[class_balance], dtype=float)
    p = weights / weights.sum()
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    grades = []
    for i in range(n):
        if i % 2 == 1 and rng.uniform() < SECOND_EYE_SAME_GRADE:
            grades.append(grades[-1])
        else:
            grades.append(int(rng.choice(NUM_GRADES, p=p)))
    return grades


def image_ids(n: int) -> list[str]:
    """`<patient:05d>_<left|right>` for n images: patients from 1, left eye first; the last may have one eye."""
    return [f"{i // 2 + 1:05d}_{'left' if i % 2 == 0 else 'right'}" for i in range(n)]


def _image_seed(seed: int, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, 1, index])


def _write_one(job: tuple[int, str, int, int, int, str]) -> tuple[str, int, list[str]]:
    index, image_id, grade, seed, size, out = job
    fundus = generate_fundus(_image_seed(seed, index), grade, size, image_id.rsplit("_", 1)[1])
    root = Path(out)
    bgr = cv2.cvtColor(fundus.image, cv2.COLOR_RGB2BGR)
    _ok, data = cv2.imencode(".jpeg", bgr, [cv2.IMWRITE_JPEG_QUALITY, fundus.meta["jpeg_quality"]])
    (root / "images" / f"{image_id}.jpeg").write_bytes(data.tobytes())
    present = []
    for name, mask in fundus.masks.items():
        if mask.any():
            _ok, data = cv2.imencode(".png", mask.astype(np.uint8) * 255, [cv2.IMWRITE_PNG_COMPRESSION, 3])
            (root / "masks" / name / f"{image_id}.png").write_bytes(data.tobytes())
            present.append(name)
    return image_id, grade, present


# glibc hands every large numpy buffer back to the OS and page-faults it in again for the next image;
# keeping them mapped in the worker processes cuts their system time about fourfold.
_WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(128 << 20)}


@contextlib.contextmanager
def _worker_environment() -> Iterator[None]:
    """Environment for starting worker processes (a setting the user made wins), restored afterwards."""
    added = [key for key in _WORKER_ENV if key not in os.environ]
    os.environ.update({key: _WORKER_ENV[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would only compete


def _check_arguments(out: Path, n: int, size: int, class_balance: str, workers: int | None) -> None:
    if n < 1:
        raise SyntheticDataError(f"--n must be at least 1, got {n}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise SyntheticDataError(f"--size must be between {MIN_SIZE} and {MAX_SIZE} px, got {size}")
    if class_balance not in CLASS_BALANCES:
        raise SyntheticDataError(f"unknown --class-balance {class_balance!r}; use one of {sorted(CLASS_BALANCES)}")
    if workers is not None and workers < 1:
        raise SyntheticDataError(f"--workers must be at least 1, got {workers}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SyntheticDataError(f"{out} already exists and is not an empty folder; choose a new --out folder")


def write_dataset(out: str | os.PathLike, n: int, seed: int, size: int = 512, class_balance: str = "uniform",
                  workers: int | None = None, *, progress: bool = True) -> Path:
    """Write n synthetic images with labels.csv (EyePACS layout), lesion masks and generator.json to out.

    Each image's random stream comes from (seed, index) alone, so the files are byte-identical for any
    number of workers. Returns the dataset folder.
    """
    out = Path(out)
    _check_arguments(out, n, size, class_balance, workers)
    workers = min(workers or os.cpu_count() or 1, n)
    grades = sample_grades(n, seed, class_balance)
    ids = image_ids(n)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for name in LESION_TYPES:
        (out / "masks" / name).mkdir(parents=True, exist_ok=True)
    jobs = [(i, ids[i], grades[i], seed, size, str(out)) for i in range(n)]

    bar = tqdm(total=n, desc="synthetic fundus", unit="img", disable=not progress)
    results = []
    if workers == 1:
        for job in jobs:
            results.append(_write_one(job))
            bar.update()
    else:
        # spawn, not fork: a forked child inherits OpenCV's (or torch's) thread-pool locks mid-use and can hang
        with _worker_environment():
            pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init)
        with pool:
            for result in pool.imap(_write_one, jobs, chunksize=max(1, min(4, n // (8 * workers)))):
                results.append(result)
                bar.update()
    bar.close()
    for name in LESION_TYPES:  # only lesion types that occur keep a folder
        folder = out / "masks" / name
        if not any(folder.iterdir()):
            folder.rmdir()
    if not any((out / "masks").iterdir()):
        (out / "masks").rmdir()

    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image", "level"])
        writer.writerows((image_id, grade) for image_id, grade, _ in results)
    info = {
        "generator": "drdemo.data.synthetic", "version": GENERATOR_VERSION, "seed": seed, "n": n, "size": size,
        "class_balance": class_balance, "lesion_types": list(LESION_TYPES),
        "grade_counts": {str(g): grades.count(g) for g in range(NUM_GRADES)},
        "lesion_image_counts": {name: sum(name in present for _, _, present in results) for name in LESION_TYPES},
    }
    (out / "generator.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m drdemo.data.synthetic",
        description="Write a synthetic colour fundus dataset with ICDR grades and lesion masks.")
    parser.add_argument("--out", required=True, type=Path, help="new (or empty) output folder")
    parser.add_argument("--n", required=True, type=int, help="number of images")
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--size", type=int, default=512, help=f"image size in px ({MIN_SIZE}-{MAX_SIZE}, default 512)")
    parser.add_argument("--class-balance", default="uniform",
                        help="uniform (1/5 each) or eyepacs (EyePACS train marginals)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all CPU cores)")
    args = parser.parse_args(argv)
    try:
        out = write_dataset(args.out, args.n, args.seed, args.size, args.class_balance, args.workers)
    except SyntheticDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.n} images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
