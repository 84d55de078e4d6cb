"""A small test corpus for the image gate: fundus-like photos in realistic camera variety, and pictures
that are not fundus photos. Everything is made here, procedurally and small, so the tests stay fast.

`fundus_cases()` and `other_cases()` return {name: PIL image}; `encoded(image, ...)` gives file bytes.
"""

from __future__ import annotations

import functools
import io

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from drdemo.data.synthetic import generate_fundus


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
    out = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))
    return _jpeg(out.rotate(3, resample=Image.Resampling.BILINEAR, fillcolor=(118, 116, 112)), 80)


def fundus_cases() -> dict[str, Image.Image]:
    """Photos the gate must accept as fundus photos."""
    circle = _with_layout("circle")
    cases = {
        "synthetic grade 0, 320 px": synthetic(1, 0),
        "synthetic grade 2, 384 px": synthetic(2, 2, 384),
        "synthetic grade 4, 256 px": synthetic(3, 4, 256),
        "synthetic grade 3, 512 px": synthetic(4, 3, 512),
        "synthetic circle": circle,
        "synthetic clipped circle": _with_layout("clipped"),
        "synthetic rect (no border)": _with_layout("rect"),
        "crop without border": circle.crop((80, 80, 240, 220)).resize((320, 280)),
        "yellow cast": _gain(circle, (1.05, 1.0, 0.55)),
        "dark": _gain(circle, (0.5, 0.5, 0.5)),
        "washed out": _gain(circle, (1.0, 1.0, 1.0), haze=0.4),
        "greenish cast": _gain(circle, (0.85, 1.15, 1.0)),
        "200 px thumbnail": circle.resize((200, 200), Image.Resampling.LANCZOS),
        "heavy JPEG (quality 8)": _jpeg(circle, 8),
        "photo of a screen": screen_photo(circle),
        "strongly blurred": circle.filter(ImageFilter.GaussianBlur(6)),
        "very dark": _gain(circle, (0.16, 0.16, 0.16)),
        "strongly washed out": _gain(circle, (1.0, 1.0, 1.0), haze=0.6, haze_colour=(225, 225, 225)),
        "blurred (sigma 2 px)": circle.filter(ImageFilter.GaussianBlur(2)),
        "blurred (sigma 3 px)": circle.filter(ImageFilter.GaussianBlur(3)),
    }
    return cases


def bar_chart() -> Image.Image:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(4, 3), dpi=80)
    axes.bar(["a", "b", "c", "d"], [3, 5, 2, 4], color=["C0", "C1", "C1", "C3"])
    axes.set_title("Referrals per clinic")
    image = _figure_image(figure)
    plt.close(figure)
    return image


def line_figure() -> Image.Image:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(4, 3), dpi=80)
    x = np.linspace(0, 6, 50)
    axes.plot(x, np.sin(x), "C1-", x, np.cos(x), "C3--")
    axes.set_xlabel("epoch")
    axes.legend(["train", "val"])
    image = _figure_image(figure)
    plt.close(figure)
    return image


def _figure_image(figure) -> Image.Image:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def document() -> Image.Image:
    image = Image.new("RGB", (360, 480), "white")
    draw = ImageDraw.Draw(image)
    for line in range(22):
        draw.text((20, 16 + 20 * line), f"Patient referral letter, page 1, line {line}: lorem ipsum", fill=(20, 20, 20))
    return image


def outdoor() -> Image.Image:
    rng = np.random.default_rng(0)
    picture = np.zeros((300, 400, 3), np.float32)
    picture[:150] = np.linspace([90, 150, 230], [170, 210, 250], 150)[:, None, :]      # blue sky
    texture = cv2.GaussianBlur(rng.normal(0, 1, (150, 400)).astype(np.float32), (0, 0), 2)
    picture[150:] = np.array([70, 130, 50]) * (1 + 0.35 * texture[..., None])           # grass
    return Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8))


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
    return Image.fromarray(np.clip(shading, 0, 255).astype(np.uint8))


def other_cases() -> dict[str, Image.Image]:
    """Pictures the gate must refuse as not fundus photos."""
    rng = np.random.default_rng(2)
    return {
        "blank white": Image.new("RGB", (400, 300), (255, 255, 255)),
        "black frame": Image.new("RGB", (400, 300), (0, 0, 0)),
        "mid-grey frame": Image.new("RGB", (400, 300), (128, 128, 128)),
        "bar chart": bar_chart(),
        "line figure": line_figure(),
        "text document": document(),
        "outdoor photo": outdoor(),
        "face-like oval": face(),
        "colour noise": Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)),
    }


def tricky_cases() -> dict[str, Image.Image]:
    """Not fundus photos, but built from the same physical cues; reported, not asserted."""
    yy, xx = np.mgrid[0:300, 0:300].astype(np.float32)
    ball = np.zeros((300, 300, 3), np.float32)
    inside = (xx - 150) ** 2 + (yy - 150) ** 2 < 120 ** 2
    shade = np.clip(1.1 - ((xx - 120) ** 2 + (yy - 120) ** 2) / 120 ** 2 / 1.5, 0.3, 1)
    ball[inside] = (np.array([235, 120, 20]) * shade[inside, None])
    ball += np.random.default_rng(3).normal(0, 4, ball.shape) * inside[..., None]
    sunset = np.zeros((300, 400, 3), np.float32)
    sunset[:] = np.linspace([250, 180, 60], [150, 40, 30], 300)[:, None, :]
    return {
        "orange ball on black": Image.fromarray(np.clip(ball, 0, 255).astype(np.uint8)),
        "face-like oval on black": face((5, 5, 5)),
        "sunset gradient": Image.fromarray(np.clip(sunset, 0, 255).astype(np.uint8)),
    }
