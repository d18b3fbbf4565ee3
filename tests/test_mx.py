"""The OCP MX formats' specification (formats.quantize_mx) bit for bit against oracles nobody here wrote: ONNX's own
QuantizeLinear / DequantizeLinear with block_size 32 and E8M0 scales run by onnx.reference, where ONNX has the
element type; every code point of each element type, tabled from its definition; and ml_dtypes' casts."""
import itertools

import ml_dtypes
import numpy as np
import pytest

from accel_lib.fpga.device import graph, formats, kernel

ONNX_TYPES = ("mxfp8-e4m3", "mxfp8-e5m2", "mxfp4", "mxint8")     # QuantizeLinear takes these (FP6: not in onnx 1.23)
ML = {"e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2, "e3m2": ml_dtypes.float6_e3m2fn,
      "e2m3": ml_dtypes.float6_e2m3fn, "e2m1": ml_dtypes.float4_e2m1fn}


def _bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


def _code_points(e):
    """Every finite value of a float element type, from its definition (sign, biased exponent, mantissa)."""
    bias = 2 ** (e.ebits - 1) - 1
    values = set()
    for code in range(2 ** (e.bits - 1)):
        exp, man = code >> e.mbits, code & (2 ** e.mbits - 1)
        value = (man / 2 ** e.mbits) * 2.0 ** (1 - bias) if exp == 0 else (1 + man / 2 ** e.mbits) * 2.0 ** (exp - bias)
        if value <= e.max_norm:                            # E4M3 (fn): its top code is NaN; E5M2: inf and NaN
            values.add(value)
    return np.array(sorted(values), np.float64)


def _inputs(rng):
    """[rows, 64] float32: two blocks a row, random magnitudes, and the edges an implementation gets wrong."""
    rows = [rng.standard_normal(64) * 2.0 ** rng.integers(-40, 40) for _ in range(40)]
    rows += [np.zeros(64), -np.zeros(64), np.full(64, 1e-45), np.r_[np.full(32, 2.0 ** -130), rng.standard_normal(32)],
             np.r_[np.full(32, 3.4e38), -np.full(32, 3.4e38)], np.r_[[np.nan], np.ones(63)],
             np.r_[np.ones(32), [np.inf], np.ones(31)], np.r_[np.ones(32), [-np.inf], np.ones(31)]]
    for name in formats.MX_FORMATS:                        # ties and maxima of each element type at scale 2**0
        e = formats.MX_FORMATS[name].element
        grid = (_code_points(e) if e.ebits else np.arange(128) / 64.0)
        mids = (grid[:-1] + grid[1:]) / 2
        for chunk in (mids[:31], mids[-31:], grid[-31:]):
            row = np.zeros(64)
            row[0], row[32] = e.max_norm, -e.max_norm
            row[1:1 + len(chunk)], row[33:33 + len(chunk)] = chunk, -chunk[::-1]
            rows.append(row)
        over = np.zeros(64)
        over[:32] = np.linspace(e.max_norm, 2.0 ** (e.emax + 1) * (1 - 2 ** -20), 32)   # max_norm to the binade's end
        rows.append(over)
    with np.errstate(over="ignore"):
        return np.asarray(rows, np.float64).astype(np.float32)


def _oracle(fmt, x, shared):
    """onnx.reference: QuantizeLinear then DequantizeLinear of x [rows, 64] with the specification's scales."""
    import onnx
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator
    e = fmt.element
    elem = getattr(TensorProto, e.onnx_type)
    rows, nb = x.shape[0], x.shape[1] // fmt.block
    if e.ebits:                                            # E8M0 scale: 2**(S) as its biased exponent, 0xFF NaN
        stype = TensorProto.FLOAT8E8M0
        scale = np.where(shared > formats.SCALE_MAX, 255, shared + 127).astype(np.uint8).view(ml_dtypes.float8_e8m0fnu)
    else:                                                  # INT8 counts steps of 2**-6: a float scale 2**(S - 6)
        stype = TensorProto.FLOAT
        scale = np.where(shared > formats.SCALE_MAX, np.nan, np.ldexp(np.float32(1), shared - 6)).astype(np.float32)
    scale = scale.reshape(rows, nb)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s"], ["q"], axis=1, block_size=fmt.block, output_dtype=elem),
         helper.make_node("DequantizeLinear", ["q", "s"], ["y"], axis=1, block_size=fmt.block,
                          output_dtype=TensorProto.FLOAT)], "mx",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape)),
         helper.make_tensor_value_info("s", stype, [rows, nb])],
        [helper.make_tensor_value_info("q", elem, list(x.shape)),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)])
    onnx.checker.check_model(model, full_check=True)
    with np.errstate(invalid="ignore", over="ignore"):       # NaN blocks: NaN / scale cast to int8, NaN * scale
        q, y = ReferenceEvaluator(model).run(None, {"x": x, "s": scale})
    return q, y, scale


@pytest.mark.parametrize("name", ONNX_TYPES)
def test_onnx_reference_quantizes_and_dequantizes_as_the_specification(name):
    """The specification's scales given to ONNX's QuantizeLinear: its element codes (rounding, saturation, the sign
    of zero) are the specification's, and DequantizeLinear of them is quantize_mx's result, bit for bit."""
    fmt = formats.MX_FORMATS[name]
    x = _inputs(np.random.default_rng(27))
    q_spec, shared = formats.mx_encode(x, fmt, axis=1)
    q_spec = q_spec.reshape(x.shape)
    q, y, scale = _oracle(fmt, x, shared.reshape(x.shape[0], -1))
    nan_block = np.repeat(np.isnan(q_spec).reshape(x.shape[0], -1, fmt.block).any(axis=-1), fmt.block, axis=1)
    if fmt.element.ebits:
        got = q.astype(np.float32)
    else:            # MXINT8 saturates at +-127, symmetric; QuantizeLinear's int8 at -128 (the two's complement end)
        got = np.maximum(q, -127).astype(np.float32) / 64
        y = np.where(q == -128, np.float32(-127) * scale.repeat(fmt.block, axis=1), y)
    assert np.array_equal(_bits(got[~nan_block]), _bits(q_spec[~nan_block]))
    spec = formats.quantize_mx(x, fmt, axis=1)
    assert np.array_equal(np.isnan(y), np.isnan(spec)) and np.isnan(spec).sum() >= 3 * fmt.block
    assert np.array_equal(_bits(y[~np.isnan(y)]), _bits(spec[~np.isnan(spec)]))


@pytest.mark.parametrize("name", sorted(formats.MX_FORMATS))
def test_every_code_point_is_kept_and_every_tie_goes_to_even(name):
    """In a block whose scale is 2**0 (its maximum is max_norm): each value of the element type quantizes to itself,
    each midpoint between two neighbours to the one whose last mantissa bit is 0, and beyond max_norm saturates."""
    fmt = formats.MX_FORMATS[name]
    e = fmt.element
    grid = _code_points(e) if e.ebits else np.arange(128) / 64.0
    mids = (grid[:-1] + grid[1:]) / 2
    step_bits = (np.round(grid / np.ldexp(1.0, np.maximum(np.frexp(np.maximum(grid, 1e-300))[1] - 1, e.emin)
                                           - e.mbits)).astype(np.int64) if e.ebits else np.arange(128))
    even = np.where(step_bits[:-1] % 2 == 0, grid[:-1], grid[1:])
    for values, expect in ((grid, grid), (mids, even), (-grid, -grid), (-mids, -even)):
        for chunk in range(0, len(values), 31):
            part = values[chunk:chunk + 31]
            block = np.r_[[e.max_norm], part, np.zeros(31 - len(part))].astype(np.float32)
            got = formats.quantize_mx(block, fmt)
            assert got[0] == e.max_norm
            assert np.array_equal(got[1:1 + len(part)], expect[chunk:chunk + 31].astype(np.float32)), (name, part)
    zeros = formats.quantize_mx(np.r_[[1.0], [-0.0] * 15, [-1e-30] * 16].astype(np.float32), fmt)[1:]
    assert (zeros == 0).all() and np.signbit(zeros).all() == bool(e.ebits)      # an integer's zero has no sign
    top = np.nextafter(np.float32(2.0 ** (e.emax + 1)), np.float32(0))        # the largest float of the top binade
    assert formats.quantize_mx(np.array([top, -top], np.float32), fmt).tolist() == [e.max_norm, -e.max_norm]


@pytest.mark.parametrize("name", [n for n, f in formats.MX_FORMATS.items() if f.element.ebits])
def test_elements_equal_ml_dtypes_casts(name):
    """A second oracle for the float element types, FP6 included: ml_dtypes' cast of v = x / 2**S (saturated at
    max_norm first: its E4M3 turns overflow into NaN) is the specification's element value."""
    fmt = formats.MX_FORMATS[name]
    x = _inputs(np.random.default_rng(5))
    finite = np.isfinite(x).reshape(x.shape[0], -1, 32).all(axis=-1).repeat(32, axis=1)
    q, shared = formats.mx_encode(x, fmt, axis=1)
    v = np.ldexp(x, -np.repeat(shared.reshape(x.shape[0], -1), 32, axis=1)).astype(np.float32)
    e = fmt.element
    cast = np.clip(v, -e.max_norm, e.max_norm).astype(ML[e.name]).astype(np.float32)
    assert np.array_equal(_bits(cast[finite]), _bits(q.reshape(x.shape)[finite]))


def test_scale_edges_and_bits_per_value():
    """All-zero blocks take the smallest scale, infinities and NaN make the whole block NaN, the huge and the
    subnormal stay finite; storage counts the shared scale."""
    fmt = formats.MX_FORMATS["mxfp4"]
    x = np.array([0.0] * 32 + [np.inf] + [1.0] * 31 + [3.4e38] * 32 + [1e-45] * 32, np.float32)
    q, shared = formats.mx_encode(x, fmt)
    assert shared.ravel().tolist() == [-127, formats.SCALE_MAX + 1, 127 - 2, -127]
    y = formats.quantize_mx(x, fmt)
    assert (y[:32] == 0).all() and np.isnan(y[32:64]).all() and np.isfinite(y[64:]).all()
    assert y[64] == np.float32(6 * 2.0 ** 125) and (y[96:] == 0).all()
    assert {n: f.bits_per_value for n, f in formats.MX_FORMATS.items()} == {
        "mxfp8-e4m3": 8.25, "mxfp8-e5m2": 8.25, "mxfp6-e3m2": 6.25, "mxfp6-e2m3": 6.25, "mxfp4": 4.25, "mxint8": 8.25}
    assert list(itertools.islice(formats.MX_FORMATS.values(), 1))[0].with_block(16).bits_per_value == 8.5


@pytest.mark.parametrize("name", sorted(formats.MX_FORMATS))
@pytest.mark.parametrize("quantizer", ["onnx", "fused"])
def test_the_device_quantizes_ties_edges_and_saturation_as_the_specification(name, quantizer):
    """The device's two quantizers (the pure-ONNX subgraph and the fused operator) on the tie, saturation, zero,
    subnormal, NaN and Inf rows above: quantize_mx bit for bit."""
    if quantizer == "fused" and not kernel.available():
        pytest.skip(f"the fused quantizer is not built ({kernel.LIBRARY}); `make kernel` builds it")
    x = _inputs(np.random.default_rng(9))
    for nonneg in (False, True):
        xi = np.where(np.isnan(x), x, np.abs(x)) if nonneg else x
        model = graph.quantizer_model(xi.shape, 1, name, nonneg)
        got = graph.session(model, kernel=quantizer).run(None, {"x": xi})[0]
        spec = formats.quantize_mx(xi, name, axis=1)
        assert np.array_equal(np.isnan(got), np.isnan(spec))
        assert np.array_equal(_bits(got[~np.isnan(got)]), _bits(spec[~np.isnan(spec)])), (name, quantizer, nonneg)
