"""Numeric formats: hand-computed vectors for the numpy specification, and the ONNX device path bit for bit."""
import zlib

import numpy as np
import pytest

from accel_lib.fpga.device import graph, formats

F9 = formats.get("ms-fp9", block=4)     # sign + 3 bits, 5-bit shared exponent (-15..16), blocks of 4
F8 = formats.get("ms-fp8", block=2)
F12 = formats.get("msfp12", block=2)
F16 = formats.get("msfp16", block=2)


def q(values, fmt=F9, axis=-1):
    return formats.quantize(np.array(values, np.float32), fmt, axis)


def same_bits(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(a.view(np.uint32)[~np.isnan(a)],
                                                                       b.view(np.uint32)[~np.isnan(b)])


@pytest.mark.parametrize("values, expected, why", [
    ([0, 0, 0, 0], [0, 0, 0, 0], "an all-zero block stays zero"),
    ([1.0, 0.5, -0.75, 1.75], [1.0, 0.5, -0.75, 1.75], "exactly representable: E=0, step 0.25"),
    ([1.0, 0.125, 0.375, -0.125], [1.0, 0.25, 0.5, -0.25], "ties (k.5 steps) round away from zero"),
    ([1.9, 1.0, 0, 0], [1.75, 1.0, 0, 0], "block max 1.9 needs k=8 > 7: saturates at 7 steps"),
    ([1e6, 1, 0, 0], [114688, 0, 0, 0], "E=19 clamped to Emax=16: step 2**14, saturates at 7*2**14"),
    ([2.0 ** -20, 2.0 ** -21, 0, 0], [0, 0, 0, 0], "E=-20 clamped to Emin=-15: step 2**-17, underflows to zero"),
    ([2.0 ** -18, 0, 0, 0], [2.0 ** -17, 0, 0, 0], "exactly half a step at Emin rounds away, up to one step"),
    ([8.0, 0.3, -0.1, 3.0], [8.0, 0, 0, 4.0], "mixed magnitudes: E=3, step 2; small values flush to zero"),
])
def test_ms_fp9_hand_vectors(values, expected, why):
    assert same_bits(q(values), expected), why


def test_zero_results_are_positive_zero():
    out = q([-2.0 ** -20, -0.0, 1.0, -0.1])
    assert out.view(np.uint32)[0] == 0 and out.view(np.uint32)[1] == 0 and out.view(np.uint32)[3] == 0


def test_nan_and_inf_poison_their_block_only():
    out = q([1, np.nan, 2, 3, 1, 1, 1, 1])
    assert np.isnan(out[:4]).all() and same_bits(out[4:], [1, 1, 1, 1])
    assert np.isnan(q([1, np.inf, 0, 0])).all() and np.isnan(q([-np.inf, 0, 0, 0])).all()


def test_uneven_blocks_last_block_is_shorter():
    assert same_bits(q([1, 1, 1, 1, 3, 0.3]), [1, 1, 1, 1, 3, 0.5])   # second block: E=1, step 0.5


def test_other_formats_hand_vectors():
    assert same_bits(q([1.0, 0.6, 1.9, 1.0], F8), [1.0, 0.5, 1.5, 1.0])      # 2 bits: kmax 3, step 0.5
    assert same_bits(q([1.0, 1 / 3], F16), [1.0, 0.328125])                  # 7 bits: step 2**-6, k=21
    assert same_bits(q([2.0 ** -120, 0], F12), [2.0 ** -120, 0])             # 8-bit exponent: no underflow
    assert same_bits(q([2.0 ** -20, 0], F8), [0, 0])                         # 5-bit exponent: underflow


def test_blocks_follow_the_axis_and_defaults():
    x = np.array([[8.0, 0.3], [0.3, 8.0]], np.float32)
    f = formats.get("ms-fp9", block=2)
    assert same_bits(formats.quantize(x, f, axis=1), [[8, 0], [0, 8]])
    assert same_bits(formats.quantize(x, f, axis=0), [[8, 0], [0, 8]])
    x2 = np.array([[8.0, 8.0], [0.3, 0.3]], np.float32)
    assert same_bits(formats.quantize(x2, f, axis=1), [[8, 8], [0.3125, 0.3125]])   # each row its own block
    assert formats.get("ms-fp9").block == 128 and formats.get("msfp12").block == 16
    assert formats.get("fp32") is None and np.array_equal(formats.quantize(x, "fp32"), x)
    with pytest.raises(ValueError, match="unknown numeric format"):
        formats.get("int4")


def vectors(name, shape, nonneg, seed=""):
    """Test inputs over 28 binades with zeros, -0.0, NaN, +-inf, a saturating value and a subnormal."""
    rng = np.random.default_rng(zlib.crc32(repr((seed, name, shape, nonneg)).encode()))
    x = (rng.standard_normal(shape) * np.exp(rng.uniform(-14, 14, shape))).astype(np.float32)
    if nonneg:
        x = np.maximum(x, 0)
        x.flat[::41] = -0.0
    x.flat[::97] = 0
    x.flat[7] = np.nan
    x.flat[-3] = np.inf if nonneg else -np.inf
    x.flat[-9] = 2.0 ** 30          # saturation in some block
    x.flat[11] = 2.0 ** -140        # a subnormal
    return x


@pytest.mark.parametrize("name", [n for n in formats.NAMES if n != "fp32"])
@pytest.mark.parametrize("shape, axis", [((2, 256, 5, 5), 1), ((2, 64, 3, 3), 1), ((3, 300, 2, 2), 1),
                                         ((4, 200), 1), ((5, 37), -1)])
@pytest.mark.parametrize("nonneg", [False, True])
def test_onnx_device_path_is_bit_exact(name, shape, axis, nonneg):
    import onnxruntime as ort
    x = vectors(name, shape, nonneg)
    sess = ort.InferenceSession(graph.quantizer_model(shape, axis, name, nonneg).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    assert same_bits(sess.run(None, {"x": x})[0], formats.quantize(x, name, axis))


def test_apply_format_quantizes_weights_once_and_every_layer():
    import onnx
    from onnx import helper as h
    from onnx import numpy_helper
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((8 * 4 * 4, 5)).astype(np.float32)
    g = h.make_graph([h.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]), h.make_node("Relu", ["c"], ["r"]),
                      h.make_node("Flatten", ["r"], ["f"]), h.make_node("MatMul", ["f", "w2"], ["y"])], "g",
                     [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3, 4, 4])],
                     [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 5])],
                     [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    fmt = formats.get("ms-fp9", block=4)
    dev, layers = graph.apply_format(model, fmt)
    assert [l["op"] for l in layers] == ["Conv", "MatMul"] and [l["channels"] for l in layers] == [3, 128]
    inits = {i.name: numpy_helper.to_array(i) for i in dev.graph.initializer}
    assert same_bits(inits["w1"], formats.quantize(w1, fmt, 1)) and same_bits(inits["w2"], formats.quantize(w2, fmt, 0))
    from accel_lib.fpga.device.reference import reference_device
    import onnxruntime as ort
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    got = ort.InferenceSession(dev.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    [ref] = reference_device(model, fmt)(x).values()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    [plain] = reference_device(model, None)(x).values()
    assert not np.allclose(ref, plain, rtol=1e-3)        # the format really changes the result
    assert graph.apply_format(model, "fp32")[1] == []


@pytest.mark.parametrize("x_shape, w_shape, strides, pads, dilations", [
    ((2, 8, 11, 13), (5, 8, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((1, 6, 19, 19), (4, 6, 3, 3), (1, 1), (6, 6, 6, 6), (6, 6)),        # SSD's dilated fc6
    ((2, 3, 15, 16), (4, 3, 7, 7), (2, 2), (3, 2, 3, 2), (1, 1)),        # uneven padding, stride 2
    ((1, 4, 8, 8), (3, 4, 1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),
])
def test_reference_device_convolution_matches_onnx_reference(x_shape, w_shape, strides, pads, dilations):
    from onnx.reference.ops.op_conv import _conv_implementation

    from accel_lib.fpga.device.reference import conv2d
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal(x_shape).astype(np.float32), rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    want = _conv_implementation(x, w, b, "NOTSET", list(dilations), 1, list(w_shape[2:]), list(pads), list(strides))
    got = conv2d(x, w, b, strides, pads, dilations)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)     # float32 sums in another order
