"""The device's numeric formats: block floating point with one exponent shared per block (the specification).

Each format has ``m`` magnitude bits per element (plus a sign bit) and an ``e``-bit exponent shared by a block of
``block`` consecutive values along the reduction (channel) axis:

============  ============  =================  ===============
format        shared exp.   element            default block
============  ============  =================  ===============
``ms-fp8``    5 bits        sign + 2 bits      128 (Brainwave's native vector)
``ms-fp9``    5 bits        sign + 3 bits      128
``msfp12``    8 bits        sign + 3 bits      16
``msfp16``    8 bits        sign + 7 bits      16
``fp32``      —             IEEE single        (no quantization: the reference)
============  ============  =================  ===============

Quantizing one block ``x`` (float32), exactly:

1. ``M = max |x|``. If the block holds a NaN or an infinity, every value of the block becomes NaN (the shared
   exponent cannot represent it). If ``M == 0`` (all-zero block), the block stays zero.
2. Shared exponent ``E = floor(log2 M)``, clamped to ``[Emin, Emax]`` with ``bias = 2**(e-1) - 1``,
   ``Emin = -bias`` and ``Emax = bias + 1`` (5 bits: -15..16; 8 bits: -127..128).
3. Step ``s = 2**(E - m + 1)``; each value becomes ``k * s`` with ``k = sign(x) * floor(|x| / s + 1/2)``: round to
   nearest, ties away from zero.
4. Saturation: ``|k|`` is clamped to ``2**m - 1``, so the largest magnitude is ``(2**m - 1) * s``. (A block
   maximum just under ``2**(E+1)`` saturates; so does everything when ``E`` was clamped at ``Emax``.)
5. Underflow: when ``E`` is clamped at ``Emin``, values below ``s / 2`` become zero. Every zero result is
   ``+0.0`` (the sign of a zero is not kept).
6. A block that does not divide the axis: the last block is shorter (as if padded with zeros, which change no
   maximum).

All arithmetic is float32 and exact (``s`` is a power of two; ``|k| < 2**(m+1)``), so the ONNX device graph, which
applies the same steps with ONNX operators, matches this implementation bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Format:
    """A block floating-point format: mantissa (magnitude) bits, shared-exponent bits, block size."""
    name: str
    mantissa_bits: int
    exponent_bits: int
    block: int

    @property
    def emin(self):
        return -(2 ** (self.exponent_bits - 1) - 1)

    @property
    def emax(self):
        return 2 ** (self.exponent_bits - 1)

    @property
    def kmax(self):
        return 2 ** self.mantissa_bits - 1

    def with_block(self, block):
        """The same format with another block size."""
        if not isinstance(block, int) or block < 1:
            raise ValueError(f"block size must be a whole number >= 1, got {block!r}")
        return Format(self.name, self.mantissa_bits, self.exponent_bits, block)

    def describe(self):
        return (f"{self.name}: sign + {self.mantissa_bits}-bit mantissa, {self.exponent_bits}-bit exponent shared "
                f"per block of {self.block} along the channel axis")


FORMATS = {
    "ms-fp8": Format("ms-fp8", 2, 5, 128),
    "ms-fp9": Format("ms-fp9", 3, 5, 128),
    "msfp12": Format("msfp12", 3, 8, 16),
    "msfp16": Format("msfp16", 7, 8, 16),
}
NAMES = ("fp32", *FORMATS)


def get(name, block=None):
    """The Format called ``name`` (None for fp32), optionally with another block size."""
    if name == "fp32":
        return None
    if name not in FORMATS:
        raise ValueError(f"unknown numeric format {name!r}; choose one of {list(NAMES)}")
    f = FORMATS[name]
    return f if block is None else f.with_block(block)


def quantize(x, fmt, axis=-1):
    """Quantize ``x`` to ``fmt`` (a Format or a name) with blocks along ``axis``; returns float32."""
    if isinstance(fmt, str):
        fmt = get(fmt)
    x = np.asarray(x, dtype=np.float32)
    if fmt is None:
        return x.copy()
    axis = axis % x.ndim
    xm = np.moveaxis(x, axis, -1)
    n = xm.shape[-1]
    nb = -(-n // fmt.block)
    pad = nb * fmt.block - n
    if pad:
        xm = np.concatenate([xm, np.zeros(xm.shape[:-1] + (pad,), np.float32)], axis=-1)
    blocks = xm.reshape(xm.shape[:-1] + (nb, fmt.block))
    bad = ~np.isfinite(blocks).all(axis=-1, keepdims=True)
    a = np.abs(blocks)
    with np.errstate(invalid="ignore"):
        m = np.where(bad, np.float32(1), a.max(axis=-1, keepdims=True))
    _, e = np.frexp(m)                                  # m = f * 2**e, f in [0.5, 1): floor(log2 m) = e - 1
    e = np.clip(e.astype(np.int32) - 1, fmt.emin, fmt.emax)
    step = np.ldexp(np.float32(1), e - fmt.mantissa_bits + 1).astype(np.float32)
    with np.errstate(invalid="ignore"):
        k = np.floor(a / step + np.float32(0.5))
        k = np.minimum(k, np.float32(fmt.kmax))
        y = (np.copysign(k * step, blocks) + np.float32(0)).astype(np.float32)   # -0.0 + 0.0 == +0.0
    y = np.where(bad, np.float32(np.nan), y)
    y = y.reshape(xm.shape)[..., :n]
    return np.ascontiguousarray(np.moveaxis(y, -1, axis))


def sqnr_db(reference, approx):
    """Signal-to-quantization-noise ratio in dB (inf when identical)."""
    r = np.asarray(reference, np.float64)
    noise = np.sum((r - np.asarray(approx, np.float64)) ** 2)
    signal = np.sum(r ** 2)
    if noise == 0:
        return float("inf")
    return float(10 * np.log10(signal / noise)) if signal > 0 else float("-inf")
