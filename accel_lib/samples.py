"""Small images the project generates itself (no data is downloaded): for tutorials, tests and parity checks."""
from __future__ import annotations

import io

import numpy as np


def synthetic_image(seed=0, height=300, width=400) -> np.ndarray:
    """A seeded RGB uint8 picture: a sky-to-ground gradient with a few coloured discs and bars."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = (yy / max(height - 1, 1))[..., None]
    img = top * (1 - t) + bottom * t
    for _ in range(rng.integers(3, 7)):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.08, 0.3) * min(height, width)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[mask] = rng.uniform(0, 255, 3)
    for _ in range(rng.integers(1, 4)):
        x0 = int(rng.integers(0, width - 8))
        img[:, x0:x0 + int(rng.integers(4, 24))] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(img: np.ndarray, fmt="JPEG", quality=90) -> bytes:
    """RGB uint8 array -> JPEG or PNG bytes."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def sample_images(n=8, seed=0) -> list[bytes]:
    """``n`` encoded images of varied sizes, aspect ratios and formats (JPEG and PNG)."""
    rng = np.random.default_rng(seed + 1000)
    out = []
    for i in range(n):
        h, w = int(rng.integers(160, 420)), int(rng.integers(160, 420))
        out.append(encode(synthetic_image(seed + i, h, w), "PNG" if i % 3 == 2 else "JPEG"))
    return out


def sample_batch(n=8, image_size=224, order="RGB", seed=0) -> np.ndarray:
    """``n`` generated images preprocessed for the featurizer: float32 [n, size, size, 3]."""
    from .fpga.host import preprocess
    return preprocess(sample_images(n, seed), order=order, output_height=image_size, output_width=image_size)


def write_sample_image(path, seed=7, height=360, width=480) -> str:
    """Write a generated JPEG to ``path`` (the tutorial's stand-in for the seed's snow leopard)."""
    from pathlib import Path
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(encode(synthetic_image(seed, height, width)))
    return str(path)
