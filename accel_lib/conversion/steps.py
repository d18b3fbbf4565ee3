"""The conversion as named steps over one shared state, the way FINN's build steps work (``step(state) -> state``).

``STEPS``, in order:

========================  =======================================================================================
freeze (TensorFlow)       each stage's function from the SavedModel, its variables frozen to constants (a GraphDef),
                          and TensorFlow's own outputs on generated images (the parity check's reference)
to_onnx (tf2onnx)         each frozen GraphDef -> ONNX, inputs and outputs named by the saved model's keys
fold                      ONNX Runtime's basic rewrites of the featurizer: batch normalisation folded into the
                          convolutions, constants folded (standard ONNX ops), so that the device quantizes the
                          weights it will really hold
device_format             the device's numeric format applied to the featurizer (``fpga.device.graph.apply_format``);
                          the package's graphs and manifest written
check_parity              the fp32 package against TensorFlow's outputs
check_device              the device graph against the numpy reference device
report                    the format against fp32, layer by layer (``report.json``)
========================  =======================================================================================

When the steps are done, ``record_checks`` writes what the checks measured into the manifest (typed:
``fpga.device.manifest.Parity``, ``DeviceCheck``; the report is ``QuantizationReport``). Each step process is
``runner.step_command`` (the conversion's process entry, ``worker``, given ``STEP_FLAG``).

Memory: every step runs in a process of its own that ends with the step (a process without TensorFlow starts in
0.25 s); a model whose weights are under ``SMALL_MODEL_BYTES`` runs all its steps in one process. TensorFlow keeps
the graphs and functions it builds, protobuf's default (upb) implementation keeps every copy of a message that was
assigned into another until all of them are garbage (protobuf #19674), and ONNX Runtime's arenas keep their largest
size: a process that does everything only grows. Measured on ResNet-50 at
224 px, 2 cores: everything in one process 9.0 GB; step by step at most 1.16 GB (``freeze`` 1.04, ``to_onnx`` 1.12
on protobuf's pure-Python implementation, 3.4 on upb; ``report`` 1.16). Grappler, which tf2onnx runs by default, is
not used: it took 1.4 GB to fold the batch norms that ``fold`` folds in ONNX.

The fp32 graphs depend only on the source model, so the runner's cache keeps them (and TensorFlow's reference
outputs) for further conversions of the same source into other formats; the log says when they are reused.
"""
from __future__ import annotations

import dataclasses
import shutil
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .state import OPSET, PURE_PYTHON_PROTOBUF, ConversionState, log


# -- the steps -------------------------------------------------------------------------------------------
def _tensorflow():
    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")
    return tf


def _specs(tf, meta, stage):
    """(input signature, keys of the inputs) of one stage's function."""
    if stage == "featurize":
        p = meta.preprocessing
        return ([tf.TensorSpec([None, p["output_height"], p["output_width"], 3], tf.float32, name="image_tensors")],
                ["image_tensors"])
    return [tf.TensorSpec([None, *f.shape[1:]], tf.float32, name=f.key) for f in meta.features], \
        [f.key for f in meta.features]


def freeze(state: ConversionState) -> ConversionState:
    """TensorFlow: each needed stage frozen to a GraphDef (tf2onnx's freezing for large models, which does not load
    the frozen function back into TensorFlow), and TensorFlow's outputs for the parity check."""
    import numpy as np
    from tf2onnx import tf_loader

    from . import checks
    tf = _tensorflow()
    meta = state.metadata
    loaded = tf.saved_model.load(state.source_dir)
    for stage in state.stages:
        specs, keys = _specs(tf, meta, stage)
        concrete = getattr(loaded, meta.signatures[stage]).get_concrete_function(*specs)
        inputs = [t.name for t in concrete.inputs if t.dtype != tf.dtypes.resource]
        outputs = {t.name: key for key, t in concrete.structured_outputs.items()}
        with tf.device("/cpu:0"):
            graph_def = tf_loader.convert_variables_to_constants_large_model(concrete)
        graph_def = tf_loader.fix_freezing_errors_part2(graph_def)
        path = Path(state.work) / f"{stage}.frozen.pb"
        path.write_bytes(graph_def.SerializeToString())
        state.frozen[stage] = {"graph": str(path), "inputs": dict(zip(inputs, keys)), "outputs": outputs}
        log(f"  {stage}: {len(graph_def.node)} TensorFlow nodes, {path.stat().st_size / 2**20:.1f} MB of constants "
            "and graph")
        del graph_def, concrete
    if state.checks:
        ref = checks.tensorflow_reference(loaded, meta, with_heads="heads" in state.stages)
        state.reference = str(Path(state.work) / "tensorflow_reference.npz")
        np.savez(state.reference, **ref)
        log(f"  TensorFlow's outputs on {len(ref['x'])} generated images kept for the parity check")
    return state


def to_onnx(state: ConversionState) -> ConversionState:
    """tf2onnx: each frozen GraphDef -> an ONNX graph whose inputs and outputs carry the saved model's keys."""
    import onnx
    import tf2onnx
    from tf2onnx import optimizer, tfonnx
    tf = _tensorflow()
    for stage, frozen in state.frozen.items():
        graph_def = tf.compat.v1.GraphDef.FromString(Path(frozen["graph"]).read_bytes())
        with tf.Graph().as_default() as tf_graph:
            tf.import_graph_def(graph_def, name="")
            del graph_def
            g = tfonnx.process_tf_graph(tf_graph, opset=OPSET, input_names=list(frozen["inputs"]),
                                        output_names=list(frozen["outputs"]),
                                        tensors_to_rename={**frozen["inputs"], **frozen["outputs"]})
        del tf_graph
        g = optimizer.optimize_graph(g, catch_errors=False)     # an optimizer that fails is an error, not skipped
        model = g.make_model(f"accel_lib {stage} stage, converted by tf2onnx {tf2onnx.__version__}")
        del g
        got, want = sorted(o.name for o in model.graph.output), sorted(frozen["outputs"].values())
        if got != want:
            raise RuntimeError(f"tf2onnx named the {stage} outputs {got}, expected {want}")
        path = Path(state.work) / f"{stage}.fp32.onnx"
        onnx.save(model, str(path))
        state.fp32[stage] = str(path)
        log(f"  {stage}: {len(model.graph.node)} ONNX nodes")
    return state


def fold(state: ConversionState) -> ConversionState:
    """ONNX Runtime's basic graph rewrites on the featurizer (batch norms into convolutions, constants folded)."""
    import onnx
    import onnxruntime as ort
    src = state.fp32["featurize"]
    dst = str(Path(state.work) / "featurize.fp32.folded.onnx")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = dst
    opts.log_severity_level = 3
    ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    model = onnx.load(dst)
    used = {n.domain for n in model.graph.node}
    if used - {"", "ai.onnx"}:
        raise RuntimeError(f"ONNX Runtime's basic rewrites left operators of domains {sorted(used)}; expected "
                           "standard ONNX only")
    keep = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    before = len(onnx.load(src, load_external_data=False).graph.node)
    onnx.save(model, dst)
    state.fp32["featurize"] = dst
    log(f"  {before} -> {len(model.graph.node)} nodes (batch norms and constants folded into the convolutions)")
    return state


def device_format(state: ConversionState) -> ConversionState:
    """The device's format on the featurizer, the heads copied as they are; its timing on the device modeled; the
    package's manifest written."""
    import json
    import math

    import onnx

    from ..fpga.device import formats, graph, manifest, timing
    meta = state.metadata
    fmt = formats.get(state.numeric_format, state.block_size)
    pkg = Path(state.package_dir)
    if pkg.exists():
        shutil.rmtree(pkg)
    pkg.mkdir(parents=True)
    device_model, layers = graph.apply_format(onnx.load(state.fp32["featurize"]), fmt)
    onnx.save(device_model, str(pkg / manifest.DEVICE_FILE))
    state.layers = layers
    log("  " + (f"{fmt.describe()}, {len(layers)} layers quantized (weights once, activations at each layer input)"
                if fmt else "fp32 (the reference format): nothing quantized"))
    h, w = meta.preprocessing["output_height"], meta.preprocessing["output_width"]
    report = timing.analyze(device_model, timing.preset(state.device), state.numeric_format, input_bytes=4 * 3 * h * w,
                            output_bytes=4 * sum(abs(math.prod(f.shape)) for f in meta.features),
                            input_shape=[1, h, w, 3])
    (pkg / timing.REPORT_FILE).write_text(json.dumps(report, indent=1))
    net = report["network"]
    log(f"  modeled on {state.device}: {1000 * net['latency_s']:.2f} ms at batch 1, {net['throughput_ips']:.0f} "
        f"images/s, bottleneck {net['bottleneck']} ({net['bottleneck_share']:.0%} of the cycles)")
    stages = [manifest.Stage("preprocess", "host", params=meta.preprocessing, outputs=["image_tensors"]),
              manifest.Stage("featurizer", "device", manifest.DEVICE_FILE, inputs=["image_tensors"],
                             outputs=[f.key for f in meta.features], numeric_format=state.numeric_format,
                             block_size=fmt.block if fmt else None, format=fmt.describe() if fmt else "IEEE fp32",
                             quantized_layers=len(layers),
                             params={"input_shape": [-1, meta.preprocessing["output_height"],
                                                     meta.preprocessing["output_width"], 3]})]
    tensors = list(meta.features)
    if "heads" in state.stages:
        shutil.copyfile(state.fp32["heads"], pkg / manifest.HEADS_FILE)
        stages.append(manifest.Stage("heads", "host", manifest.HEADS_FILE, inputs=[f.key for f in meta.features],
                                     outputs=[o.key for o in meta.outputs], format="IEEE fp32"))
        tensors += meta.outputs
    by_name = meta.by_name()
    served = list(dict.fromkeys(by_name[n].name for n in state.outputs))
    m = manifest.PackageManifest(
        source_model=dict(state.source), model_class=meta.model_class, model_version=meta.version,
        weights=meta.weights, numeric_format=state.numeric_format, input=meta.input, tensors=tensors,
        outputs=served, stages=stages, tools=tool_versions(), labels=meta.labels, class_names=meta.class_names,
        postprocess=meta.postprocess if "heads" in state.stages else None, device_preset=state.device,
        timing=timing.REPORT_FILE)
    manifest.write(m, pkg)
    return state


def check_parity(state: ConversionState) -> ConversionState:
    """The package with the fp32 featurizer against TensorFlow's outputs; RuntimeError past the bar."""
    import numpy as np

    from ..fpga.device.package import AcceleratorPackage
    from . import checks
    ref = dict(np.load(state.reference))
    pkg = AcceleratorPackage(state.package_dir, device_file=state.fp32["featurize"], arena=False)
    parity = checks.parity_check(ref, state.metadata, pkg)
    log(f"  parity (fp32): top-1 agreement {parity.top1_agreement:.0%}, largest relative error "
        f"{parity.max_relative_error:.2g} (bar {parity.tolerance:g}), max abs difference "
        f"{parity.max_abs_diff:.3g} over {parity.images} images (source TensorFlow model vs fp32 package)")
    if parity.max_relative_error > parity.tolerance:
        worst = max(parity.relative_error, key=parity.relative_error.get)
        raise RuntimeError(f"the fp32 package disagrees with the source model on {worst} (relative error "
                           f"{parity.max_relative_error:.3g} > {parity.tolerance:g}): a conversion bug, "
                           "please report it.")
    state.parity = dataclasses.asdict(parity)
    return state


def check_device(state: ConversionState) -> ConversionState:
    """The device graph (ONNX Runtime, format inside the graph) against the numpy reference device, layer by layer
    on the reference's own input (``checks.device_check``)."""
    import onnx

    from ..fpga.device import formats, kernel, manifest
    from ..fpga.device.package import AcceleratorPackage
    from . import checks
    fmt = formats.get(state.numeric_format, state.block_size)
    if fmt is None:
        return state
    try:
        check = checks.device_check(AcceleratorPackage(state.package_dir, arena=False),
                                    onnx.load(state.fp32["featurize"]),
                                    onnx.load(str(Path(state.package_dir) / manifest.DEVICE_FILE)), fmt)
    except checks.DeviceMismatch as e:
        raise RuntimeError(f"the {fmt.name} device graph disagrees with the reference device at {e}: a simulator "
                           "bug, please report it.") from None
    log(f"  device check ({fmt.name}): {check.layers} quantized layers on the reference device's own inputs, each "
        f"within what fp32 summation order allows (at most {check.bound_used:.2g} of its bound); quantized inputs "
        f"one step apart on a rounding boundary: {check.boundary_values} of {check.values:,} "
        f"({check.boundary_fraction:.2g}). Run free, the whole network differs by {check.max_rel_diff:.3g} of its "
        f"largest feature, top-1 agreement {check.top1_agreement:.0%} (reported, not judged; quantizer: "
        f"{kernel.label()})")
    state.device_check = dataclasses.asdict(check)
    return state


def report(state: ConversionState) -> ConversionState:
    """The narrow format against fp32, layer by layer, written as the package's report."""
    from ..fpga.device import formats, manifest
    from ..fpga.device.package import AcceleratorPackage
    from . import checks
    fmt = formats.get(state.numeric_format, state.block_size)
    if fmt is None:
        return state
    pkg = AcceleratorPackage(state.package_dir, device=False, arena=False)    # host stages: the report runs graphs
    rep = checks.quantization_effect(pkg, state.fp32["featurize"], Path(state.package_dir) / manifest.DEVICE_FILE,
                                     state.layers, fmt, state.metadata.weights)
    manifest.write(rep, state.package_dir)
    state.report = rep.summary()
    log(f"  quantization effect ({fmt.name} vs fp32): top-1 agreement {rep.top1_agreement:.0%}, top-5 overlap "
        f"{rep.top5_overlap:.0%}, feature SQNR {rep.feature_sqnr_db:.1f} dB over {rep.images} images"
        + (" — RANDOM WEIGHTS: not what a trained model would show" if rep.random_weights else ""))
    return state


def record_checks(state: ConversionState):
    """Write what the checks measured into the package's manifest (typed: ``manifest.Parity``,
    ``manifest.DeviceCheck``, the report's file); nothing when no check ran."""
    from ..fpga.device import manifest
    if not (state.parity or state.device_check or state.report):
        return
    m = manifest.read(manifest.PackageManifest, state.package_dir)
    m.parity = manifest.build(manifest.Parity, state.parity) if state.parity else None
    m.device_check = manifest.build(manifest.DeviceCheck, state.device_check) if state.device_check else None
    m.report = manifest.REPORT_FILE if state.report else None
    manifest.write(m, state.package_dir)


@dataclass(frozen=True)
class Step:
    """One named step, run in a process of its own with ``env`` added to its environment."""
    name: str
    run: typing.Callable[[ConversionState], ConversionState]
    what: str
    env: dict = field(default_factory=dict)
    checks_only: bool = False
    narrow_only: bool = False       # only for a narrow format (nothing to compare in fp32)


STEPS = (
    Step("freeze", freeze, "TensorFlow: stages frozen to constants, TensorFlow's outputs for the parity check"),
    Step("to_onnx", to_onnx, "tf2onnx: frozen graphs -> ONNX", PURE_PYTHON_PROTOBUF),
    Step("fold", fold, "ONNX Runtime's basic rewrites of the featurizer"),
    Step("device_format", device_format, "the device's numeric format; the package written"),
    Step("check_parity", check_parity, "fp32 package vs TensorFlow", checks_only=True),
    Step("check_device", check_device, "device graph vs the numpy reference device", checks_only=True,
         narrow_only=True),
    Step("report", report, "the format against fp32, layer by layer", checks_only=True, narrow_only=True),
)
FP32_STEPS = ("freeze", "to_onnx", "fold")         # what the cache saves a further conversion of the same source


def by_name(name) -> Step:
    """The step called ``name``."""
    for s in STEPS:
        if s.name == name:
            return s
    raise ValueError(f"no conversion step {name!r}; steps are {[s.name for s in STEPS]}")


def tool_versions() -> dict:
    """Versions of the tools that build a package (recorded in its manifest), read without importing them."""
    from importlib import metadata

    from .. import __version__
    return {**{d: metadata.version(d) for d in ("tensorflow", "tf2onnx", "onnx", "onnxruntime")},
            "accel_lib": __version__}
