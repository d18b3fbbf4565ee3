"""Host preprocessing in numpy + Pillow: the same numerics as accel_lib.models.utils.preprocess_array.

Decode JPEG/PNG to RGB uint8 (JPEG with the accurate integer IDCT), resize (bilinear, half-pixel centres, no
antialiasing) the shortest side to ``resize_side`` keeping the aspect ratio, centre-crop, subtract the channel
means, reorder channels and scale.
"""
from __future__ import annotations

import io

import numpy as np

MEANS_RGB = (123.68, 116.779, 103.939)
MAX_PIXELS = 40_000_000          # default pixel limit per image, checked from the header before decoding


DECODED_BYTES_PER_PIXEL = 12     # over the decoder's peak, 10.1-10.6 measured (tests/test_preprocess.py): Pillow's
                                 # RGB (4 bytes a pixel, padded), its packed bytes and numpy's array (3 each)


class BadImage(ValueError):
    """An input item that is not a decodable JPEG or PNG."""


class TooMuchToDecode(ValueError):
    """A request whose images would decode to more than its budget (the message names the limit)."""


def resize_side_for(output_height, output_width):
    """The shortest-side target: 256 for a 224 crop, scaled in proportion for other crop sizes."""
    return (max(output_height, output_width) * 256 * 2 + 224) // (2 * 224)


def aspect_size(h, w, side):
    """(new_h, new_w) with the shortest side ``side``, the other rounded half up (integer arithmetic)."""
    if h <= w:
        return side, (w * side * 2 + h) // (2 * h)
    return (h * side * 2 + w) // (2 * w), side


def _open(data, index):
    from PIL import Image
    try:
        im = Image.open(io.BytesIO(data))
    except Exception as e:
        why = str(e).split(" <")[0]          # drop PIL's object repr
        raise BadImage(f"image {index} ({len(data)} bytes) could not be decoded as JPEG or PNG: {why}") from None
    if im.format not in ("JPEG", "PNG"):
        im.close()
        raise BadImage(f"image {index} is {im.format}, not JPEG or PNG; convert it first.")
    return im


def _checked_size(im, index, max_pixels) -> tuple:
    w, h = im.size
    if w * h > max_pixels:
        raise BadImage(f"image {index} is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,}; "
                       "resize it before sending (the model sees a 256-pixel side anyway).")
    return w, h


def _rgb(im, data, index) -> np.ndarray:
    """The decoded RGB pixels (read-only), at most DECODED_BYTES_PER_PIXEL at the peak: an RGB picture is not
    converted (``convert`` would copy it); another mode's decoded image is closed once converted."""
    try:
        im.load()
        if im.mode == "RGB":
            return np.asarray(im)
        rgb = im.convert("RGB")
        im.close()                              # its decoded pixels go before the array is made
        return np.asarray(rgb)
    except Exception as e:
        why = str(e).split(" <")[0]
        raise BadImage(f"image {index} ({len(data)} bytes) could not be decoded as JPEG or PNG: {why}") from None


def image_size(data: bytes, index: int = 0, max_pixels: int = MAX_PIXELS) -> tuple:
    """(width, height) from an image's header, nothing decoded; BadImage over ``max_pixels`` (a decompression bomb
    costs nothing) or when it is not a JPEG or PNG."""
    with _open(data, index) as im:
        return _checked_size(im, index, max_pixels)


def decode(data: bytes, index: int = 0, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode JPEG or PNG bytes to an RGB uint8 array; BadImage names the item that failed.

    The pixel count is read from the header and checked against ``max_pixels`` before any pixel is decoded, so a
    decompression bomb costs nothing."""
    with _open(data, index) as im:
        _checked_size(im, index, max_pixels)
        return _rgb(im, data, index)


def _axis_weights(n_in, n_out):
    scale = np.float32(n_in) / np.float32(n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    lo = np.floor(src)
    frac = (src - lo).astype(np.float32)
    lo_i = np.clip(lo.astype(np.int64), 0, n_in - 1)
    hi_i = np.clip(lo.astype(np.int64) + 1, 0, n_in - 1)
    frac = np.where(src < 0, np.float32(0), frac).astype(np.float32)
    return lo_i, hi_i, frac


def resize_bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres, float32 result (matches tf.image.resize, antialias=False). Only the
    rows and columns it reads are taken to float32 (the picture itself stays uint8)."""
    y0, y1, fy = _axis_weights(img.shape[0], out_h)
    x0, x1, fx = _axis_weights(img.shape[1], out_w)
    rows0, rows1 = img[y0], img[y1]
    a, b = rows0[:, x0].astype(np.float32), rows0[:, x1].astype(np.float32)
    c, d = rows1[:, x0].astype(np.float32), rows1[:, x1].astype(np.float32)
    top = a + (b - a) * fx[None, :, None]
    bot = c + (d - c) * fx[None, :, None]
    return top + (bot - top) * fy[:, None, None]


def preprocess(images, order="RGB", scaling_factor=1.0, output_height=224, output_width=224,
               preserve_aspect_ratio=True, max_pixels=MAX_PIXELS, max_decoded_bytes=None) -> np.ndarray:
    """A batch of encoded images -> float32 [N, H, W, 3], the device stage's input. Every header is read first: an
    image over ``max_pixels`` is BadImage, and a batch that would decode to more than ``max_decoded_bytes`` (all its
    images together) is TooMuchToDecode, before a pixel is decoded."""
    if order not in ("RGB", "BGR"):
        raise ValueError(f"order must be 'RGB' or 'BGR', got {order!r}")
    images = [bytes(d) for d in images]
    opened = []                  # each header is read once: opened lazily here, decoded in the loop below
    try:
        for i, d in enumerate(images):
            opened.append(_open(d, i))
        sizes = [_checked_size(im, i, max_pixels) for i, im in enumerate(opened)]
        if max_decoded_bytes is not None:
            need = sum(w * h for w, h in sizes) * DECODED_BYTES_PER_PIXEL
            if need > max_decoded_bytes:
                raise TooMuchToDecode(f"the request's {len(images)} image(s) decode to {need / 2**20:,.0f} MB; at "
                                      f"most {max_decoded_bytes / 2**20:,.0f} MB per request (max_request_mb): send "
                                      "smaller or fewer pictures.")
        return _preprocess_opened(opened, images, order, scaling_factor, output_height, output_width,
                                  preserve_aspect_ratio)
    finally:
        for im in opened:
            im.close()


def _preprocess_opened(opened, images, order, scaling_factor, output_height, output_width, preserve_aspect_ratio):
    out = np.empty((len(images), output_height, output_width, 3), np.float32)
    side = resize_side_for(output_height, output_width)
    for i, data in enumerate(images):
        rgb = _rgb(opened[i], data, i)
        opened[i].close()                    # its decoded pixels are all that is needed now
        if preserve_aspect_ratio:
            nh, nw = aspect_size(rgb.shape[0], rgb.shape[1], side)
            x = resize_bilinear(rgb, nh, nw)
            oy, ox = (nh - output_height) // 2, (nw - output_width) // 2
            x = x[oy:oy + output_height, ox:ox + output_width]
        else:
            x = resize_bilinear(rgb, output_height, output_width)
        x = x - np.asarray(MEANS_RGB, np.float32)
        if order == "BGR":
            x = x[..., ::-1]
        out[i] = x * np.float32(scaling_factor)
    return out
