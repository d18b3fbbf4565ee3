"""What every conversion measures, on images the project generates.

1. **Parity**: the package with an fp32 device against the source TensorFlow model. Each converted stage is fed
   the same input in both and its outputs compared as a relative error ``||got - ref|| / ||ref||`` (L2 over the
   whole output). They differ only by the order of fp32 sums (TensorFlow/oneDNN and ONNX Runtime pick different
   kernels, and other kernels on other CPUs): noise relative to the values' scale. Comparing end-to-end
   probabilities instead would not bound it: softmax turns an absolute logit error into a relative probability
   error, and random heads give logits of +-70. Measured here (2 cores, AVX2, random weights, 32-300 px), the
   largest relative error per conversion: SSD-VGG 1e-6, VGG-16 1.4e-6, DenseNet-121 2.7e-6, ResNet-50 2.2e-5,
   ResNet-152 4.4e-5 (deep residual stacks accumulate the most); the heads on the same features ~6e-7.
   ``PARITY_TOLERANCE`` sits 20x above the worst, and orders of magnitude under any real conversion error (a wrong
   layer, layout or weight gives ~1). End to end, top-1 agreement and the largest absolute difference are
   reported.
2. **Device check**: the device stage as ONNX Runtime runs it (the format inside the graph) against the numpy
   reference device (formats.py applied to every matrix operation), **layer by layer on the reference's own
   input** (teacher forcing), so that a difference cannot compound: each quantized layer's ONNX Runtime form is fed
   the input the reference computed for it. Its quantized input must equal the reference's bit for bit, or differ
   by at most one step of the format (a value on a rounding boundary: counted, and reported as a fraction). Its
   output may differ only as fp32 summation order allows: both sums lie within ``gamma_n * sum|w x|`` of the exact
   one (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. 3.5: ``gamma_n = n u / (1 - n u)``,
   ``u = 2**-24``, ``n`` the terms each output sums, in any order, with or without FMA), so the bar is twice that,
   plus what the one-step inputs move. ``bound_used`` is the largest share of that bar any output used. The whole
   network run free (ONNX Runtime's own inputs all the way) is reported beside it, not judged: there one input on
   a rounding boundary early on moves every layer after it (ResNet-152 at 224 px: 0.07 of the largest feature on
   an AVX-512 CPU), which is arithmetic exact up to summation order, not a fault.
3. **Quantization effect**: the format against fp32 (per-layer SQNR, top-1 agreement, top-5 overlap); a report, no bar.
"""
from __future__ import annotations

import numpy as np

from ..fpga.device import manifest

PARITY_IMAGES = 6
DEVICE_CHECK_IMAGES = 2
REPORT_IMAGES = 6
REPORT_BATCH = 1                # the report runs its images one at a time: every layer's output leaves the graph
                                # (VGG at 300 px: 100 MB per image and graph)
PARITY_TOLERANCE = 1e-3         # relative L2 error of any output, fp32 package vs TensorFlow (see above)
UNIT_ROUNDOFF = 2.0 ** -24       # fp32's u
SMALLEST_NORMAL = 2.0 ** -126    # what a flushed subnormal can move a sum by, per term
JUDGE_BATCH_BYTES = 256 * 2**20  # the layers' inputs, outputs and bounds held before they are run and judged


def images_for(preprocessing, n, least=2) -> int:
    """``n`` images at 224x224, fewer for larger inputs (memory and time grow with pixels; at least ``least``)."""
    pixels = preprocessing["output_height"] * preprocessing["output_width"]
    return max(least, min(n, int(n * 224 * 224 / pixels)))


def relative_error(ref, got) -> float:
    """||got - ref|| / ||ref|| in float64 (0 when both are zero)."""
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    scale = np.linalg.norm(ref)
    diff = np.linalg.norm(got - ref)
    return float(diff / scale) if scale > 0 else float(diff)


def top1_agreement(ref, got) -> float:
    """The share of rows (images, or anchors) whose argmax over the last axis agrees."""
    ref, got = np.asarray(ref), np.asarray(got)
    return float(np.mean(ref.argmax(-1) == got.argmax(-1)))


def class_scores(tensors):
    """Keys of the tensors that hold class scores (their argmax is a class)."""
    return [t.key for t in tensors if t.kind in manifest.CLASS_SCORES]


def tensorflow_reference(loaded, meta, with_heads=True, n=None) -> dict:
    """TensorFlow's outputs for the parity check, from the source SavedModel (``loaded``) on ``n`` generated images:
    the preprocessed input (``x``), each feature (``feat/<key>``), the heads on those features (``head/<key>``) and
    the whole serving signature on the encoded images (``serve/<key>``)."""
    import tensorflow as tf

    from ..fpga.device import host
    from ..samples import sample_images
    n = n or images_for(meta.preprocessing, PARITY_IMAGES)
    imgs = sample_images(n, seed=11)
    sig = loaded.signatures
    x = host.preprocess(imgs, **meta.preprocessing)
    feats = {k: v.numpy() for k, v in sig[meta.signatures["featurize"]](image_tensors=tf.constant(x)).items()}
    out = {"x": x, **{f"feat/{k}": v for k, v in feats.items()}}
    if with_heads:
        heads = sig[meta.signatures["heads"]](**{k: tf.constant(v) for k, v in feats.items()})
        out.update({f"head/{k}": v.numpy() for k, v in heads.items()})
        serve = sig[meta.signatures["serving"]](images=tf.constant(imgs))
        out.update({f"serve/{k}": v.numpy() for k, v in serve.items()})
    return out


def parity_check(reference, meta, pkg) -> manifest.Parity:
    """The package with an fp32 device against TensorFlow's outputs (``tensorflow_reference``).

    Each converted stage is compared on the same input (the featurizer on the same preprocessed images, the heads
    on the same features), so that its own fp32 noise is measured and not what the network downstream makes of
    it; end to end, the top-1 agreement and the largest absolute difference are reported."""
    x = reference["x"]
    got_feats = pkg.featurize(x)
    errors = {t.name: relative_error(reference[f"feat/{t.key}"], got_feats[t.key]) for t in meta.features}
    result = {"images": int(len(x))}
    if pkg.heads is not None:
        ref_feats = {t.key: reference[f"feat/{t.key}"] for t in meta.features}
        ort_heads = pkg.run_heads(ref_feats)
        errors.update({t.name: relative_error(reference[f"head/{t.key}"], ort_heads[t.key]) for t in meta.outputs})
        got = pkg.run_heads(got_feats)
        ref = {t.key: reference[f"serve/{t.key}"] for t in meta.outputs}
        scores = class_scores(meta.outputs)
        result["max_abs_diff"] = max(float(np.abs(ref[t.key] - got[t.key]).max()) for t in meta.outputs)
        result["top1_agreement"] = min((top1_agreement(ref[k], got[k]) for k in scores), default=1.0)
    else:                                   # a featurizer-only package: the features are what it serves
        result["max_abs_diff"] = max(float(np.abs(reference[f"feat/{t.key}"] - got_feats[t.key]).max())
                                     for t in meta.features)
        result["top1_agreement"] = 1.0
    return manifest.Parity(
        **result, relative_error=errors, max_relative_error=max(errors.values()), tolerance=PARITY_TOLERANCE,
        measured="source SavedModel (TensorFlow) vs fp32 package (numpy host + ONNX Runtime): relative L2 error of "
                 "each stage's outputs on the same inputs; end to end, top-1 and max abs diff")


def gamma(n) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative bound of an fp32 sum of n terms, in any order."""
    return n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF)


class DeviceMismatch(RuntimeError):
    """A device layer differs from the reference by more than fp32 summation order allows."""


class _LayerJudge:
    """Runs the device graph's quantized layers (ONNX Runtime) on the reference's inputs, a few at a time (one session
    for up to ``JUDGE_BATCH_BYTES`` of inputs), and judges each."""

    def __init__(self, device_model, fmt):
        from ..fpga.device.graph import Layers
        self.layers_of, self.fmt = Layers(device_model), fmt
        self.layers = self.values = self.boundary = 0
        self.worst, self.used = "", 0.0
        self.pending, self.bytes = [], 0

    def __call__(self, node, x, xq, y, magnitude, terms):
        made = {t for p in self.pending for t in (p[0].output[0], self.layers_of.entry(p[0].output[0])["output"])}
        if self.layers_of.entry(node.output[0])["input"] in made:    # fed by a held layer: that one runs first
            self.flush()
        self.pending.append((node, np.asarray(x, np.float32), xq, y, magnitude, terms))
        self.bytes += 4 * (np.size(x) + np.size(xq) + np.size(y) + np.size(magnitude))
        if self.bytes > JUDGE_BATCH_BYTES:
            self.flush()

    def flush(self):
        """Run and judge the layers held so far."""
        from ..fpga.device.graph import session
        if not self.pending:
            return
        model = self.layers_of.model_of([p[0].output[0] for p in self.pending], [p[1].ndim for p in self.pending])
        feed = {}
        for node, x, *_ in self.pending:
            feed.setdefault(self.layers_of.entry(node.output[0])["input"], x)
        sess = session(model, inplace=True)
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
        for node, x, xq, y, magnitude, terms in self.pending:
            entry = self.layers_of.entry(node.output[0])
            self.judge(node, entry, x, xq, y, magnitude, terms, got[entry["output"]], got[node.output[0]])
        self.pending, self.bytes = [], 0

    def judge(self, node, entry, x, xq, y, magnitude, terms, got_q, got_y):
        name = node.name or node.output[0]
        apart, far = one_step_apart(x, xq, got_q, self.fmt, entry["axis"])
        if far.any():
            raise DeviceMismatch(f"layer {name}: {int(far.sum())} quantized input value(s) differ from the reference "
                                 "by more than one step of the format, or where the input is not on a rounding "
                                 "boundary")
        g = gamma(terms + 2)
        bound = 2 * g * np.asarray(magnitude, np.float64) + (terms + 2) * SMALLEST_NORMAL
        if apart.any():     # what the one-step inputs move through |w|, and the device's rounding of that part too
            bound = bound + (1 + 2 * g) * _through_weights(node, np.abs(got_q - xq), self.layers_of.model)
        diff = np.abs(got_y.astype(np.float64) - y)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(diff > 0, diff / bound, np.where(np.isnan(diff), np.inf, 0.0))   # one side NaN: past
        ratio = np.where(np.isnan(y) & np.isnan(got_y), 0.0, ratio)
        used = float(np.nanmax(ratio)) if ratio.size else 0.0
        if np.isnan(ratio).any() or not used <= 1:
            raise DeviceMismatch(f"layer {name}: the device's output differs from the reference by "
                                 f"{used:.3g} times what fp32 summation order allows")
        self.layers += 1
        self.values += int(xq.size)
        self.boundary += int(apart.sum())
        if used >= self.used:
            self.used, self.worst = used, name


def _through_weights(node, moved, device_model):
    """The layer's operator on |moved input| and |weights| (no bias), in float64: what inputs one step apart can
    move."""
    from onnx import TensorProto, numpy_helper
    from onnx import helper as h
    from onnx.reference import ReferenceEvaluator
    w = next(numpy_helper.to_array(i) for i in device_model.graph.initializer if i.name == node.input[1])
    attrs = {a.name: h.get_attribute_value(a) for a in node.attribute}
    if "alpha" in attrs:
        attrs["alpha"] = abs(attrs["alpha"])
    one = h.make_node(node.op_type, ["x", "w"], ["y"], **attrs)
    free = lambda name: h.make_tensor_value_info(name, TensorProto.DOUBLE, None)  # noqa: E731
    model = h.make_model(h.make_graph([one], "moved", [free("x"), free("w")], [free("y")]),
                         opset_imports=[h.make_opsetid("", 17)])
    return ReferenceEvaluator(model).run(None, {"x": moved.astype(np.float64), "w": np.abs(w).astype(np.float64)})[0]


def one_step_apart(x, want, got, fmt, axis):
    """(where ``got`` differs from ``want``, where it may not): two quantizations of the same input ``x`` may differ
    only by one step of the format, within its block's range, and only where ``x`` sits on the rounding boundary
    between the two (within 4 ulps of their midpoint: the quantizer's own fp32 arithmetic can round it either
    way)."""
    from ..fpga.device import formats
    apart = (got != want) & ~(np.isnan(got) & np.isnan(want))
    if not apart.any():
        return apart, apart
    a, b, v = (np.abs(np.asarray(t, np.float64)) for t in (want, got, x))
    on_edge = np.abs(v - (a + b) / 2) <= 4 * np.spacing(np.abs(np.asarray(x, np.float32)))
    step, top = formats.grid(x, fmt, axis)
    neighbours = (np.abs(b - a) <= step) & (b <= top) & (np.sign(got) * np.sign(want) >= 0)
    return apart, apart & ~(on_edge & neighbours)


def judge_layers(fp32_model, device_model, fmt, x):
    """Every quantized layer of ``device_model`` (ONNX Runtime) on the numpy reference device's own inputs for the
    images ``x``: (the reference device's outputs, the judge: ``layers``, ``values``, ``boundary``, ``used``,
    ``worst``). DeviceMismatch names the first layer past its bound."""
    from ..fpga.device.reference import reference_device
    judge = _LayerJudge(device_model, fmt)
    ref = reference_device(fp32_model, fmt, on_layer=judge)(x)
    judge.flush()
    del judge.layers_of
    return ref, judge


def device_check(pkg, fp32_model, device_model, fmt, n=None) -> manifest.DeviceCheck:
    """The package's device stage (ONNX Runtime, in-graph format) against the numpy reference device: every
    quantized layer on the reference's own input (judged, see the module's docstring), and the whole network run
    free (reported). DeviceMismatch names the first layer past its bound."""
    from ..samples import sample_images
    n = n or images_for(pkg.prep, DEVICE_CHECK_IMAGES, least=1)     # one image: every value of every map compared
    x = pkg.preprocess(sample_images(n, seed=31))
    ref, judge = judge_layers(fp32_model, device_model, fmt, x)
    del device_model
    dev = pkg.featurize(x)
    rel = max(float(np.abs(dev[k] - ref[k]).max() / max(float(np.abs(ref[k]).max()), 1e-30)) for k in ref)
    if pkg.heads is not None:
        h_dev, h_ref = pkg.run_heads(dev), pkg.run_heads(ref)
        scores = class_scores(pkg.manifest.heads_outputs()) or pkg.manifest.stage("heads").outputs[:1]
        top1 = min(top1_agreement(h_ref[k], h_dev[k]) for k in scores)
    else:
        top1 = 1.0
    return manifest.DeviceCheck(
        images=n, layers=judge.layers, values=judge.values, boundary_values=judge.boundary,
        boundary_fraction=judge.boundary / max(judge.values, 1), worst_layer=judge.worst, bound_used=judge.used,
        max_rel_diff=rel, top1_agreement=top1,
        measured="each quantized layer of the device stage (ONNX Runtime, format in the graph) on the numpy "
                 "reference device's own input, its output within fp32 summation order's bound; the whole "
                 "network run free: largest difference / largest feature, top-1 agreement (reported)")


def quantization_effect(pkg, fp32_model, device_model, layers, fmt, weights, n=None) -> manifest.QuantizationReport:
    """The format against fp32 on the same package: per-layer SQNR and agreement (the report), on ``n`` images
    run ``REPORT_BATCH`` at a time. The graphs may be given as paths (then they are not kept once their sessions
    exist)."""
    from ..fpga.device.quality import quantization_report
    from ..samples import sample_images
    n = n or images_for(pkg.prep, REPORT_IMAGES)
    images = sample_images(n, seed=51)
    batches = (pkg.preprocess(images[i:i + REPORT_BATCH]) for i in range(0, n, REPORT_BATCH))
    if pkg.heads is not None:
        keys = class_scores(pkg.manifest.heads_outputs()) or pkg.manifest.stage("heads").outputs[:1]

        def scores(features):
            out = pkg.run_heads(features)
            return np.concatenate([out[k].reshape(-1, out[k].shape[-1]) for k in keys])
    else:                                   # features only: agreement of the features' largest component
        def scores(features):
            return np.concatenate([v.reshape(len(v), -1) for v in features.values()], axis=1)
    report = quantization_report(fp32_model, device_model, layers, fmt.name, batches, scores)
    report.weights = weights
    report.random_weights = str(weights).startswith("random")
    return report
