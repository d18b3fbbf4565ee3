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

The OCP Microscaling (MX v1.0) formats are a modeled extension: Brainwave's Arria 10 had none of them. A block of 32
values along the same channel axis shares an 8-bit power-of-two scale (E8M0, 2**-127..2**127, 0xFF = NaN); each
element is a small float with its own exponent (FP8 E4M3 / E5M2, FP6 E3M2 / E2M3, FP4 E2M1) or an 8-bit integer
in steps of 2**-6 (INT8). Quantizing one block ``x`` (``quantize_mx``), exactly:

1. A NaN or an infinity in the block: the scale is NaN and so is every value of the block.
2. Shared exponent ``S = floor(log2 max |x|) - emax`` of the element type, clamped to ``[-127, 127]``; an all-zero
   block takes ``-127``.
3. Each ``v = x / 2**S``. A float element keeps its own exponent ``p = max(floor(log2 |v|), emin)`` (so subnormals
   are kept) and ``mbits`` mantissa bits: ``v`` is rounded to a multiple of ``2**(p - mbits)``, half to even (as
   ONNX's QuantizeLinear rounds to these types, so ``onnx.reference`` checks the rounding too; microxcaling's
   default is half away from zero). An INT8 element is rounded to a multiple of ``2**-6``, half to even.
4. Saturation at ``±max_norm`` (INT8: ``±127 * 2**-6``, symmetric: its two's complement -128 is not used, as in
   microxcaling). A float element keeps the sign of a zero (it has a sign bit); INT8's zero is ``+0.0``.
5. The result is ``q * 2**S``; a short last block is padded with zeros, as above.
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

    @property
    def bits_per_value(self) -> float:
        """Storage per value, the block's shared exponent included."""
        return 1 + self.mantissa_bits + self.exponent_bits / self.block

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


def quantize(x, fmt, axis=-1):
    """Quantize ``x`` to ``fmt`` (a Format, an MxFormat or a name) with blocks along ``axis``; returns float32."""
    if isinstance(fmt, str):
        fmt = get(fmt)
    x = np.asarray(x, dtype=np.float32)
    if fmt is None:
        return x.copy()
    if isinstance(fmt, MxFormat):
        return quantize_mx(x, fmt, axis)
    blocks, back = _blocks(x, fmt.block, axis)
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
    return back(np.where(bad, np.float32(np.nan), y))


@dataclass(frozen=True)
class Element:
    """An MX element type: a float of ``ebits`` exponent and ``mbits`` mantissa bits (emax: the exponent of its
    largest normal), or an integer (``ebits == 0``: sign and ``mbits`` magnitude bits, in steps of
    2**(2 - bits)); ``onnx_type`` names its ONNX TensorProto type."""
    name: str
    ebits: int
    mbits: int
    emax: int
    max_norm: float
    onnx_type: str

    @property
    def bits(self) -> int:
        return 1 + self.ebits + self.mbits

    @property
    def emin(self) -> int:
        """The exponent of the smallest normal; an integer's is 1, so that its step 2**(emin - mbits) is fixed."""
        return 2 - 2 ** (self.ebits - 1) if self.ebits else 1


ELEMENTS = {
    "e4m3": Element("e4m3", 4, 3, 8, 448.0, "FLOAT8E4M3FN"),
    "e5m2": Element("e5m2", 5, 2, 15, 57344.0, "FLOAT8E5M2"),
    "e3m2": Element("e3m2", 3, 2, 4, 28.0, "FLOAT6E3M2"),
    "e2m3": Element("e2m3", 2, 3, 2, 7.5, "FLOAT6E2M3"),
    "e2m1": Element("e2m1", 2, 1, 2, 6.0, "FLOAT4E2M1"),
    "int8": Element("int8", 0, 7, 0, 127 / 64, "INT8"),
}
SCALE_BITS, SCALE_MIN, SCALE_MAX = 8, -127, 127        # E8M0


@dataclass(frozen=True)
class MxFormat:
    """An OCP MX format: an element type and a block (32 in the specification) sharing one E8M0 scale."""
    name: str
    element: Element
    block: int = 32

    @property
    def bits_per_value(self) -> float:
        """Storage per value, the block's shared scale included."""
        return self.element.bits + SCALE_BITS / self.block

    def with_block(self, block):
        if not isinstance(block, int) or block < 1:
            raise ValueError(f"block size must be a whole number >= 1, got {block!r}")
        return MxFormat(self.name, self.element, block)

    def describe(self):
        e = self.element
        kind = "8-bit integer in steps of 2^-6" if e.name == "int8" else f"E{e.ebits}M{e.mbits} float"
        return (f"{self.name}: an {kind} per value, an 8-bit power-of-two scale shared per block of {self.block} "
                "along the channel axis (OCP MX v1.0)")


MX_FORMATS = {
    "mxfp8-e4m3": MxFormat("mxfp8-e4m3", ELEMENTS["e4m3"]),
    "mxfp8-e5m2": MxFormat("mxfp8-e5m2", ELEMENTS["e5m2"]),
    "mxfp6-e3m2": MxFormat("mxfp6-e3m2", ELEMENTS["e3m2"]),
    "mxfp6-e2m3": MxFormat("mxfp6-e2m3", ELEMENTS["e2m3"]),
    "mxfp4": MxFormat("mxfp4", ELEMENTS["e2m1"]),
    "mxint8": MxFormat("mxint8", ELEMENTS["int8"]),
}


NAMES = ("fp32", *FORMATS, *MX_FORMATS)


def get(name, block=None):
    """The format called ``name`` (a Format or an MxFormat; None for fp32), optionally with another block size."""
    if name == "fp32":
        return None
    f = FORMATS.get(name) or MX_FORMATS.get(name)
    if f is None:
        raise ValueError(f"unknown numeric format {name!r}; choose one of {list(NAMES)}")
    return f if block is None else f.with_block(block)


def _blocks(x, block, axis):
    """x (float32) as [..., blocks, block] along ``axis``, zero-padded; and how to undo it."""
    axis = axis % x.ndim
    xm = np.moveaxis(x, axis, -1)
    n = xm.shape[-1]
    nb = -(-n // block)
    if nb * block != n:
        xm = np.concatenate([xm, np.zeros(xm.shape[:-1] + (nb * block - n,), np.float32)], axis=-1)

    def back(y):
        return np.ascontiguousarray(np.moveaxis(y.reshape(xm.shape)[..., :n], -1, axis))
    return xm.reshape(xm.shape[:-1] + (nb, block)), back


def mx_encode(x, fmt, axis=-1):
    """The MX form of ``x``: (element values q as float32, each exactly one of the element type's values, NaN in a
    NaN block; the shared exponent S per block, int32, with SCALE_MAX + 1 for a NaN scale), both blocked as
    [..., blocks, block] and [..., blocks, 1] along ``axis``; ``x = q * 2**S`` once quantized."""
    if isinstance(fmt, str):
        fmt = get(fmt)
    return _mx_encode_blocks(_blocks(np.asarray(x, np.float32), fmt.block, axis)[0], fmt.element)


def _mx_encode_blocks(blocks, e):
    """mx_encode of an already blocked float32 array, element type ``e``."""
    bad = ~np.isfinite(blocks).all(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        amax = np.where(bad, np.float32(1), np.abs(blocks).max(axis=-1, keepdims=True))
    _, ex = np.frexp(amax)                              # amax = f * 2**ex, f in [0.5, 1): floor(log2) = ex - 1
    shared = np.where(amax == 0, SCALE_MIN, np.clip(ex.astype(np.int32) - 1 - e.emax, SCALE_MIN, SCALE_MAX))
    v = np.ldexp(np.where(bad, np.float32(0), blocks), -shared).astype(np.float32)
    _, pe = np.frexp(v)
    p = np.maximum(pe.astype(np.int32) - 1, e.emin) if e.ebits else e.emin       # an integer's step is fixed
    step_exp = p - e.mbits
    q = np.ldexp(np.rint(np.ldexp(v, -step_exp)), step_exp).astype(np.float32)
    q = np.clip(q, np.float32(-e.max_norm), np.float32(e.max_norm))
    if not e.ebits:
        q = q + np.float32(0)                           # an integer's zero has no sign: -0.0 + 0.0 == +0.0
    q = np.where(bad, np.float32(np.nan), q)
    return q, np.where(bad, SCALE_MAX + 1, shared).astype(np.int32)


def quantize_mx(x, fmt, axis=-1):
    """Quantize ``x`` to the MX format ``fmt`` (an MxFormat or a name) with blocks along ``axis``; float32."""
    if isinstance(fmt, str):
        fmt = get(fmt)
    blocks, back = _blocks(np.asarray(x, np.float32), fmt.block, axis)
    q, shared = _mx_encode_blocks(blocks, fmt.element)
    with np.errstate(invalid="ignore"):
        y = np.where(shared > SCALE_MAX, np.float32(np.nan), np.ldexp(q, np.minimum(shared, SCALE_MAX)))
    return back(y.astype(np.float32))


def grid(x, fmt, axis=-1):
    """(step, top) of ``fmt`` at each value of ``x`` (float32, shaped like x): one step is the widest gap between
    two neighbouring values of the format around it (a block's step; an MX element's at the binade above its own,
    times 2**S), and top the largest magnitude its block can hold."""
    if isinstance(fmt, str):
        fmt = get(fmt)
    blocks, back = _blocks(np.asarray(x, np.float32), fmt.block, axis)
    bad = ~np.isfinite(blocks).all(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        a = np.where(bad, np.float32(1), np.abs(blocks))
    m = a.max(axis=-1, keepdims=True)
    _, e = np.frexp(m)
    if isinstance(fmt, Format):
        e = np.clip(e.astype(np.int32) - 1, fmt.emin, fmt.emax)
        step = np.ldexp(np.float32(1), e - fmt.mantissa_bits + 1)
        top = step * np.float32(fmt.kmax)
    else:
        el = fmt.element
        shared = np.where(m == 0, SCALE_MIN, np.clip(e.astype(np.int32) - 1 - el.emax, SCALE_MIN, SCALE_MAX))
        _, pe = np.frexp(np.ldexp(a, -shared))
        p = np.maximum(pe.astype(np.int32) - 1, el.emin) + 1 if el.ebits else el.emin
        step = np.ldexp(np.float32(1), p - el.mbits + shared)
        top = np.ldexp(np.float32(el.max_norm), shared)

    def full(v):
        return back(np.where(bad, np.float32(np.nan), np.broadcast_to(v, blocks.shape)).astype(np.float32))
    return full(step), full(top)


def sqnr_db(reference, approx):
    """Signal-to-quantization-noise ratio in dB (inf when identical)."""
    r = np.asarray(reference, np.float64)
    noise = np.sum((r - np.asarray(approx, np.float64)) ** 2)
    signal = np.sum(r ** 2)
    if noise == 0:
        return float("inf")
    return float(10 * np.log10(signal / noise)) if signal > 0 else float("-inf")
