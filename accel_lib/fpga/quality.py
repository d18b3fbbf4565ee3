"""Measurements of a device graph in a narrow format against its fp32 original (no plotting here)."""
from __future__ import annotations

import numpy as np

from . import formats

LOG2_BINS = np.arange(-24, 17, 1.0)


def _session(model, extra_outputs=()):
    import onnx
    from onnx import helper

    from .device import session
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for name in extra_outputs:
        m.graph.output.append(helper.make_empty_tensor_value_info(name))
    return session(m)


def _percentiles(a, most=1_000_000):
    """log2 |value| at the 0/25/50/75/100th percentiles (of an evenly strided sample of large tensors)."""
    a = np.ravel(a)
    if a.size > most:
        a = a[::a.size // most + 1]
    v = np.abs(a[np.isfinite(a)])
    v = v[v > 0]
    if not v.size:
        return None
    return [float(x) for x in np.percentile(np.log2(v), [0, 25, 50, 75, 100])]


def quantization_report(fp32_model, device_model, layers, fmt_name, x, heads):
    """Per-layer weight and output SQNR, value distributions, and top-1 / top-5 agreement on inputs ``x``.

    ``heads`` maps the device outputs ({name: array}) to class scores [..., classes], on which agreement is
    counted (per image for a classifier, per anchor for a detector)."""
    from onnx import numpy_helper
    outs = [n.output[0] for n in fp32_model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    ref_sess, dev_sess = _session(fp32_model, outs), _session(device_model, outs)
    feed = {ref_sess.get_inputs()[0].name: x}
    ref = dict(zip([o.name for o in ref_sess.get_outputs()], ref_sess.run(None, feed)))
    dev = dict(zip([o.name for o in dev_sess.get_outputs()], dev_sess.run(None, feed)))
    f32_w = {i.name: numpy_helper.to_array(i) for i in fp32_model.graph.initializer}
    dev_w = {i.name: numpy_helper.to_array(i) for i in device_model.graph.initializer}
    nodes = {n.output[0]: n for n in fp32_model.graph.node}
    rows = []
    for out, layer in zip(outs, layers):
        w = nodes[out].input[1]
        rows.append({"name": layer_name(w, nodes[out].name or out), "op": layer["op"], "channels": layer["channels"],
                     "weight_sqnr_db": formats.sqnr_db(f32_w[w], dev_w[w]),
                     "output_sqnr_db": formats.sqnr_db(ref[out], dev[out]),
                     "weights_fp32_log2": _percentiles(f32_w[w]), "weights_device_log2": _percentiles(dev_w[w]),
                     "outputs_fp32_log2": _percentiles(ref[out]), "outputs_device_log2": _percentiles(dev[out])})
    feats = [o.name for o in fp32_model.graph.output]
    p_ref = heads({k: ref[k] for k in feats})
    p_dev = heads({k: dev[k] for k in feats})
    p_ref, p_dev = (p.reshape(-1, p.shape[-1]) for p in (p_ref, p_dev))
    top5 = [len(set(np.argsort(-a)[:5]) & set(np.argsort(-b)[:5])) / 5 for a, b in zip(p_ref, p_dev)]
    flat = lambda d: np.concatenate([d[k].ravel() for k in feats])  # noqa: E731
    return {"numeric_format": fmt_name, "images": int(len(x)),
            "top1_agreement": float(np.mean(p_ref.argmax(1) == p_dev.argmax(1))), "top5_overlap": float(np.mean(top5)),
            "feature_sqnr_db": formats.sqnr_db(flat(ref), flat(dev)), "layers": rows,
            "measured": "device graph in the format vs the fp32 device graph, ONNX Runtime, generated images"}


def layer_name(weight, fallback):
    """The Keras layer a weight came from ('.../conv2_block1_1_conv_1/convolution/...' -> 'conv2_block1_1_conv')."""
    for part in weight.split("/"):
        if "conv" in part or part.startswith(("fc", "dense", "predictions")):
            return part[:-2] if part.endswith("_1") else part
    return fallback
