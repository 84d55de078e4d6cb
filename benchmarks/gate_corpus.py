"""A test corpus for the image gate, made or read at test time (no third-party picture is committed).

* `fundus_cases()`: synthetic fundus photos in realistic camera variety, which must be graded.
* `non_fundus_cases()`: pictures that are not colour fundus photos, by category (documents and screenshots,
  charts, faces and animals, cups, orange/red things on dark backgrounds, skin and food, other medical
  images, vessel masks, a fundus shown on a screen or a slide, plain frames and natural photos). Most are
  drawn here, procedurally; the rest are the sample photos that ship inside scikit-learn and matplotlib.
  scikit-image's and fundus-image-toolbox's sample pictures are never used: they are kept for independent
  checks of the gate.
* `real_photo_sets(root)`: the real fundus photos under `../shared/data`, by set, where they exist.

`encoded(image, ...)` gives file bytes. The module is long by nature: one short drawing function per kind of
picture, so that each reads on its own.
"""

from __future__ import annotations

import functools
import gzip
import io
import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from drdemo.data.synthetic import generate_fundus

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# Real fundus photos by set: (set name, folder under the data root, file pattern).
REAL_SETS = (
    ("IDRiD grading train", "idrid/B. Disease Grading/1. Original Images/a. Training Set", "*.jpg"),
    ("IDRiD grading test", "idrid/B. Disease Grading/1. Original Images/b. Testing Set", "*.jpg"),
    ("IDRiD segmentation train", "idrid/A. Segmentation/1. Original Images/a. Training Set", "*.jpg"),
    ("IDRiD segmentation test", "idrid/A. Segmentation/1. Original Images/b. Testing Set", "*.jpg"),
    ("DRIVE training", "drive/training/images", "*.png"),
    ("DRIVE testing", "drive/testing/images", "*.png"),
    ("CHASE_DB1", "chase_db1", "Image_[0-9][0-9][LR].jpg"),
)


def real_photo_sets(root: Path = REAL_DATA) -> dict[str, list[Path]]:
    """{set name: sorted photo paths} for the sets present under `root` (empty when there is no data)."""
    sets = {name: sorted((root / folder).glob(pattern)) for name, folder, pattern in REAL_SETS}
    return {name: paths for name, paths in sets.items() if paths}


def encoded(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def synthetic(seed: int, grade: int, size: int = 320) -> Image.Image:
    return Image.fromarray(generate_fundus(seed, grade, size=size).image)


@functools.cache
def _with_layout(layout: str, size: int = 320, grade: int = 0) -> Image.Image:
    """The first synthetic photo (by seed) whose field of view has `layout` (circle, clipped, rect)."""
    for seed in range(100):
        fundus = generate_fundus(seed, grade, size=size)
        if fundus.meta.get("layout") == layout and fundus.meta.get("cast") == "neutral":
            return Image.fromarray(fundus.image)
    raise AssertionError(f"no synthetic photo with layout {layout}")


def _gain(image: Image.Image, gains, haze: float = 0.0, haze_colour=(200, 200, 200)) -> Image.Image:
    """A colour cast: per-channel gains, then a blend of the lit pixels towards a haze colour."""
    rgb = np.asarray(image, np.float32)
    lit = (rgb.max(axis=2, keepdims=True) > 12).astype(np.float32)
    out = rgb * np.asarray(gains, np.float32)
    out = out * (1 - haze * lit) + haze * lit * np.asarray(haze_colour, np.float32)
    return Image.fromarray(np.clip(out, 0, 255).round().astype(np.uint8))


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    return Image.open(io.BytesIO(encoded(image, "JPEG", quality=quality))).convert("RGB")


def _image(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(array, 0, 255).round().astype(np.uint8))


def screen_photo(fundus: Image.Image, seed: int = 0) -> Image.Image:
    """A phone photo of a monitor showing `fundus`: grey wall, dark bezel, the screen's grey-black,
    moire stripes, a little blur, noise and JPEG."""
    rng = np.random.default_rng(seed)
    side = fundus.width
    h, w = int(side * 1.5), int(side * 1.9)
    canvas = np.empty((h, w, 3), np.float32)
    canvas[:] = (118, 116, 112)                                              # wall
    y0, x0 = (h - side) // 2 - int(0.12 * side), (w - side) // 2 - int(0.3 * side)
    canvas[y0 - 20:y0 + side + 40, x0 - 20:x0 + int(1.6 * side) + 20] = (22, 22, 25)   # bezel
    screen = np.asarray(fundus, np.float32)
    screen = 28 + screen * (225 / 255)                                      # a screen's black is grey
    canvas[y0:y0 + side + 20, x0:x0 + int(1.6 * side)] = 28
    canvas[y0:y0 + side, x0:x0 + side] = screen
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    moire = 1 + 0.07 * np.sin(0.9 * xx + 0.35 * yy) * np.sin(0.05 * xx - 0.11 * yy)
    canvas *= moire[..., None]
    canvas += rng.normal(0, 3, canvas.shape)
    out = _image(canvas).filter(ImageFilter.GaussianBlur(0.8))
    return _jpeg(out.rotate(3, resample=Image.Resampling.BILINEAR, fillcolor=(118, 116, 112)), 80)


def fundus_cases() -> dict[str, Image.Image]:
    """Photos the gate must grade as colour fundus photos."""
    circle = _with_layout("circle")
    return {
        "synthetic grade 0, 320 px": synthetic(1, 0),
        "synthetic grade 2, 384 px": synthetic(2, 2, 384),
        "synthetic grade 4, 256 px": synthetic(3, 4, 256),
        "synthetic grade 3, 512 px": synthetic(4, 3, 512),
        "synthetic circle": circle,
        "synthetic clipped circle": _with_layout("clipped"),
        "synthetic rect (no border)": _with_layout("rect"),
        "crop without border": circle.crop((80, 80, 240, 220)).resize((320, 280)),
        "yellow cast": _gain(circle, (1.05, 1.0, 0.55)),
        "bluish camera": _gain(circle, (0.85, 1.0, 1.45)),
        "dark": _gain(circle, (0.5, 0.5, 0.5)),
        "washed out": _gain(circle, (1.0, 1.0, 1.0), haze=0.4),
        "greenish cast": _gain(circle, (0.85, 1.15, 1.0)),
        "200 px thumbnail": circle.resize((200, 200), Image.Resampling.LANCZOS),
        "heavy JPEG (quality 8)": _jpeg(circle, 8),
        "strongly blurred": circle.filter(ImageFilter.GaussianBlur(6)),
        "very dark": _gain(circle, (0.16, 0.16, 0.16)),
        "strongly washed out": _gain(circle, (1.0, 1.0, 1.0), haze=0.6, haze_colour=(225, 225, 225)),
        "blurred (sigma 2 px)": circle.filter(ImageFilter.GaussianBlur(2)),
        "blurred (sigma 3 px)": circle.filter(ImageFilter.GaussianBlur(3)),
        "over-exposed": _gain(circle, (4.0, 4.0, 4.0)),
        "uneven illumination": _lit_from_one_side(circle),
    }


def _lit_from_one_side(image: Image.Image, shadow: float = 0.15) -> Image.Image:
    """Half the retina in shadow (the light falls to `shadow` of its strength), as with a misaligned camera."""
    rgb = np.asarray(image, np.float32)
    across = np.linspace(-1, 1, rgb.shape[1], dtype=np.float32)
    light = shadow + (1 - shadow) / (1 + np.exp(-6 * across))
    return _image(rgb * light[None, :, None])


# --------------------------------------------------------------------------------------------- helpers


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smooth noise with unit standard deviation, features about `sigma` px across."""
    field = cv2.GaussianBlur(rng.normal(0, 1, shape).astype(np.float32), (0, 0), sigma)
    return field / max(float(field.std()), 1e-6)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy, xx


def _disc_shading(h: int, w: int, cx: float, cy: float, r: float,
                  light=(-0.35, -0.35)) -> tuple[np.ndarray, np.ndarray]:
    """(inside mask, Lambert-like shading in [0.2, 1.2]) of a sphere of radius r seen from the front."""
    yy, xx = _grid(h, w)
    dx, dy = (xx - cx) / r, (yy - cy) / r
    inside = dx ** 2 + dy ** 2 <= 1
    dz = np.sqrt(np.clip(1 - dx ** 2 - dy ** 2, 0, 1))
    lx, ly = light
    lz = math.sqrt(max(0.0, 1 - lx * lx - ly * ly))
    shade = np.clip(dx * lx + dy * ly + dz * lz, 0, 1)
    return inside, 0.2 + shade


def _matplotlib():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _figure_image(figure) -> Image.Image:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", facecolor=figure.get_facecolor())
    _matplotlib().close(figure)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _vessel_tree(size: int, seed: int, width: float = 3.0) -> np.ndarray:
    """A white branching tree on black (uint8), grown from a disc on the left as retinal vessels are."""
    rng = np.random.default_rng(seed)
    canvas = np.zeros((size, size), np.uint8)
    origin = (0.32 * size, 0.5 * size)

    def grow(x: float, y: float, angle: float, thickness: float, length: float) -> None:
        while length > 0 and thickness >= 0.7:
            step = 0.02 * size
            nx, ny = x + step * math.cos(angle), y + step * math.sin(angle)
            cv2.line(canvas, (round(x * 16), round(y * 16)), (round(nx * 16), round(ny * 16)), 255,
                     max(1, round(thickness)), cv2.LINE_AA, shift=4)
            x, y, length = nx, ny, length - step
            angle += rng.normal(0, 0.12)
            if rng.random() < 0.09:
                grow(x, y, angle + rng.choice([-1, 1]) * rng.uniform(0.5, 1.0), thickness * 0.7, length * 0.7)
                thickness *= 0.85

    for angle in (-1.1, -0.6, 0.6, 1.1, 2.6, 3.6):
        grow(*origin, angle, width, 0.8 * size)
    return canvas


# --------------------------------------------------------------------------------------------- documents


def document() -> Image.Image:
    image = Image.new("RGB", (360, 480), "white")
    draw = ImageDraw.Draw(image)
    for line in range(22):
        draw.text((20, 16 + 20 * line), f"Patient referral letter, page 1, line {line}: lorem ipsum", fill=(20, 20, 20))
    return image


def screenshot() -> Image.Image:
    """A desktop window: title bar, side bar, buttons, text and a colourful thumbnail."""
    image = Image.new("RGB", (640, 400), (236, 236, 240))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 640, 28), fill=(52, 58, 70))
    for i, colour in enumerate([(237, 95, 87), (245, 190, 80), (98, 197, 85)]):
        draw.ellipse((10 + 20 * i, 8, 22 + 20 * i, 20), fill=colour)
    draw.text((260, 8), "Patients - Clinic viewer", fill=(230, 230, 230))
    draw.rectangle((0, 28, 150, 400), fill=(214, 218, 226))
    for i in range(12):
        draw.text((14, 44 + 26 * i), f"Folder {i + 1}", fill=(40, 40, 60))
    for i in range(14):
        draw.text((170, 50 + 22 * i), f"Row {i}: appointment at {9 + i // 2}:{30 * (i % 2):02d}, room {i + 2}",
                  fill=(30, 30, 30))
    draw.rounded_rectangle((470, 330, 610, 370), 8, fill=(40, 110, 220))
    draw.text((500, 344), "Save changes", fill=(255, 255, 255))
    thumb = np.asarray(outdoor().resize((130, 100)))
    image.paste(Image.fromarray(thumb), (480, 60))
    return image


def dark_code_editor() -> Image.Image:
    """A dark-mode editor: near-black background with orange, red and pale text (a dark surround)."""
    image = Image.new("RGB", (640, 420), (30, 30, 30))
    draw = ImageDraw.Draw(image)
    rng = np.random.default_rng(5)
    colours = [(206, 145, 120), (220, 120, 60), (200, 80, 70), (180, 180, 180), (220, 170, 90)]
    for line in range(24):
        x = 40 + 16 * int(rng.integers(0, 4))
        draw.text((6, 8 + 17 * line), f"{line + 1:3d}", fill=(110, 110, 110))
        for _ in range(int(rng.integers(2, 7))):
            word = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz_()=:"), int(rng.integers(2, 9))))
            draw.text((x, 8 + 17 * line), word, fill=colours[int(rng.integers(0, len(colours)))])
            x += 8 * len(word) + 8
    return image


# --------------------------------------------------------------------------------------------- charts


def bar_chart() -> Image.Image:
    plt = _matplotlib()
    figure, axes = plt.subplots(figsize=(4, 3), dpi=80)
    axes.bar(["a", "b", "c", "d"], [3, 5, 2, 4], color=["C0", "C1", "C1", "C3"])
    axes.set_title("Referrals per clinic")
    return _figure_image(figure)


def line_figure() -> Image.Image:
    plt = _matplotlib()
    figure, axes = plt.subplots(figsize=(4, 3), dpi=80)
    x = np.linspace(0, 6, 50)
    axes.plot(x, np.sin(x), "C1-", x, np.cos(x), "C3--")
    axes.set_xlabel("epoch")
    axes.legend(["train", "val"])
    return _figure_image(figure)


def pie_chart() -> Image.Image:
    """A round chart in reds and oranges: a disc of warm colours on white."""
    plt = _matplotlib()
    figure, axes = plt.subplots(figsize=(4, 4), dpi=90)
    axes.pie([35, 25, 20, 12, 8], colors=["#c0392b", "#e67e22", "#d35400", "#f39c12", "#a93226"],
             labels=["0", "1", "2", "3", "4"])
    return _figure_image(figure)


def heat_map_chart() -> Image.Image:
    """A heat map in matplotlib's 'hot' colours (black, red, orange, yellow) with a colour bar."""
    plt = _matplotlib()
    rng = np.random.default_rng(7)
    field = cv2.GaussianBlur(rng.random((60, 60)).astype(np.float32), (0, 0), 4)
    figure, axes = plt.subplots(figsize=(4.5, 3.6), dpi=90)
    shown = axes.imshow(field, cmap="hot")
    figure.colorbar(shown)
    return _figure_image(figure)


def dark_polar_chart() -> Image.Image:
    """A polar plot in matplotlib's dark style: a round chart with orange curves on black."""
    plt = _matplotlib()
    with plt.style.context("dark_background"):
        figure = plt.figure(figsize=(4, 4), dpi=90)
        axes = figure.add_subplot(projection="polar")
        theta = np.linspace(0, 2 * np.pi, 300)
        for k, colour in ((3, "orange"), (5, "red"), (7, "gold")):
            axes.plot(theta, 1 + 0.3 * np.sin(k * theta), color=colour)
        return _figure_image(figure)


# --------------------------------------------------------------------------------------------- faces and animals


def face(background=(232, 230, 226)) -> Image.Image:
    """A skin-tone oval with eyes, brows and a mouth on a light background."""
    image = Image.new("RGB", (300, 360), background)
    draw = ImageDraw.Draw(image)
    draw.ellipse((55, 40, 245, 320), fill=(222, 170, 138))
    for x in (105, 175):
        draw.ellipse((x, 140, x + 26, 156), fill=(250, 250, 250))
        draw.ellipse((x + 8, 142, x + 20, 154), fill=(70, 45, 30))
        draw.line((x - 4, 128, x + 30, 124), fill=(90, 60, 40), width=4)
    draw.polygon([(150, 170), (140, 220), (160, 220)], fill=(205, 150, 120))
    draw.chord((115, 235, 185, 275), 0, 180, fill=(170, 70, 70))
    shading = np.asarray(image.filter(ImageFilter.GaussianBlur(2)), np.float32)
    rng = np.random.default_rng(1)
    shading += rng.normal(0, 3, shading.shape)
    return _image(shading)


def cat_face(background: str = "room", size: int = 400) -> Image.Image:
    """An orange tabby's face: striped fur, pointed ears, green eyes with slit pupils, pink nose, whiskers.

    `background`: "room" (a blurred grey-green room), "dark" (a dark sofa) or "close-up" (the face fills
    the frame).
    """
    rng = np.random.default_rng(11)
    h = w = size
    yy, xx = _grid(h, w)
    if background == "room":
        canvas = np.empty((h, w, 3), np.float32)
        canvas[:] = (120, 128, 110)
        canvas += 25 * _noise(rng, (h, w), 25)[..., None]
    elif background == "dark":
        canvas = np.empty((h, w, 3), np.float32)
        canvas[:] = (24, 20, 22)
        canvas += 6 * _noise(rng, (h, w), 15)[..., None]
    else:
        canvas = None
    scale = 1.45 if background == "close-up" else 1.0
    cx, cy, rx, ry = w / 2, h * 0.56, 0.36 * w * scale, 0.32 * h * scale
    head = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    ears = np.zeros((h, w), np.uint8)
    for side in (-1, 1):
        tip = (cx + side * 0.28 * w * scale, cy - 0.55 * h * scale)
        base = [(cx + side * 0.08 * w * scale, cy - 0.22 * h * scale),
                (cx + side * 0.36 * w * scale, cy - 0.08 * h * scale)]
        cv2.fillPoly(ears, [np.array([tip, *base], np.int32)], 1)
    head |= ears.astype(bool)
    # Fur: orange base, darker tabby stripes that curve round the face, fine hair texture along them.
    angle = np.arctan2(yy - cy, xx - cx)
    stripes = np.sin(14 * angle + 3 * _noise(rng, (h, w), 12)) * np.sin(0.05 * yy + 2 * _noise(rng, (h, w), 20))
    hair = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 0.8)
    hair = cv2.blur(hair, (1, 7)) * 3
    fur = np.empty((h, w, 3), np.float32)
    fur[:] = (214, 136, 62)
    fur *= (1 - 0.28 * (stripes > 0.35))[..., None]
    fur *= (1 + 0.12 * hair)[..., None]
    muzzle = ((xx - cx) / (0.16 * w * scale)) ** 2 + ((yy - cy - 0.12 * h * scale) / (0.1 * h * scale)) ** 2 <= 1
    fur[muzzle] = fur[muzzle] * 0.3 + np.array([235, 225, 210]) * 0.7
    inner_ear = np.zeros((h, w), np.uint8)
    for side in (-1, 1):
        tip = (cx + side * 0.27 * w * scale, cy - 0.47 * h * scale)
        base = [(cx + side * 0.13 * w * scale, cy - 0.24 * h * scale),
                (cx + side * 0.32 * w * scale, cy - 0.14 * h * scale)]
        cv2.fillPoly(inner_ear, [np.array([tip, *base], np.int32)], 1)
    fur[inner_ear.astype(bool)] = (225, 160, 150)
    if canvas is None:
        canvas = fur.copy()
    canvas[head] = fur[head]
    for side in (-1, 1):   # eyes
        ex, ey = cx + side * 0.14 * w * scale, cy - 0.06 * h * scale
        eye = ((xx - ex) / (0.065 * w * scale)) ** 2 + ((yy - ey) / (0.045 * h * scale)) ** 2 <= 1
        canvas[eye] = (120, 160, 60)
        pupil = ((xx - ex) / (0.012 * w * scale)) ** 2 + ((yy - ey) / (0.042 * h * scale)) ** 2 <= 1
        canvas[pupil] = (15, 15, 15)
    nose = np.array([(cx - 0.035 * w * scale, cy + 0.06 * h * scale), (cx + 0.035 * w * scale, cy + 0.06 * h * scale),
                     (cx, cy + 0.1 * h * scale)], np.int32)
    cv2.fillPoly(canvas, [nose], (205, 120, 125))
    for side in (-1, 1):   # whiskers
        for k in range(4):
            start = (int(cx + side * 0.1 * w * scale), int(cy + (0.13 + 0.02 * k) * h * scale))
            end = (int(cx + side * 0.45 * w * scale), int(cy + (0.05 + 0.06 * k) * h * scale))
            cv2.line(canvas, start, end, (245, 245, 240), 1, cv2.LINE_AA)
    canvas = cv2.GaussianBlur(canvas, (0, 0), 0.7) + rng.normal(0, 3, canvas.shape)
    return _jpeg(_image(canvas), 88)


def external_eye(size: int = 420) -> Image.Image:
    """A photo of the outside of an eye: skin, lids with lashes, white sclera with thin red vessels, a brown
    iris with radial fibres and a black pupil with a catch light."""
    rng = np.random.default_rng(83)
    h, w = int(0.7 * size), size
    yy, xx = _grid(h, w)
    canvas = np.array([205, 150, 125], np.float32) * (1 + 0.04 * _noise(rng, (h, w), 20))[..., None]
    cx, cy = w / 2, h / 2
    opening = ((xx - cx) / (0.42 * w)) ** 2 + ((yy - cy) / (0.26 * h)) ** 2 <= 1
    sclera = np.array([235, 228, 222], np.float32) * (1 - 0.1 * (np.abs(xx - cx) / (0.42 * w)))[..., None]
    redness = np.zeros((h, w), np.float32)
    for _ in range(12):   # thin red vessels running in from the corners, gently curving
        side, y, slope = rng.choice([-1, 1]), cy + rng.normal(0, 0.08) * h, rng.normal(0, 0.3)
        points = []
        for t in range(12):
            points.append((cx + side * (0.4 - 0.018 * t) * w, y))
            slope += rng.normal(0, 0.15)
            y += slope * 0.018 * w
        cv2.polylines(redness, [np.array(points, np.int32)], False, 0.8, 1, cv2.LINE_AA)
    sclera = sclera * (1 - redness[..., None]) + redness[..., None] * np.array([200, 70, 70])
    canvas[opening] = sclera[opening]
    radius, angle = np.hypot(xx - cx, yy - cy), np.arctan2(yy - cy, xx - cx)
    iris = (radius <= 0.22 * h) & opening
    fibres = 1 + 0.15 * np.sin(60 * angle + 2 * _noise(rng, (h, w), 6)) * np.clip(radius / (0.22 * h), 0, 1)
    canvas[iris] = (np.array([120, 75, 40], np.float32) * fibres[..., None])[iris]
    canvas[radius <= 0.09 * h] = (12, 10, 10)
    canvas[np.hypot(xx - cx + 0.03 * h, yy - cy + 0.03 * h) <= 0.02 * h] = (250, 250, 250)
    for k in range(40):   # upper lashes
        x = cx + (k / 39 - 0.5) * 0.8 * w
        y = cy - 0.26 * h * math.sqrt(max(0.0, 1 - ((x - cx) / (0.42 * w)) ** 2))
        cv2.line(canvas, (int(x), int(y)), (int(x + 4 * (x - cx) / w * 20), int(y - 14)), (30, 20, 18), 1, cv2.LINE_AA)
    return _jpeg(_image(cv2.GaussianBlur(canvas, (0, 0), 0.8)), 88)


# --------------------------------------------------------------------------------------------- cups


def coffee_cup(table: str = "wood", size: int = 420) -> Image.Image:
    """A cup of coffee on a saucer seen from above, spoon beside it, on a wooden or a dark table."""
    rng = np.random.default_rng(13)
    h = w = size
    yy, xx = _grid(h, w)
    if table == "wood":
        grain = np.sin(0.08 * yy + 4 * _noise(rng, (h, w), 30) + 0.5 * _noise(rng, (h, w), 3))
        canvas = np.empty((h, w, 3), np.float32)
        canvas[:] = (150, 100, 62)
        canvas *= (1 + 0.12 * grain)[..., None]
    else:
        canvas = np.empty((h, w, 3), np.float32)
        canvas[:] = (26, 24, 24)
        canvas += 5 * _noise(rng, (h, w), 10)[..., None]
    cx, cy = w * 0.5, h * 0.5
    radius = np.hypot(xx - cx, yy - cy)
    saucer = radius <= 0.45 * w
    canvas[saucer] = (236, 234, 230)
    canvas[saucer] *= (0.85 + 0.15 * np.clip(1 - np.abs(radius[saucer] / (0.45 * w) - 0.75) * 3, 0, 1))[..., None]
    cup = radius <= 0.3 * w
    canvas[cup] = (245, 244, 241)
    coffee = radius <= 0.25 * w
    crema = 1 + 0.1 * _noise(rng, (h, w), 3) + 0.15 * _noise(rng, (h, w), 12)
    colour = np.array([150, 95, 50], np.float32) * crema[..., None]
    heart_x, heart_y = (xx - cx) / (0.12 * w), (yy - cy) / (0.12 * w)
    heart = (heart_x ** 2 + (heart_y * 1.2 - np.sqrt(np.abs(heart_x)) * 0.8) ** 2) <= 1
    colour[heart] = (235, 215, 190)
    colour = cv2.GaussianBlur(colour, (0, 0), 1.5)
    canvas[coffee] = colour[coffee]
    handle = (np.abs(yy - cy) < 0.04 * h) & (xx > cx + 0.29 * w) & (xx < cx + 0.4 * w)
    canvas[handle] = (240, 238, 235)
    spoon = (np.abs((xx - cx) + 0.3 * (yy - cy) + 0.05 * w) < 0.015 * w) & (yy > cy + 0.3 * h) & (yy < cy + 0.46 * h)
    canvas[spoon] = (175, 178, 182)
    shadow = cv2.GaussianBlur(saucer.astype(np.float32), (0, 0), 8)
    canvas[~saucer] *= (1 - 0.35 * shadow[~saucer])[..., None]
    canvas += rng.normal(0, 2.5, canvas.shape)
    return _jpeg(_image(canvas), 88)


# --------------------------------------------------------------------------------------------- warm things on dark


def orange_ball() -> Image.Image:
    yy, xx = _grid(300, 300)
    ball = np.zeros((300, 300, 3), np.float32)
    inside = (xx - 150) ** 2 + (yy - 150) ** 2 < 120 ** 2
    shade = np.clip(1.1 - ((xx - 120) ** 2 + (yy - 120) ** 2) / 120 ** 2 / 1.5, 0.3, 1)
    ball[inside] = (np.array([235, 120, 20]) * shade[inside, None])
    ball += np.random.default_rng(3).normal(0, 4, ball.shape) * inside[..., None]
    return _image(ball)


def basketball(size: int = 360) -> Image.Image:
    """An orange pebbled ball with its black seams (dark curved lines) on a dark floor."""
    rng = np.random.default_rng(17)
    h = w = size
    canvas = np.full((h, w, 3), 30, np.float32) + 6 * _noise(rng, (h, w), 20)[..., None]
    cx, cy, r = w / 2, h / 2, 0.42 * w
    inside, shade = _disc_shading(h, w, cx, cy, r)
    pebbles = 1 + 0.08 * _noise(rng, (h, w), 1.2)
    ball = np.array([225, 110, 35], np.float32) * (shade * pebbles)[..., None]
    seams = np.zeros((h, w), np.uint8)
    cv2.line(seams, (int(cx), int(cy - r)), (int(cx), int(cy + r)), 1, 5)
    cv2.line(seams, (int(cx - r), int(cy)), (int(cx + r), int(cy)), 1, 5)
    for side in (-1, 1):
        cv2.ellipse(seams, (int(cx + side * 1.15 * r), int(cy)), (int(0.75 * r), int(1.0 * r)), 0, 0, 360, 1, 5)
    ball[seams.astype(bool)] *= 0.15
    canvas[inside] = ball[inside]
    return _jpeg(_image(cv2.GaussianBlur(canvas, (0, 0), 0.8) + rng.normal(0, 2, canvas.shape)), 90)


def sunset_gradient() -> Image.Image:
    sunset = np.zeros((300, 400, 3), np.float32)
    sunset[:] = np.linspace([250, 180, 60], [150, 40, 30], 300)[:, None, :]
    return _image(sunset)


def sunset_over_sea(size: int = 420) -> Image.Image:
    """An orange sky, a low sun, a dark sea with its glitter and a black headland with trees."""
    rng = np.random.default_rng(19)
    h, w = int(0.75 * size), size
    yy, xx = _grid(h, w)
    horizon = int(0.62 * h)
    canvas = np.zeros((h, w, 3), np.float32)
    canvas[:horizon] = np.linspace([120, 40, 60], [250, 140, 40], horizon)[:, None, :]
    canvas[:horizon] *= (1 + 0.08 * _noise(rng, (horizon, w), 18))[..., None]
    sun = np.hypot(xx - 0.6 * w, yy - (horizon - 0.06 * h))
    canvas += np.exp(-(sun / (0.05 * w)) ** 4)[..., None] * np.array([255, 210, 130])
    sea = np.zeros((h - horizon, w, 3), np.float32)
    sea[:] = (40, 22, 30)
    glitter = np.exp(-((xx[horizon:] - 0.6 * w) / (0.08 * w)) ** 2) * (rng.random((h - horizon, w)) > 0.8)
    sea += glitter[..., None] * np.array([240, 150, 60])
    canvas[horizon:] = sea
    land = yy > horizon - 0.18 * h * np.exp(-((xx - 0.12 * w) / (0.12 * w)) ** 2)
    canvas[land & (xx < 0.35 * w)] = (12, 8, 10)
    return _jpeg(_image(cv2.GaussianBlur(canvas, (0, 0), 1.0)), 85)


def glowing_lamp(size: int = 360) -> Image.Image:
    """A warm bulb glowing on black, its filament a bright thin loop."""
    rng = np.random.default_rng(23)
    h = w = size
    yy, xx = _grid(h, w)
    r = np.hypot(xx - w / 2, yy - h * 0.45)
    glow = np.exp(-(r / (0.22 * w)) ** 2)
    canvas = glow[..., None] * np.array([255, 150, 50], np.float32) + np.exp(-(r / (0.08 * w)) ** 2)[..., None] * 80
    filament = np.zeros((h, w), np.float32)
    cv2.ellipse(filament, (w // 2, int(h * 0.45)), (int(0.06 * w), int(0.03 * h)), 0, 180, 360, 1.0, 2, cv2.LINE_AA)
    canvas += filament[..., None] * np.array([255, 240, 200])
    base = (np.abs(xx - w / 2) < 0.07 * w) & (yy > 0.66 * h) & (yy < 0.8 * h)
    canvas[base] = (70, 66, 60)
    canvas += rng.normal(0, 2, canvas.shape)
    return _jpeg(_image(canvas), 90)


def paper_lantern(size: int = 360) -> Image.Image:
    """A red-orange paper lantern lit from inside, with dark curved ribs, hanging in the dark."""
    rng = np.random.default_rng(29)
    h = w = size
    yy, xx = _grid(h, w)
    cx, cy, rx, ry = w / 2, h / 2, 0.4 * w, 0.36 * h
    u, v = (xx - cx) / rx, (yy - cy) / ry
    inside = u ** 2 + v ** 2 <= 1
    glow = np.clip(1.1 - 0.6 * (u ** 2 + v ** 2), 0, 1)
    canvas = np.full((h, w, 3), 8, np.float32)
    paper = np.array([235, 90, 40], np.float32) * (glow * (1 + 0.05 * _noise(rng, (h, w), 2)))[..., None]
    ribs = np.abs(np.sin(9 * np.arcsin(np.clip(v, -1, 1)))) < 0.08
    paper[ribs] *= 0.45
    canvas[inside] = paper[inside]
    return _jpeg(_image(cv2.GaussianBlur(canvas, (0, 0), 0.7)), 90)


def planet(size: int = 360) -> Image.Image:
    """A Mars-like planet: a red-orange disc with dark mottled regions and a white polar cap, on black."""
    rng = np.random.default_rng(31)
    h = w = size
    cx, cy, r = w / 2, h / 2, 0.42 * w
    inside, shade = _disc_shading(h, w, cx, cy, r, light=(-0.2, -0.1))
    albedo = 1 - 0.35 * (_noise(rng, (h, w), 14) > 0.6) - 0.1 * _noise(rng, (h, w), 4)
    surface = np.array([200, 105, 60], np.float32) * (shade * albedo)[..., None]
    yy, xx = _grid(h, w)
    cap = inside & (yy < cy - 0.85 * r)
    surface[cap] = (235, 230, 225)
    canvas = np.zeros((h, w, 3), np.float32)
    canvas[inside] = surface[inside]
    return _image(cv2.GaussianBlur(canvas, (0, 0), 1.0) + rng.normal(0, 1.5, canvas.shape))


def moon(size: int = 360) -> Image.Image:
    """A full moon: a grey disc with darker seas and small craters on black."""
    rng = np.random.default_rng(37)
    h = w = size
    cx, cy, r = w / 2, h / 2, 0.4 * w
    inside, shade = _disc_shading(h, w, cx, cy, r, light=(0.0, 0.0))
    grey = 200 * (1 - 0.3 * (_noise(rng, (h, w), 18) > 0.5)) * (1 + 0.05 * _noise(rng, (h, w), 1.5))
    canvas = np.zeros((h, w, 3), np.float32)
    canvas[inside] = (grey * np.clip(shade, 0.7, 1.2))[inside][..., None] * np.array([1.0, 0.99, 0.95])
    for _ in range(40):
        x, y = rng.uniform(cx - 0.8 * r, cx + 0.8 * r), rng.uniform(cy - 0.8 * r, cy + 0.8 * r)
        cv2.circle(canvas, (int(x), int(y)), int(rng.integers(2, 9)), (120, 118, 112), 1, cv2.LINE_AA)
    return _image(canvas)


def flames(size: int = 360) -> Image.Image:
    """Flames on black: orange-yellow tongues rising from the bottom."""
    rng = np.random.default_rng(41)
    h = w = size
    yy, xx = _grid(h, w)
    turbulence = _noise(rng, (h, w), 10) + 0.5 * _noise(rng, (h, w), 4)
    heat = np.clip((yy / h) * 1.6 - 0.45 + 0.35 * turbulence - 1.5 * np.abs(xx / w - 0.5), 0, 1)
    canvas = np.stack([255 * np.clip(heat * 1.8, 0, 1), 230 * np.clip(heat * 1.6 - 0.5, 0, 1),
                       120 * np.clip(heat * 2 - 1.5, 0, 1)], axis=-1)
    return _image(canvas)


def orange_slice(size: int = 360) -> Image.Image:
    """A halved orange seen from the cut side: peel ring, pith, segments with pale membranes, on slate."""
    rng = np.random.default_rng(43)
    h = w = size
    yy, xx = _grid(h, w)
    canvas = np.full((h, w, 3), 40, np.float32) + 6 * _noise(rng, (h, w), 6)[..., None]
    cx, cy, r = w / 2, h / 2, 0.42 * w
    radius = np.hypot(xx - cx, yy - cy)
    angle = np.arctan2(yy - cy, xx - cx)
    canvas[radius <= r] = (240, 130, 20)
    canvas[radius <= 0.93 * r] = (250, 225, 180)
    flesh = radius <= 0.88 * r
    pulp = np.array([245, 150, 30], np.float32) * (1 + 0.12 * _noise(rng, (h, w), 1.5))[..., None]
    membranes = np.abs(np.sin(5.5 * angle)) < 0.05 + 0.02 * (radius / r)
    pulp[membranes] = (250, 220, 170)
    pulp[radius < 0.08 * r] = (250, 225, 185)
    canvas[flesh] = pulp[flesh]
    return _jpeg(_image(cv2.GaussianBlur(canvas, (0, 0), 0.8)), 88)


# --------------------------------------------------------------------------------------------- skin and food


def skin_close_up(size: int = 400) -> Image.Image:
    """Skin filling the frame: pink-beige with pores, fine creases and a few dark hairs."""
    rng = np.random.default_rng(47)
    h = w = size
    yy, xx = _grid(h, w)
    tone = np.array([214, 160, 135], np.float32)
    canvas = tone * (1 + 0.05 * _noise(rng, (h, w), 30) + 0.03 * _noise(rng, (h, w), 2))[..., None]
    pores = rng.random((h, w)) > 0.985
    canvas[cv2.dilate(pores.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool)] *= 0.8
    creases = np.abs(np.sin(0.09 * (xx + 0.6 * yy) + 3 * _noise(rng, (h, w), 25))) < 0.04
    canvas[creases] *= 0.88
    hairs = np.zeros((h, w), np.uint8)
    for _ in range(10):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        a = rng.uniform(0, np.pi)
        points = [(x + t * math.cos(a + 0.002 * t * t), y + t * math.sin(a)) for t in np.linspace(0, 90, 12)]
        cv2.polylines(hairs, [np.array(points, np.int32)], False, 1, 1, cv2.LINE_AA)
    canvas[hairs.astype(bool)] *= 0.45
    return _jpeg(_image(cv2.GaussianBlur(canvas, (0, 0), 0.6)), 90)


def pizza(size: int = 420) -> Image.Image:
    """A pizza from above on a dark board: crust ring, tomato, melted cheese, pepperoni and basil."""
    rng = np.random.default_rng(53)
    h = w = size
    yy, xx = _grid(h, w)
    canvas = np.full((h, w, 3), 35, np.float32) + 8 * _noise(rng, (h, w), 8)[..., None]
    cx, cy = w / 2, h / 2
    radius = np.hypot(xx - cx, yy - cy)
    crust = radius <= 0.45 * w
    canvas[crust] = np.array([200, 140, 70]) * (1 + 0.1 * _noise(rng, (h, w), 3))[crust][..., None]
    top = radius <= 0.39 * w
    cheese = _noise(rng, (h, w), 6) > 0.2
    base = np.where(cheese[..., None], np.array([240, 205, 120]), np.array([200, 50, 30])).astype(np.float32)
    base *= (1 + 0.08 * _noise(rng, (h, w), 1.5))[..., None]
    canvas[top] = base[top]
    for _ in range(14):
        x, y = rng.uniform(cx - 0.3 * w, cx + 0.3 * w), rng.uniform(cy - 0.3 * h, cy + 0.3 * h)
        if math.hypot(x - cx, y - cy) < 0.33 * w:
            cv2.circle(canvas, (int(x), int(y)), int(0.04 * w), (160, 35, 30), -1, cv2.LINE_AA)
    for _ in range(6):
        x, y = rng.uniform(cx - 0.25 * w, cx + 0.25 * w), rng.uniform(cy - 0.25 * h, cy + 0.25 * h)
        cv2.ellipse(canvas, (int(x), int(y)), (10, 5), float(rng.uniform(0, 180)), 0, 360, (40, 110, 40), -1)
    return _jpeg(_image(cv2.GaussianBlur(canvas, (0, 0), 0.8)), 88)


def steak(size: int = 400) -> Image.Image:
    """Raw beef filling the frame: dark red with pale fat marbling."""
    rng = np.random.default_rng(59)
    h = w = size
    canvas = np.array([150, 35, 40], np.float32) * (1 + 0.12 * _noise(rng, (h, w), 8)
                                                    + 0.05 * _noise(rng, (h, w), 1.5))[..., None]
    marbling = np.abs(_noise(rng, (h, w), 9)) < 0.08
    canvas[marbling] = (230, 200, 195)
    return _jpeg(_image(cv2.GaussianBlur(canvas, (0, 0), 0.7)), 88)


def tomato_soup(size: int = 400) -> Image.Image:
    """A bowl of tomato soup from above on a dark table, with a swirl of cream and herbs."""
    rng = np.random.default_rng(61)
    h = w = size
    yy, xx = _grid(h, w)
    canvas = np.full((h, w, 3), 28, np.float32) + 5 * _noise(rng, (h, w), 12)[..., None]
    radius = np.hypot(xx - w / 2, yy - h / 2)
    canvas[radius <= 0.44 * w] = (60, 80, 95)
    soup = radius <= 0.36 * w
    angle = np.arctan2(yy - h / 2, xx - w / 2)
    swirl = np.abs(np.sin(angle * 1 + radius / (0.05 * w))) < 0.12
    colour = np.array([205, 60, 30], np.float32) * (1 + 0.06 * _noise(rng, (h, w), 5))[..., None]
    colour[swirl & (radius < 0.2 * w)] = (235, 200, 180)
    canvas[soup] = colour[soup]
    herbs = (rng.random((h, w)) > 0.995) & soup
    canvas[cv2.dilate(herbs.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)] = (50, 100, 40)
    return _jpeg(_image(cv2.GaussianBlur(canvas, (0, 0), 0.8)), 88)


def wood_grain(size: int = 400) -> Image.Image:
    """A wooden board filling the frame: warm brown with dark wavy grain lines and a knot."""
    rng = np.random.default_rng(67)
    h = w = size
    yy, xx = _grid(h, w)
    knot = 40 * np.exp(-(((xx - 0.6 * w) ** 2 + (yy - 0.4 * h) ** 2) / (0.08 * w) ** 2))
    grain = np.sin(0.25 * (yy + knot) + 2.5 * _noise(rng, (h, w), 40))
    shade = 1 - 0.18 * (grain > 0.8) + 0.04 * _noise(rng, (h, w), 2)
    canvas = np.array([170, 110, 60], np.float32) * shade[..., None]
    return _jpeg(_image(canvas), 88)


# --------------------------------------------------------------------------------------------- other medical images


def red_free(fundus: Image.Image) -> Image.Image:
    """A red-free photograph: the green channel of a colour fundus photo, as grey."""
    green = np.asarray(fundus)[..., 1]
    return Image.fromarray(np.stack([green] * 3, axis=-1))


def angiogram(fundus: Image.Image) -> Image.Image:
    """A fluorescein angiogram look-alike: bright vessels on a dark grey retina (inverted green)."""
    rgb = np.asarray(fundus, np.float32)
    green = rgb[..., 1]
    lit = rgb.max(axis=2) > 15
    level = float(np.percentile(green[lit], 60))
    dye = np.clip((level - green) / max(level, 1) * 3.5, 0, 1) * 200 + 40
    out = np.where(lit, dye, 0)
    return Image.fromarray(np.stack([out.astype(np.uint8)] * 3, axis=-1))


def oct_slice(width: int = 512, height: int = 256) -> Image.Image:
    """An OCT B-scan look-alike: curved bright and dark retinal layers with speckle, the foveal dip, on black."""
    rng = np.random.default_rng(71)
    yy, xx = _grid(height, width)
    surface = 0.35 * height + 0.08 * height * ((xx - width / 2) / width) ** 2 * 4 \
        - 0.06 * height * np.exp(-((xx - width / 2) / (0.06 * width)) ** 2)
    depth = yy - surface
    layers = np.zeros((height, width), np.float32)
    for offset, thickness, brightness in ((0, 6, 200), (10, 14, 110), (28, 10, 160), (45, 8, 90), (60, 7, 230),
                                          (70, 9, 190)):
        layers += brightness * np.exp(-((depth - offset) / thickness) ** 2)
    speckle = rng.gamma(2.0, 0.5, (height, width)).astype(np.float32)
    image = np.clip(layers * speckle, 0, 255)
    return Image.fromarray(np.stack([image.astype(np.uint8)] * 3, axis=-1))


def chest_xray(size: int = 400) -> Image.Image:
    """A chest radiograph look-alike: dark lungs, curved ribs, spine and heart shadow, in grey."""
    rng = np.random.default_rng(73)
    h = w = size
    yy, xx = _grid(h, w)
    image = np.full((h, w), 170, np.float32)
    for side in (-1, 1):
        lung = (((xx - w / 2 - side * 0.2 * w) / (0.16 * w)) ** 2 + ((yy - 0.5 * h) / (0.32 * h)) ** 2) <= 1
        image[lung] = 60
    for k in range(9):
        for side in (-1, 1):
            cv2.ellipse(image, (int(w / 2), int(0.22 * h + 0.065 * h * k)), (int(0.36 * w), int(0.09 * h)), 0,
                        90 - side * 90 + (0 if side > 0 else 0), 90 - side * 90 + side * 80, 120, 4, cv2.LINE_AA)
    image[np.abs(xx - w / 2) < 0.04 * w] = 200
    heart = ((xx - 0.55 * w) / (0.15 * w)) ** 2 + ((yy - 0.62 * h) / (0.13 * h)) ** 2 <= 1
    image[heart] = 175
    image = cv2.GaussianBlur(image, (0, 0), 3) + 4 * rng.normal(0, 1, (h, w))
    return Image.fromarray(np.stack([np.clip(image, 0, 255).astype(np.uint8)] * 3, axis=-1))


def matplotlib_mri() -> Image.Image:
    """The brain MRI slice that ships with matplotlib (16-bit big-endian 256 x 256), in grey."""
    with gzip.open(_matplotlib_sample("s1045.ima.gz")) as handle:
        scan = np.frombuffer(handle.read(), ">u2").reshape(256, 256).astype(np.float32)
    grey = (scan / scan.max() * 255).astype(np.uint8)
    return Image.fromarray(np.stack([grey] * 3, axis=-1))


# --------------------------------------------------------------------------------------------- vessel masks


def vessel_mask(inverted: bool = False, size: int = 400) -> Image.Image:
    """A vessel segmentation: a white vessel tree inside a circular field of view on black (or inverted)."""
    tree = _vessel_tree(size, seed=3)
    yy, xx = _grid(size, size)
    fov = np.hypot(xx - size / 2, yy - size / 2) <= 0.47 * size
    tree[~fov] = 0
    if inverted:
        tree = np.where(fov, 255 - tree, 0).astype(np.uint8)
    return Image.fromarray(np.stack([tree] * 3, axis=-1))


def field_of_view_mask(size: int = 400) -> Image.Image:
    """A field-of-view mask: a white disc on black."""
    image = Image.new("RGB", (size, size), (0, 0, 0))
    ImageDraw.Draw(image).ellipse((12, 12, size - 12, size - 12), fill=(255, 255, 255))
    return image


def real_vessel_masks(root: Path = REAL_DATA) -> dict[str, Image.Image]:
    """A manual vessel segmentation from DRIVE and from CHASE_DB1, where the data are present."""
    masks = {}
    for name, path in (("DRIVE manual vessel mask", root / "drive/training/1st_manual/21_manual1.png"),
                       ("CHASE_DB1 manual vessel mask", root / "chase_db1/Image_01L_1stHO.png")):
        if path.is_file():
            with Image.open(path) as mask:
                masks[name] = mask.convert("RGB")
    return masks


# --------------------------------------------------------------------------------------------- a fundus in a picture


def fundus_on_slide(fundus: Image.Image) -> Image.Image:
    """A presentation slide: a white page with a title, bullet points and a fundus photo on it."""
    slide = Image.new("RGB", (800, 600), (255, 255, 255))
    draw = ImageDraw.Draw(slide)
    draw.rectangle((0, 0, 800, 70), fill=(30, 60, 120))
    draw.text((30, 25), "Case 3: moderate NPDR, left eye", fill=(255, 255, 255))
    for i in range(6):
        draw.text((470, 140 + 40 * i), f"- finding {i + 1}: haemorrhages, exudates", fill=(30, 30, 30))
    slide.paste(fundus.resize((380, 380)), (50, 140))
    return slide


# --------------------------------------------------------------------------------------------- natural photos


def outdoor() -> Image.Image:
    rng = np.random.default_rng(0)
    picture = np.zeros((300, 400, 3), np.float32)
    picture[:150] = np.linspace([90, 150, 230], [170, 210, 250], 150)[:, None, :]      # blue sky
    texture = cv2.GaussianBlur(rng.normal(0, 1, (150, 400)).astype(np.float32), (0, 0), 2)
    picture[150:] = np.array([70, 130, 50]) * (1 + 0.35 * texture[..., None])           # grass
    return _image(picture)


def terrain_map() -> Image.Image:
    """matplotlib's sample elevation model of the Jacksboro fault, hill-shaded in 'terrain' colours:
    a river network branches like a vessel tree."""
    from matplotlib import cm
    from matplotlib.colors import LightSource
    with np.load(_matplotlib_sample("jacksboro_fault_dem.npz")) as dem:
        elevation = dem["elevation"].astype(np.float64)
    shaded = LightSource(azdeg=315, altdeg=45).shade(elevation, cmap=cm.gist_earth, blend_mode="overlay")
    return Image.fromarray((shaded[..., :3] * 255).astype(np.uint8))


def _matplotlib_sample(name: str) -> Path:
    import matplotlib
    return Path(matplotlib.get_data_path()) / "sample_data" / name


def sample_photos() -> dict[str, Image.Image]:
    """The photos shipped inside scikit-learn (china, flower) and matplotlib (Grace Hopper, a drawn present,
    the matplotlib logo)."""
    from sklearn.datasets import load_sample_images
    shipped = load_sample_images()
    photos = {f"scikit-learn {Path(name).stem}": Image.fromarray(image)
              for name, image in zip(shipped.filenames, shipped.images)}
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
        with Image.open(_matplotlib_sample(name)) as photo:
            photos[f"matplotlib {Path(name).stem}"] = photo.convert("RGB")
    return photos


# --------------------------------------------------------------------------------------------- the corpus


def _plain(colour: tuple[int, int, int]) -> Callable[[], Image.Image]:
    return lambda: Image.new("RGB", (400, 300), colour)


def _noise_picture() -> Image.Image:
    return Image.fromarray(np.random.default_rng(2).integers(0, 256, (240, 320, 3), dtype=np.uint8))


SCREEN = "fundus on a screen or a slide"
# name -> (category, how to make it).
NON_FUNDUS: dict[str, tuple[str, Callable[[], Image.Image]]] = {
    "text document": ("documents and screenshots", document),
    "screenshot": ("documents and screenshots", screenshot),
    "dark code editor": ("documents and screenshots", dark_code_editor),
    "bar chart": ("charts", bar_chart),
    "line figure": ("charts", line_figure),
    "pie chart": ("charts", pie_chart),
    "heat map chart": ("charts", heat_map_chart),
    "dark polar chart": ("charts", dark_polar_chart),
    "face-like oval": ("faces and animals", face),
    "face-like oval on black": ("faces and animals", lambda: face((5, 5, 5))),
    "cat face": ("faces and animals", cat_face),
    "cat face on a dark sofa": ("faces and animals", lambda: cat_face("dark")),
    "cat face close-up": ("faces and animals", lambda: cat_face("close-up")),
    "external eye photo": ("faces and animals", external_eye),
    "coffee cup on a wooden table": ("cups", coffee_cup),
    "coffee cup on a dark table": ("cups", lambda: coffee_cup("dark")),
    "orange ball on black": ("warm objects on dark backgrounds", orange_ball),
    "basketball": ("warm objects on dark backgrounds", basketball),
    "sunset gradient": ("warm objects on dark backgrounds", sunset_gradient),
    "sunset over the sea": ("warm objects on dark backgrounds", sunset_over_sea),
    "glowing lamp": ("warm objects on dark backgrounds", glowing_lamp),
    "paper lantern": ("warm objects on dark backgrounds", paper_lantern),
    "planet": ("warm objects on dark backgrounds", planet),
    "full moon": ("warm objects on dark backgrounds", moon),
    "flames": ("warm objects on dark backgrounds", flames),
    "halved orange": ("warm objects on dark backgrounds", orange_slice),
    "skin close-up": ("skin and food", skin_close_up),
    "pizza": ("skin and food", pizza),
    "raw steak": ("skin and food", steak),
    "tomato soup": ("skin and food", tomato_soup),
    "wood grain": ("skin and food", wood_grain),
    "red-free fundus": ("other medical images", lambda: red_free(_with_layout("circle"))),
    "greyscale fundus": ("other medical images", lambda: _with_layout("circle").convert("L").convert("RGB")),
    "angiogram-like": ("other medical images", lambda: angiogram(_with_layout("circle"))),
    "OCT slice": ("other medical images", oct_slice),
    "chest X-ray": ("other medical images", chest_xray),
    "matplotlib MRI slice": ("other medical images", matplotlib_mri),
    "vessel mask": ("vessel masks", vessel_mask),
    "inverted vessel mask": ("vessel masks", lambda: vessel_mask(inverted=True)),
    "field-of-view mask": ("vessel masks", field_of_view_mask),
    "photo of a screen showing a fundus": (SCREEN, lambda: screen_photo(_with_layout("circle"))),
    "slide with a fundus photo": (SCREEN, lambda: fundus_on_slide(_with_layout("circle"))),
    "blank white": ("plain frames and noise", _plain((255, 255, 255))),
    "black frame": ("plain frames and noise", _plain((0, 0, 0))),
    "mid-grey frame": ("plain frames and noise", _plain((128, 128, 128))),
    "colour noise": ("plain frames and noise", _noise_picture),
    "outdoor photo": ("natural photos", outdoor),
    "terrain map": ("natural photos", terrain_map),
}


def non_fundus_cases(root: Path = REAL_DATA) -> dict[str, tuple[str, Image.Image]]:
    """{name: (category, picture)}: everything in NON_FUNDUS, the shipped sample photos, and the real
    vessel masks where the data are present."""
    cases = {name: (category, make()) for name, (category, make) in NON_FUNDUS.items()}
    cases.update({name: ("natural photos", photo) for name, photo in sample_photos().items()})
    cases.update({name: ("vessel masks", mask) for name, mask in real_vessel_masks(root).items()})
    return cases
