"""bench/run_speed.py's two workloads, each a compiled model and a folder of images (prepared, not timed):
the shipped digits model with scikit-learn's digits as PNGs, and resnet50 with photograph-like JPEGs."""
from __future__ import annotations

import time
from pathlib import Path

from _common import console_script
from _timing import run_process

DIGITS_SPEC = "specs/digits_resnet.yaml"
DIGITS_WEIGHTS = "specs/weights/digits_resnet.safetensors"
RESNET_SPEC = "specs/resnet50.yaml"

JPEG_SIZES = ((500, 375), (375, 500), (640, 480), (333, 500), (500, 333), (480, 640), (500, 400), (400, 500),
              (800, 600), (500, 500), (600, 450), (1024, 768), (375, 500), (500, 375), (427, 640), (640, 427))


def digit_pngs(out: Path) -> dict[str, int]:
    """All 1,797 scikit-learn digits as 8-bit greyscale PNGs in `out` (pixel = round(v * 255 / 16), mode "L",
    as examples/digits/make_samples.py writes them), the true label in the name.  Returns path -> label."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    d = load_digits()
    out.mkdir()
    for i, (im, label) in enumerate(zip(d.images, d.target)):
        pixels = np.round(im * 255.0 / 16.0).astype(np.uint8)          # make_samples.py's to_png_pixels
        Image.fromarray(pixels, mode="L").save(out / f"{i:04d}_digit-{int(label)}.png")
    return {str(out / f"{i:04d}_digit-{int(t)}.png"): int(t) for i, t in enumerate(d.target)}


def make_jpegs(out: Path, n: int, seed: int = 0) -> int:
    """n photograph-like JPEGs: gradients + low-frequency waves, shapes, pixel noise; quality 90."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n):
        w, h = JPEG_SIZES[i % len(JPEG_SIZES)]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.empty((h, w, 3), np.float32)
        for c in range(3):
            gx, gy = rng.uniform(-1, 1, 2)
            fx, fy = rng.uniform(0.3, 3.0, 2)
            img[..., c] = (rng.uniform(80, 170) + 70 * (gx * xx / w + gy * yy / h)
                           + 35 * np.sin(2 * np.pi * (fx * xx / w + fy * yy / h) + rng.uniform(0, 2 * np.pi)))
        im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(4, 12))):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            x1, y1 = x0 + int(rng.integers(w // 10, w // 2)), y0 + int(rng.integers(h // 10, h // 2))
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            kind = int(rng.integers(0, 3))
            if kind == 0:
                draw.ellipse((x0, y0, x1, y1), fill=fill)
            elif kind == 1:
                draw.rectangle((x0, y0, x1, y1), fill=fill)
            else:
                pts = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(int(rng.integers(3, 7)))]
                draw.polygon(pts, fill=fill)
        im = im.filter(ImageFilter.GaussianBlur(1.5))                     # soft edges, as a lens gives
        a = np.asarray(im, dtype=np.float32) + rng.normal(0, 6, (h, w, 3)).astype(np.float32)   # sensor noise
        path = out / f"img_{i:03d}.jpg"
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB").save(path, quality=90)
        total += path.stat().st_size
    return total


def prepare_digits(work: Path, prog: str) -> dict:
    """`resgraph compile` of the digits spec with its trained weights, and all the digits as PNGs."""
    t0 = time.perf_counter()
    folder = work / "digits"
    run_process([str(console_script(prog)), "compile", DIGITS_SPEC, "--weights", DIGITS_WEIGHTS, "-o", str(folder)],
                prog)
    png = work / "digits_png"
    truth = digit_pngs(png)
    n = len(truth)
    print(f"   compiled {DIGITS_SPEC} (trained weights) -> {folder}; wrote {n:,} digits as 8x8 greyscale PNGs "
          f"({time.perf_counter() - t0:.1f} s, not timed)")
    return {"folder": folder, "images": png, "kind": "digits", "n": n, "truth": truth}


def prepare_resnet(work: Path, n: int, prog: str) -> dict:
    """`resgraph compile` of resnet50 without weights (a seeded fresh init), and n JPEGs."""
    t0 = time.perf_counter()
    folder = work / "resnet50"
    run_process([str(console_script(prog)), "compile", RESNET_SPEC, "-o", str(folder)], prog)
    t1 = time.perf_counter()
    jpg = work / "jpeg"
    jpg.mkdir()
    size = make_jpegs(jpg, n)
    print(f"   compiled {RESNET_SPEC} (fresh init, seed 0) -> {folder} ({t1 - t0:.1f} s); wrote {n} JPEGs, "
          f"{size / n / 1024:.0f} KiB each on average, sizes {', '.join(f'{w}x{h}' for w, h in JPEG_SIZES[:min(n, 6)])}, "
          f"... ({time.perf_counter() - t1:.1f} s; not timed)")
    return {"folder": folder, "images": jpg, "kind": "imagenet", "n": n, "truth": None, "jpeg_bytes": size}
