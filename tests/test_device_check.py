"""The device check judges each quantized layer on the reference device's own input: summation order passes, a
wrong weight or quantizer does not, and a quantized input one step apart (a value on a rounding boundary) is
counted, not failed. Fast graphs made here; the zoo's real sizes are in test_zoo_families.py."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from accel_lib.conversion import checks
from accel_lib.fpga.device import graph, formats


def _net(seed=0, channels=32):
    """conv 3x3 -> relu -> conv 3x3 -> + x -> relu -> conv 1x1: a residual block, with biases."""
    rng = np.random.default_rng(seed)
    c = channels
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("w1", rng.normal(0, 0.1, (c, c, 3, 3))), ("b1", rng.normal(0, 0.1, c)),
        ("w2", rng.normal(0, 0.1, (c, c, 3, 3))), ("b2", rng.normal(0, 0.1, c)),
        ("w3", rng.normal(0, 0.1, (8, c, 1, 1))), ("b3", rng.normal(0, 0.1, 8)))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "x"], ["s"]), helper.make_node("Relu", ["s"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["features"], name="conv3")]
    g = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c, 12, 12])],
                          [helper.make_tensor_value_info("features", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _x(seed=1, channels=32):
    return np.random.default_rng(seed).normal(0, 1, (2, channels, 12, 12)).astype(np.float32)


@pytest.mark.parametrize("name", ["ms-fp9", "msfp12", "msfp16", "mxfp8-e4m3", "mxint8"])
def test_every_layer_is_judged_within_its_bound(name):
    fp32 = _net()
    fmt = formats.get(name, 16 if name.startswith("ms-") else None)
    dev, layers = graph.apply_format(fp32, fmt)
    ref, judge = checks.judge_layers(fp32, dev, fmt, _x())
    assert judge.layers == len(layers) == 3 and judge.values == 3 * 2 * 32 * 144
    assert judge.boundary == 0 and 0 <= judge.used <= 1 and judge.worst in ("conv1", "conv2", "conv3")
    assert ref["features"].shape == (2, 8, 12, 12)


def test_the_bound_is_fp32_summation_order_and_no_more():
    """Any order of n fp32 terms lies within gamma_n * sum |terms| of the exact sum: checked on sums in three
    orders against float64."""
    rng = np.random.default_rng(3)
    terms = (rng.normal(0, 1, (400, 4608)) * np.exp2(rng.integers(-8, 8, (400, 4608)))).astype(np.float32)
    exact = terms.astype(np.float64).sum(1)
    bound = checks.gamma(terms.shape[1]) * np.abs(terms).astype(np.float64).sum(1)
    for got in (terms.sum(1, dtype=np.float32), np.cumsum(terms[:, ::-1], 1, dtype=np.float32)[:, -1],
                np.sort(terms, 1).sum(1, dtype=np.float32)):
        assert np.all(np.abs(got - exact) <= bound)
    assert checks.gamma(4608) == pytest.approx(4608 * 2.0 ** -24, rel=1e-3)


def _with_weight(name, index, value):
    """(fp32 graph, ms-fp9 device graph with one weight of ``name`` set to ``value``, the format)."""
    fp32 = _net()
    fmt = formats.get("ms-fp9", 16)
    dev, _ = graph.apply_format(fp32, fmt)
    w = next(i for i in dev.graph.initializer if i.name == name)
    a = numpy_helper.to_array(w).copy()
    a[index] = value(a[index])
    w.CopyFrom(numpy_helper.from_array(a, name))
    return fp32, dev, fmt


def test_a_wrong_weight_is_found_and_named():
    fp32, dev, fmt = _with_weight("w2", (3, 5, 1, 1), lambda v: v * 1.5)      # one weight of the device graph is off
    with pytest.raises(checks.DeviceMismatch, match=r"layer conv2: the device's output differs from the reference "
                                                     r"by [0-9.e+]+ times what fp32 summation order allows"):
        checks.judge_layers(fp32, dev, fmt, _x())


def test_a_nan_on_one_side_is_a_mismatch():
    fp32, dev, fmt = _with_weight("w3", (2, 7, 0, 0), lambda v: np.nan)       # NaN where the reference has none
    with pytest.raises(checks.DeviceMismatch, match=r"layer conv3: the device's output differs"):
        checks.judge_layers(fp32, dev, fmt, _x())


def _quantizer_constant(model, suffix, value):
    for init in model.graph.initializer:
        if init.name.endswith(suffix):
            init.CopyFrom(numpy_helper.from_array(np.asarray(value, np.float32), init.name))
            return
    raise AssertionError(f"no initializer ending in {suffix}")


@pytest.mark.parametrize("suffix, value", [("/half", 0.5 - 2 ** -7), ("/shift", -1.0)])
def test_a_quantizer_that_rounds_otherwise_is_found(monkeypatch, suffix, value):
    """Values rounded at another point (near, but not on, the boundary), or every step twice what it should be:
    each quantized value is within one step, and still a mismatch."""
    monkeypatch.setenv("ACCEL_LIB_DEVICE_KERNEL", "onnx")      # the in-graph quantizer, whose constants we change
    fp32 = _net()
    fmt = formats.get("ms-fp9", 16)
    dev, _ = graph.apply_format(fp32, fmt)
    _quantizer_constant(dev, suffix, value)
    with pytest.raises(checks.DeviceMismatch, match=r"layer conv1: [0-9]+ quantized input value\(s\) differ from the "
                                                     r"reference by more than one step of the format, or where the "
                                                     r"input is not on a rounding boundary"):
        checks.judge_layers(fp32, dev, fmt, _x())


def test_one_step_apart_on_a_rounding_boundary_is_allowed_and_nowhere_else():
    fmt = formats.get("ms-fp9", 4)                   # step 2**(E - 2): block max 7.5 -> E = 2, step 1
    x = np.array([[7.5, 2.5, 1.2, 0.25]], np.float32)
    want = formats.quantize(x, fmt)
    assert want.tolist() == [[7.0, 3.0, 1.0, 0.0]]    # saturated at 7, ties away from zero
    got = want.copy()
    got[0, 1] = 2.0                                   # 2.5 sits on the boundary between 2 and 3: either is fp32's
    apart, far = checks.one_step_apart(x, want, got, fmt, -1)
    assert apart.tolist() == [[False, True, False, False]] and not far.any()
    x2 = np.nextafter(x, np.float32(0))               # a few ulps off the boundary still counts as on it
    apart, far = checks.one_step_apart(x2, want, got, fmt, -1)
    assert apart[0, 1] and not far.any()
    got = want.copy()
    got[0, 2] = 2.0                                   # 1.2 is not on a boundary: 1 and 2 are not both its rounding
    assert checks.one_step_apart(x, want, got, fmt, -1)[1].tolist() == [[False, False, True, False]]
    got = want.copy()
    got[0, 1] = 1.0                                   # two steps
    assert checks.one_step_apart(x, want, got, fmt, -1)[1][0, 1]
    got = want.copy()
    got[0, 0] = 8.0                                   # past saturation
    assert checks.one_step_apart(x, want, got, fmt, -1)[1][0, 0]


@pytest.mark.parametrize("name", ["ms-fp9", "msfp16", "mxfp4", "mxint8", "mxfp8-e5m2"])
def test_a_step_is_the_gap_between_neighbouring_values_of_the_format_and_top_its_largest(name):
    fmt = formats.get(name)
    x = np.random.default_rng(4).normal(0, 3, (4, 256)).astype(np.float32)
    step, top = formats.grid(x, fmt, -1)
    q = formats.quantize(x, fmt, -1)
    assert step.shape == top.shape == x.shape and np.all(step > 0) and np.all(np.abs(q) <= top)
    assert np.all((np.abs(q - x) <= step / 2) | (np.abs(q) == top))        # rounded to nearest, or saturated
    grain = step if name.startswith("ms") else step / 2             # an MX element's own binade: half the step
    assert np.all(np.mod(q, grain) == 0)               # the format's values lie on the grid the step spaces
    assert np.isin(formats.quantize(top, fmt, -1), top).all()     # the top is a value of the format
