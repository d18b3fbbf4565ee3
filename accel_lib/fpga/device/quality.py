"""Measurements of a device graph in a narrow format against its fp32 original (no plotting here), returned as
the typed report of ``manifest.QuantizationReport``."""
from __future__ import annotations

import numpy as np

from . import formats, manifest

LOG2_BINS = np.arange(-24, 17, 1.0)
SAMPLE_PER_BATCH = 20_000        # values of each layer's output kept per batch for its distribution


def _session(model, extra_outputs=(), inplace=False):
    """A session of ``model`` that also returns ``extra_outputs``; without ONNX Runtime's memory arena, since every
    layer's output leaves the graph and the arena would keep the largest batch's worth for good. ``inplace``: the
    outputs are added to ``model`` itself (the caller's copy is not needed afterwards)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from .graph import session
    if inplace:
        m = model
    else:
        m = onnx.ModelProto()
        m.CopyFrom(model)
    for name in extra_outputs:
        m.graph.output.append(helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = False
    return session(m, opts, inplace=True)


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


def _power(a):
    return float(np.sum(np.square(np.asarray(a, np.float64))))


def quantization_report(fp32_model, device_model, layers, fmt_name, batches, heads):
    """Per-layer weight and output SQNR, value distributions, top-1 agreement and top-5 overlap on the input ``batches``
    (an iterable of float32 [n, H, W, 3] arrays, run one at a time so that only one batch's layer outputs are held).

    ``heads`` maps the device outputs ({name: array}) to class scores [..., classes], on which agreement is
    counted (per image for a classifier, per anchor for a detector). SQNR sums signal and noise power over every
    batch (exact); the output distributions come from an evenly strided sample of each layer's outputs. The two
    graphs may be ModelProtos or paths; given paths, they are let go once their sessions exist."""
    import onnx
    from onnx import numpy_helper

    from .graph import MATRIX_OPS, release_freed_memory
    owned = not isinstance(fp32_model, onnx.ModelProto) and not isinstance(device_model, onnx.ModelProto)
    if owned:
        fp32_model, device_model = onnx.load(str(fp32_model)), onnx.load(str(device_model))
    outs = [n.output[0] for n in fp32_model.graph.node if n.op_type in MATRIX_OPS]
    nodes = {n.output[0]: (n.input[1], n.name) for n in fp32_model.graph.node if n.output[0] in outs}   # strings
    weights = {}                               # per layer: weight SQNR and both distributions, before the sessions
    f32_w = {i.name: i for i in fp32_model.graph.initializer}
    dev_w = {i.name: i for i in device_model.graph.initializer}
    for out in outs:
        w = nodes[out][0]
        a, b = numpy_helper.to_array(f32_w[w]), numpy_helper.to_array(dev_w[w])
        weights[out] = (w, formats.sqnr_db(a, b), _percentiles(a), _percentiles(b))
    del f32_w, dev_w
    feats = [o.name for o in fp32_model.graph.output]
    ref_sess = _session(fp32_model, outs, inplace=owned)
    del fp32_model
    release_freed_memory()
    dev_sess = _session(device_model, outs, inplace=owned)
    del device_model
    release_freed_memory()
    names = [o.name for o in ref_sess.get_outputs()]
    signal = dict.fromkeys([*outs, "features"], 0.0)
    noise = dict(signal)
    sample_ref, sample_dev = {o: [] for o in outs}, {o: [] for o in outs}
    top1, top5, images = [], [], 0
    for x in batches:
        feed = {ref_sess.get_inputs()[0].name: x}
        ref = dict(zip(names, ref_sess.run(None, feed)))
        dev = dict(zip(names, dev_sess.run(None, feed)))
        for o in outs:
            signal[o] += _power(ref[o])
            noise[o] += _power(np.asarray(ref[o], np.float64) - dev[o])
            step = max(1, ref[o].size // SAMPLE_PER_BATCH)
            sample_ref[o].append(np.ravel(ref[o])[::step].copy())     # a copy: a view would keep the batch
            sample_dev[o].append(np.ravel(dev[o])[::step].copy())
        for k in feats:
            signal["features"] += _power(ref[k])
            noise["features"] += _power(np.asarray(ref[k], np.float64) - dev[k])
        p_ref = heads({k: ref[k] for k in feats})
        p_dev = heads({k: dev[k] for k in feats})
        p_ref, p_dev = (p.reshape(-1, p.shape[-1]) for p in (p_ref, p_dev))
        top1 += list(p_ref.argmax(1) == p_dev.argmax(1))
        top5 += [len(set(np.argsort(-a)[:5]) & set(np.argsort(-b)[:5])) / 5 for a, b in zip(p_ref, p_dev)]
        images += len(x)
        del ref, dev
    rows = []
    for out, layer in zip(outs, layers):
        w, w_sqnr, w_fp32, w_dev = weights[out]
        rows.append(manifest.LayerReport(
            name=layer_name(w, nodes[out][1] or out), op=layer["op"], channels=layer["channels"],
            weight_sqnr_db=w_sqnr, output_sqnr_db=_sqnr(signal[out], noise[out]),
            weights_fp32_log2=w_fp32, weights_device_log2=w_dev,
            outputs_fp32_log2=_percentiles(np.concatenate(sample_ref[out])),
            outputs_device_log2=_percentiles(np.concatenate(sample_dev[out]))))
    return manifest.QuantizationReport(
        numeric_format=fmt_name, images=images, top1_agreement=float(np.mean(top1)),
        top5_overlap=float(np.mean(top5)), feature_sqnr_db=_sqnr(signal["features"], noise["features"]), layers=rows,
        measured="device graph in the format vs the fp32 device graph, ONNX Runtime, generated images")


def _sqnr(signal, noise):
    """10 log10(signal / noise), as formats.sqnr_db does for two arrays (inf when there is no noise)."""
    if noise == 0:
        return float("inf")
    if signal == 0:
        return float("-inf")
    return float(10 * np.log10(signal / noise))


def layer_name(weight, fallback):
    """The Keras layer a weight came from ('.../conv2_block1_1_conv_1/convolution/...' -> 'conv2_block1_1_conv')."""
    for part in weight.split("/"):
        if "conv" in part or part.startswith(("fc", "dense", "predictions")):
            return part[:-2] if part.endswith("_1") else part
    return fallback
