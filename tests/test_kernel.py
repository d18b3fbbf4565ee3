"""The fused device quantizer (a compiled ONNX Runtime operator): bit for bit the numpy specification, alone and
inside a whole network, and the pure-ONNX path still used when the operator is not built or not wanted."""
import os
import subprocess
import sys

import numpy as np
import pytest
from test_formats import same_bits, vectors

from accel_lib.fpga.device import graph, formats, kernel


@pytest.fixture(scope="module")
def fused():
    if not kernel.available():
        msg = (f"the fused quantizer is not built ({kernel.LIBRARY}); `make kernel` builds it (needs g++ and npm "
               "once, for ONNX Runtime's headers)")
        if os.environ.get("CI") == "true":
            pytest.fail(msg)      # CI builds it (make test -> make venv), so a missing library is a failure there
        pytest.skip(msg)
    return "fused"


@pytest.mark.parametrize("name", [n for n in formats.NAMES if n != "fp32"])
@pytest.mark.parametrize("block", [None, 4])
@pytest.mark.parametrize("shape, axis", [((2, 256, 5, 5), 1), ((3, 300, 2, 2), 1), ((1, 64, 33, 31), 1),
                                         ((4, 200), 1), ((5, 37), -1), ((2, 3, 7), 0)])
def test_fused_quantizer_is_bit_exact(fused, name, block, shape, axis):
    fmt = formats.get(name, block)
    for nonneg in (False, True):
        x = vectors(name, shape, nonneg, seed="kernel")
        model = graph.quantizer_model(shape, axis, fmt, nonneg)
        assert [n.op_type for n in graph.fuse(model).graph.node] == [kernel.MX_OP if "mx" in name else kernel.OP]
        got = graph.session(model, kernel=fused).run(None, {"x": x})[0]
        assert same_bits(got, formats.quantize(x, fmt, axis)), (name, block, shape, axis, nonneg)


def test_a_device_graph_prepared_at_build_loads_by_path_and_a_stale_one_is_not_used(fused, tmp_path):
    import onnx
    x = vectors("ms-fp9", (2, 256, 5, 5), False, seed="prepared")
    path = tmp_path / "device.onnx"
    onnx.save(graph.quantizer_model(x.shape, 1, "ms-fp9"), str(path))
    assert graph.prepare(path) and graph.fused_path(path).is_file()
    want = formats.quantize(x, "ms-fp9", 1)
    assert same_bits(graph.session(path, kernel=fused).run(None, {"x": x})[0], want)
    path.write_bytes(b"not ONNX")                 # the source is not read while its fused form is as new
    os.utime(path, (1, 1))
    assert same_bits(graph.session(path, kernel=fused).run(None, {"x": x})[0], want)
    os.utime(path)                                # now newer than its fused form: that is stale and not used
    with pytest.raises(Exception, match="(?i)pars|decod|protobuf"):
        graph.session(path, kernel=fused)


def test_tiny_and_huge_blocks_in_8_bit_exponent_formats(fused):
    x = (np.random.default_rng(1).standard_normal((3, 64, 7)) * 2.0 ** -130).astype(np.float32)
    x[0, :, 0] = 1e-45           # the smallest subnormal: the step 2**-133 has no float32 inverse
    x[1, :, 1] = 3e38
    for name in ("msfp12", "msfp16"):
        got = graph.session(graph.quantizer_model(x.shape, 1, name), kernel=fused).run(None, {"x": x})[0]
        assert same_bits(got, formats.quantize(x, name, 1))


def quantizer_io(model, x, kernel_choice):
    """{tensor: value} for every recorded quantizer's input and output, run in ``model``."""
    import onnx
    from onnx import helper
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for q in graph.quantizers(model):
        for name in (q["input"], q["output"]):
            m.graph.output.append(helper.make_empty_tensor_value_info(name))
    sess = graph.session(m, kernel=kernel_choice)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))


def test_fused_network_quantizes_every_layer_input_exactly_and_each_layer_passes_the_check(fused, small_fp32,
                                                                                        monkeypatch):
    import onnx

    from accel_lib import samples
    from accel_lib.conversion import checks
    fp32 = onnx.load(str(small_fp32))
    model, layers = graph.apply_format(fp32, "ms-fp9")
    qs = graph.quantizers(model)
    assert len(qs) == 49 and len(layers) == 53            # shortcuts share their block input's quantizer
    fused_model = graph.fuse(model)
    assert sum(n.op_type == kernel.OP for n in fused_model.graph.node) == 49
    assert not any(i.name.startswith(qs[0]["output"] + "/") for i in fused_model.graph.initializer)
    x = samples.sample_batch(2, 64, "BGR")
    got = quantizer_io(model, x, fused)
    for q in qs:      # each quantizer's output is the specification applied to the input it got, bit for bit
        expected = formats.quantize(got[q["input"]], formats.get(q["format"], q["block"]), q["axis"])
        assert same_bits(got[q["output"]], expected), q["output"]
    plain = quantizer_io(model, x, "onnx")
    assert same_bits(plain[qs[0]["output"]], got[qs[0]["output"]])      # the first layer sees the same input
    # run free, the two paths differ in the order ONNX Runtime sums around the quantizer, which an input on a
    # rounding boundary can carry through every layer after it: each layer is judged on the reference's input
    for choice in (fused, "onnx"):
        monkeypatch.setenv(kernel.ENV, choice)
        _, judge = checks.judge_layers(fp32, model, formats.get("ms-fp9"), x)
        assert judge.layers == 53 and judge.used <= 1, choice


def residual_block(channels=32, quantized=True):
    """x -> conv -> relu = r; r -> [q] -> conv -> add r -> relu -> [q] -> conv: a ResNet block's shape."""
    from onnx import TensorProto
    from onnx import helper as h
    from onnx import numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((channels, channels, 1, 1)).astype(np.float32), f"w{i}")
             for i in range(3)]
    fmt = formats.get("ms-fp9")
    q = (lambda x, i: ([kernel.make_node(x, f"{x}/q", 1, fmt, f"q{i}")], f"{x}/q")) if quantized else \
        (lambda x, i: ([], x))
    a, xq = q("x", 0)
    b, rq = q("r0", 1)
    c, sq = q("r1", 2)
    nodes = [*a, h.make_node("Conv", [xq, "w0"], ["c0"]), h.make_node("Relu", ["c0"], ["r0"]), *b,
             h.make_node("Conv", [rq, "w1"], ["c1"]), h.make_node("Add", ["c1", "r0"], ["s"]),
             h.make_node("Relu", ["s"], ["r1"]), *c, h.make_node("Conv", [sq, "w2"], ["y"])]
    graph = h.make_graph(nodes, "block", [h.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, 8, 8])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid(kernel.DOMAIN, 1)],
                        ir_version=8)


def test_the_fused_operator_declares_its_output_shape_so_a_residual_add_and_relu_fuse(fused, tmp_path):
    import onnx
    import onnxruntime as ort

    def optimized(model, tag):
        opts = kernel.register(ort.SessionOptions())
        opts.optimized_model_filepath = str(tmp_path / f"{tag}.onnx")
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return sess, [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
    block = residual_block()
    sess, ops = optimized(block, "quantized")
    _, fp32_ops = optimized(residual_block(quantized=False), "fp32")
    assert sess.get_outputs()[0].shape == ["n", 32, 8, 8]          # the symbolic batch survives the operator
    # ONNX Runtime proves the Add's operands alike only from known shapes; with them, the Add and ReLU fuse into the
    # convolution as they do in fp32 (on this kind of CPU: into NCHWc convolutions)
    assert ops.count(kernel.OP) == 3, ops
    for op in ("Add", "Relu"):
        assert ops.count(op) == fp32_ops.count(op), (op, ops, fp32_ops)
    x = np.random.default_rng(1).standard_normal((2, 32, 8, 8)).astype(np.float32)
    w = [np.asarray(onnx.numpy_helper.to_array(i), np.float64)[:, :, 0, 0] for i in block.graph.initializer]
    conv = lambda v, k: np.einsum("oc,nchw->nohw", w[k], v)  # noqa: E731   (1x1 convolutions)
    q = lambda v: formats.quantize(v.astype(np.float32), "ms-fp9", 1).astype(np.float64)  # noqa: E731
    r0 = np.maximum(conv(q(x), 0), 0)
    want = conv(q(np.maximum(conv(q(r0), 1) + r0, 0)), 2)
    got = sess.run(None, {"x": x})[0]
    # float32 sums against float64 ones measured 1.2e-7 of the largest output here; on another CPU's summation order
    # a quantizer's input one rounding off may move a value one ms-fp9 step, so the bound is a step (2**-3) of the
    # largest output: a residual dropped or added twice is far outside it
    assert got.shape == (2, 32, 8, 8) and np.abs(got - want).max() <= 2 ** -3 * np.abs(want).max()


def test_onnx_path_is_used_when_asked_and_saved_models_stay_plain_onnx(monkeypatch):
    model = graph.quantizer_model((2, 8, 3), 1, "ms-fp9")
    assert kernel.OP not in {n.op_type for n in model.graph.node}          # what conversion saves: plain ONNX
    x = vectors("ms-fp9", (2, 8, 3), False)
    monkeypatch.setenv(kernel.ENV, "onnx")
    assert not kernel.use_fused()
    got = graph.session(model).run(None, {"x": x})[0]
    assert same_bits(got, formats.quantize(x, "ms-fp9", 1))
    monkeypatch.setenv(kernel.ENV, "sometimes")
    with pytest.raises(ValueError, match="auto, fused or onnx"):
        kernel.mode()


def test_fused_required_but_missing_says_how_to_build(monkeypatch, tmp_path):
    monkeypatch.setattr(kernel, "LIBRARY", tmp_path / "missing.so")
    with pytest.raises(RuntimeError, match="make kernel"):
        kernel.use_fused("fused")
    assert kernel.use_fused("auto") is False          # auto falls back to the pure-ONNX quantizer


def test_bad_attributes_are_refused_with_the_rule(fused):
    import onnxruntime as ort
    model = graph.fuse(graph.quantizer_model((2, 8), 1, "ms-fp9"))
    for a in model.graph.node[0].attribute:
        if a.name == "block":
            a.i = 0
    with pytest.raises(Exception, match="block >= 1"):
        opts = kernel.register(ort.SessionOptions())
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def test_build_command_reports_status():
    out = subprocess.run([sys.executable, "-m", "accel_lib.fpga.device.kernel", "status"], capture_output=True,
                         text=True, check=True).stdout
    assert str(kernel.LIBRARY) in out and ("not built" in out) != kernel.available()


def test_an_input_dimension_nobody_knows_stays_unknown_through_the_fused_quantizer(fused):
    """VGG-16's flattened features at 224 px: a dimension with neither a size nor a name must not come out of the
    fused quantizer as a size of -1 (then the Gemm that ONNX Runtime fuses from MatMul and Add refused to unify it
    with its weights' rows)."""
    import onnx
    from onnx import TensorProto
    from onnx import helper as h
    from onnx import numpy_helper
    rng = np.random.default_rng(2)
    w = rng.normal(0, 0.05, (300, 8)).astype(np.float32)
    g = h.make_graph([h.make_node("MatMul", ["x", "w"], ["m"]), h.make_node("Add", ["m", "b"], ["y"])], "fc",
                     [h.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                     [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.ones(8, np.float32), "b")])
    model, _ = graph.apply_format(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8), "ms-fp9")
    x = rng.normal(0, 1, (3, 300)).astype(np.float32)
    a = graph.session(model, kernel=fused).run(None, {"x": x})[0]
    b = graph.session(onnx.load_from_string(model.SerializeToString()), kernel="onnx").run(None, {"x": x})[0]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
