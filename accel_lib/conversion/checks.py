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
   reference device (formats.py applied to every matrix operation), as the largest difference relative to the
   largest value.
3. **Quantization effect**: the format against fp32 (per-layer SQNR, top-1 / top-5 agreement); a report, no bar.
"""
from __future__ import annotations

import numpy as np

from ..fpga import manifest

PARITY_IMAGES = 6
DEVICE_CHECK_IMAGES = 2
REPORT_IMAGES = 6
REPORT_BATCH = 1                # the report runs its images one at a time: every layer's output leaves the graph
                                # (VGG at 300 px: 100 MB per image and graph)
PARITY_TOLERANCE = 1e-3         # relative L2 error of any output, fp32 package vs TensorFlow (see above)
DEVICE_TOLERANCE = 1e-3         # largest difference / largest value, ONNX Runtime device vs reference device


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

    from ..fpga import host
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


def device_check(pkg, fp32_model, fmt, n=None) -> manifest.DeviceCheck:
    """The package's device stage (ONNX Runtime, in-graph format) vs the numpy reference device."""
    from ..fpga.reference import reference_device
    from ..samples import sample_images
    n = n or images_for(pkg.prep, DEVICE_CHECK_IMAGES, least=1)     # one image: every value of every map compared
    x = pkg.preprocess(sample_images(n, seed=31))
    dev = pkg.featurize(x)
    ref = reference_device(fp32_model, fmt)(x)
    rel = max(float(np.abs(dev[k] - ref[k]).max() / max(float(np.abs(ref[k]).max()), 1e-30)) for k in ref)
    if pkg.heads is not None:
        h_dev, h_ref = pkg.run_heads(dev), pkg.run_heads(ref)
        scores = class_scores(pkg.manifest.heads_outputs()) or pkg.manifest.stage("heads").outputs[:1]
        top1 = min(top1_agreement(h_ref[k], h_dev[k]) for k in scores)
    else:
        top1 = 1.0
    return manifest.DeviceCheck(
        images=n, max_rel_diff=rel, top1_agreement=top1, tolerance=DEVICE_TOLERANCE,
        measured="device stage: ONNX Runtime (format in the graph) vs numpy reference device (formats.py)")


def quantization_effect(pkg, fp32_model, device_model, layers, fmt, weights, n=None) -> manifest.QuantizationReport:
    """The format against fp32 on the same package: per-layer SQNR and agreement (the report), on ``n`` images
    run ``REPORT_BATCH`` at a time. The graphs may be given as paths (then they are not kept once their sessions
    exist)."""
    from ..fpga.quality import quantization_report
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
