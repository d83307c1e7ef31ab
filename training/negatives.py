"""Generated images that are not frontal chest X-rays, for measuring the check in `shared.frontal`.

Each kind stands for something people upload by mistake: noise and smooth gradients (blank or
broken exports), a chart as in a paper's figure, a page of text, a colour picture, and a photo of a
film (a real X-ray at an angle on a coloured background under uneven light). Seeded: the same
images every run. PNG bytes, as an upload would bring them.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

SIZE = 256


def _png(image: Image.Image | np.ndarray) -> bytes:
    picture = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    out = io.BytesIO()
    picture.save(out, "PNG")
    return out.getvalue()


def noise(rng: np.random.Generator) -> bytes:
    return _png(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8))


def gradient(rng: np.random.Generator) -> bytes:
    x = np.linspace(0.0, 1.0, SIZE)
    a, b = rng.uniform(-1.5, 1.5, 2)
    return _png((255 * (np.add.outer(a * x, b * x) % 1.0)).astype(np.uint8))


def chart(rng: np.random.Generator) -> bytes:
    """A figure: axes, a few coloured lines or bars, tick labels and a caption, on white."""
    image = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(image)
    draw.line([(30, 20), (30, 220), (240, 220)], fill="black", width=2)
    for tick in range(40, 240, 40):
        draw.text((tick - 6, 224), str(tick // 4), fill="black")
    for _ in range(int(rng.integers(1, 4))):
        colour = tuple(int(v) for v in rng.integers(0, 200, 3))
        if rng.random() < 0.5:
            ys = np.cumsum(rng.normal(0, 12, 11)) + 120
            draw.line([(30 + 21 * i, float(np.clip(y, 25, 215))) for i, y in enumerate(ys)], fill=colour, width=2)
        else:
            for i in range(6):
                top = int(rng.integers(40, 210))
                draw.rectangle([40 + 32 * i, top, 60 + 32 * i, 219], fill=colour)
    draw.text((40, 238), "Figure " + str(int(rng.integers(1, 9))) + ": results by group", fill="black")
    return _png(image)


def text_page(rng: np.random.Generator) -> bytes:
    image = Image.new("L", (SIZE, SIZE), 255)
    draw = ImageDraw.Draw(image)
    for line in range(14):
        words = " ".join("".join(chr(c) for c in rng.integers(97, 123, int(rng.integers(2, 9))))
                         for _ in range(5))
        draw.text((8, 8 + 17 * line), words, fill=0)
    return _png(image)


def colour_picture(rng: np.random.Generator) -> bytes:
    blobs = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return _png(Image.fromarray(blobs).resize((SIZE, SIZE), Image.BICUBIC))


def photo_of_film(rng: np.random.Generator, xray: bytes) -> bytes:
    """A real X-ray at an angle on a coloured background, lit unevenly (as by a phone's camera)."""
    film = Image.open(io.BytesIO(xray)).convert("RGB").resize((170, 170))
    film = film.rotate(float(rng.uniform(-15, 15)), expand=True, fillcolor=(30, 30, 30))
    image = Image.new("RGB", (SIZE, SIZE), tuple(int(v) for v in rng.integers(60, 200, 3)))
    image.paste(film, (int(rng.integers(0, 50)), int(rng.integers(0, 50))))
    light = np.linspace(0.6, 1.2, SIZE)[None, :, None]
    return _png(np.clip(np.asarray(image, dtype=np.float64) * light, 0, 255).astype(np.uint8))


KINDS: dict[str, Callable[[np.random.Generator], bytes]] = {
    "generated: random noise": noise,
    "generated: smooth gradient": gradient,
    "generated: chart (a paper's figure)": chart,
    "generated: page of text": text_page,
    "generated: colour picture": colour_picture,
}


def generated_negatives(per_kind: int, xrays: Sequence[bytes] = (), seed: int = 0) -> dict[str, list[bytes]]:
    """`per_kind` PNGs of each kind; photos of films only when real X-rays (`xrays`) are given."""
    rng = np.random.default_rng(seed)
    out = {name: [make(rng) for _ in range(per_kind)] for name, make in KINDS.items()}
    if xrays:
        out["generated: photo of a film"] = [photo_of_film(rng, xrays[i % len(xrays)]) for i in range(per_kind)]
    return out
