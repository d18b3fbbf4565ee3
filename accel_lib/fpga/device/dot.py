"""The block dot product as the device computes it (the specification the RTL tile is held to, bit for bit).

A row ``w`` and a vector ``x`` are quantized in a block format (``formats.quantize``): each block of ``b`` values is
signs, integer magnitudes ``k`` (``|k| <= 2**m - 1``) and one shared exponent ``E`` (the step is ``2**(E - m + 1)``).
For each block, in order along the row:

1. the integer sum ``S = sum(kw * kx)`` is exact (at most ``b * (2**m - 1)**2``: 21 bits for MSFP16's blocks of 16,
   14 for ms-fp9's 128);
2. it is scaled by both shared exponents: ``t = S * 2**(Ew + Ex - 2m + 2)``, exact in float32 (``|S| < 2**24``)
   unless it falls below float32's normal range;
3. it is added to a float32 accumulator, rounding to nearest, ties to even (IEEE 754 addition).

Results below the smallest normal float32 (``2**-126``) are flushed to +0, at step 2 and at step 3, as FPGA
floating-point units do without denormal support (Intel's hard floating-point DSP blocks among them): only
MSFP12/16's 8-bit exponents reach them. A block that holds a NaN or an infinity is not the tile's input (the
quantizer poisons it before; the tile is given finite blocks).

The accumulator is float32, not wider: it is what the rest of the device stage (ONNX Runtime's float32 Conv and
MatMul of the quantized values) computes in, so the difference from it comes from the order of the sums alone,
which ``checks.gamma`` bounds. A wider (Kulisch) accumulator would be exact, but MSFP's 8-bit exponents need one
of over 500 bits.
"""
from __future__ import annotations

import numpy as np

from . import formats

MIN_NORMAL = np.float32(2.0 ** -126)


def encode(x, fmt, axis=-1):
    """Blocks of ``x`` in ``fmt`` (a block format): (mantissas k as int64, shared exponents E as int64), the values
    being ``k * 2**(E - m + 1)`` exactly (``formats.quantize``). The last axis of the result runs over blocks and
    the values of a block; a short last block is padded with zeros."""
    x = np.moveaxis(np.asarray(x, np.float32), axis, -1)
    q = formats.quantize(x, fmt, axis=-1)
    step, _ = formats.grid(x, fmt, axis=-1)          # each value's step: its block's, 2**(E - m + 1)
    n = x.shape[-1]
    nb = -(-n // fmt.block)
    pad = [(0, 0)] * (x.ndim - 1) + [(0, nb * fmt.block - n)]
    qb = np.pad(q, pad).reshape(*q.shape[:-1], nb, fmt.block)
    sb = np.pad(step, pad, mode="edge").reshape(*q.shape[:-1], nb, fmt.block)[..., :1]
    e = (np.log2(sb[..., 0]).astype(np.int64) + fmt.mantissa_bits - 1)
    k = np.rint(qb.astype(np.float64) / sb).astype(np.int64)
    return k, e


def flush(v):
    """float32 ``v`` with magnitudes below the smallest normal flushed to +0."""
    v = np.float32(v)
    return np.float32(0.0) if abs(v) < MIN_NORMAL else v


def block_terms(kw, ew, kx, ex, fmt):
    """Each block's exact product of a row and a vector, as float32 (flushed): [blocks]."""
    s = (kw * kx).sum(-1)
    shift = ew + ex - 2 * fmt.mantissa_bits + 2
    with np.errstate(over="ignore"):                  # past float32's range: an infinity, as the tile gives
        return [flush(np.float32(np.ldexp(float(si), int(sh)))) for si, sh in zip(s, shift)]


def row_dot(kw, ew, kx, ex, fmt) -> np.float32:
    """One row's dot product, the blocks accumulated in order in float32 (flushed)."""
    acc = np.float32(0.0)
    with np.errstate(invalid="ignore"):               # an infinity less an infinity: NaN, as IEEE 754 says
        for t in block_terms(kw, ew, kx, ex, fmt):
            acc = flush(np.float32(acc + t))
    return acc


def matvec(w, x, fmt):
    """``w`` [rows, n] times ``x`` [n] as the device computes it, both quantized in ``fmt``: float32 [rows]."""
    kw, ew = encode(w, fmt)
    kx, ex = encode(x, fmt)
    return np.array([row_dot(kw[r], ew[r], kx, ex, fmt) for r in range(len(kw))], np.float32)
