"""The device's datapath in RTL: the block dot product's specification (dot.py) against the ONNX device stage, and
the Verilog tile under Verilator (cocotb) against the specification, bit for bit, and against the timing model's
tile cycles."""
import numpy as np
import pytest

from accel_lib.conversion import checks
from accel_lib.fpga.device import dot, formats, rtl, timing

FOLDER, WHY = rtl.simulator()
needs_simulator = pytest.mark.skipif(FOLDER is None, reason=WHY)


def _quantized(v, fmt):
    return formats.quantize(np.asarray(v, np.float32), fmt, axis=-1)


def test_encoding_gives_the_quantized_values_back():
    rng = np.random.default_rng(1)
    for name in rtl.FORMATS:
        fmt = formats.get(name)
        x = (rng.standard_normal((3, 2 * fmt.block + 5)) * 10.0 ** rng.integers(-3, 3, (3, 1))).astype(np.float32)
        k, e = dot.encode(x, fmt)
        assert np.abs(k).max() <= fmt.kmax and e.min() >= fmt.emin and e.max() <= fmt.emax
        back = (k * np.exp2(e - fmt.mantissa_bits + 1)[..., None]).reshape(3, -1)[:, :x.shape[1]]
        np.testing.assert_array_equal(back.astype(np.float32), _quantized(x, fmt))


def test_the_specification_is_within_the_sum_order_bound_of_the_onnx_device_stage():
    """ONNX Runtime's float32 MatMul of the quantized values (the device stage's own operator) sums in another
    order; both stay within gamma of the exact sum, so they differ by at most (gamma(n) + gamma(blocks)) sum|w x|."""
    import onnxruntime as ort
    from onnx import TensorProto
    from onnx import helper as h
    rng = np.random.default_rng(2)
    for name in rtl.FORMATS:
        fmt = formats.get(name)
        n, rows = 3 * fmt.block + 7, 24
        w, x = rng.standard_normal((rows, n)).astype(np.float32), rng.standard_normal(n).astype(np.float32)
        qw, qx = _quantized(w, fmt), _quantized(x, fmt)
        g = h.make_graph([h.make_node("MatMul", ["w", "x"], ["y"])], "mv",
                         [h.make_tensor_value_info("w", TensorProto.FLOAT, [rows, n]),
                          h.make_tensor_value_info("x", TensorProto.FLOAT, [n, 1])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [rows, 1])])
        model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        onnx_y = sess.run(None, {"w": qw, "x": qx[:, None]})[0][:, 0]
        ours = dot.matvec(w, x, fmt)
        exact = qw.astype(np.float64) @ qx.astype(np.float64)
        size = np.abs(qw.astype(np.float64)) @ np.abs(qx.astype(np.float64))
        blocks = -(-n // fmt.block)
        assert (np.abs(ours - exact) <= checks.gamma(blocks) * size).all(), name
        assert (np.abs(ours.astype(np.float64) - onnx_y) <= (checks.gamma(n) + checks.gamma(blocks)) * size).all()


def _edge_pairs(fmt, rng):
    """Rows and vectors that reach the format's edges, each a (row, vector) pair."""
    b, top = fmt.block, formats.get(fmt.name).kmax
    step = 2.0 ** (0 - fmt.mantissa_bits + 1)                        # E = 0
    ties = (np.arange(b) % top + 0.5) * step                          # halfway between two steps
    saturating = np.full(b, (top + 0.75) * step)                       # rounds past the largest magnitude
    big, small = (2.0 ** 100, 2.0 ** -100) if fmt.exponent_bits == 8 else (2.0 ** 15, 2.0 ** -14)
    n = 2 * b + b // 2 + 1                                            # a short last block
    pairs = [(np.r_[ties, -ties], np.r_[saturating, -saturating]),
             (np.zeros(n), rng.standard_normal(n)),
             (-np.abs(rng.standard_normal(n)), -np.abs(rng.standard_normal(n))),
             (rng.standard_normal(n) * big, rng.standard_normal(n) * big),
             (rng.standard_normal(n) * small, rng.standard_normal(n) * small),
             (rng.standard_normal(n) * big, rng.standard_normal(n) * small),
             (np.r_[rng.standard_normal(b) * big, rng.standard_normal(n - b)], rng.standard_normal(n))]
    pairs += [(rng.standard_normal(n) * 10.0 ** rng.integers(-4, 4), rng.standard_normal(n)) for _ in range(24)]
    return [(np.float32(w), np.float32(x)) for w, x in pairs]


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("rtl")


@needs_simulator
@pytest.mark.parametrize("name", rtl.FORMATS)
def test_the_tile_equals_the_specification_bit_for_bit(name, build_dir):
    fmt = formats.get(name)
    rng = np.random.default_rng(3)
    pairs = _edge_pairs(fmt, rng)
    got, cycles = rtl.rows(pairs, fmt, build_dir)
    want = np.array([dot.matvec(w[None], x, fmt)[0] for w, x in pairs], np.float32)
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    assert same.all(), [(i, got[i], want[i]) for i in np.flatnonzero(~same)][:5]
    assert (~np.isfinite(want)).any() or fmt.exponent_bits == 5   # MSFP's largest exponents pass float32's range
    blocks = sum(-(-len(w) // fmt.block) for w, _ in pairs)
    assert cycles == blocks + rtl.FILL                              # one block a cycle, back to back


@needs_simulator
def test_a_dense_layer_of_a_shipped_network_and_its_cycles(build_dir):
    """SmallResnet's head (its shipped weights, 96 -> 10) on the features of a generated picture, in MSFP16 (blocks
    of 16: six per row); the simulated cycles equal the timing model's tile cycles for the same sizes."""
    from accel_lib import samples
    from accel_lib.models import small
    net = small.SmallResnet(build_dir / "models", weights="auto")
    x = np.asarray(samples.sample_batch(1, net.image_size, net.input_order, seed=4))      # preprocessed
    feats = np.asarray(net.featurizer(x, training=False))[0]
    kernel, _ = net.get_default_classifier().get_layer("predictions").get_weights()
    fmt = formats.get("msfp16")
    got, cycles = rtl.matvec(kernel.T, feats, fmt, build_dir)
    np.testing.assert_array_equal(got.view(np.uint32), dot.matvec(kernel.T, feats, fmt).view(np.uint32))
    rows, cols = kernel.T.shape
    model = timing.tile_cycles(rows, cols, lanes=fmt.block, engines=1, fill=rtl.FILL)
    print(f"{rows} x {cols} in {fmt.name}: {cycles} cycles simulated, {model} modeled, ratio {cycles / model:.2f}")
    assert cycles / model == 1.0
