"""The conversion as named steps over one shared state, the way FINN's build steps work (``step(state) -> state``).

``STEPS``, in order:

========================  =======================================================================================
freeze (TensorFlow)       each stage's function from the SavedModel, its variables frozen to constants (a GraphDef),
                          and TensorFlow's own outputs on generated images (the parity check's reference)
to_onnx (tf2onnx)         each frozen GraphDef -> ONNX, inputs and outputs named by the saved model's keys
fold                      ONNX Runtime's basic rewrites of the featurizer: batch normalisation folded into the
                          convolutions, constants folded (standard ONNX ops), so that the device quantizes the
                          weights it will really hold
device_format             the device's numeric format applied to the featurizer (``fpga.device.apply_format``);
                          the package's graphs and manifest written
check_parity              the fp32 package against TensorFlow's outputs
check_device              the device graph against the numpy reference device
report                    the format against fp32, layer by layer (``report.json``)
========================  =======================================================================================

When the steps are done, ``record_checks`` writes what the checks measured into the manifest (typed:
``fpga.manifest.Parity``, ``DeviceCheck``; the report is ``QuantizationReport``). Each step process is
``step_command`` (the conversion's process entry, ``worker``, given ``STEP_FLAG``).

Memory: every step runs in a process of its own that ends with the step (a process without TensorFlow starts in
0.25 s); a model whose weights are under ``SMALL_MODEL_BYTES`` runs all its steps in one process. TensorFlow keeps
the graphs and functions it builds, protobuf's default (upb) implementation keeps every copy of a message that was
assigned into another until all of them are garbage (protobuf #19674), and ONNX Runtime's arenas keep their largest
size: a process that does everything only grows. Measured on ResNet-50 at
224 px, 2 cores: everything in one process 9.0 GB; step by step at most 1.16 GB (``freeze`` 1.04, ``to_onnx`` 1.12
on protobuf's pure-Python implementation, 3.4 on upb; ``report`` 1.16). Grappler, which tf2onnx runs by default, is
not used: it took 1.4 GB to fold the batch norms that ``fold`` folds in ONNX.

The fp32 graphs depend only on the source model, so ``cache`` keeps them (and TensorFlow's reference outputs) for
further conversions of the same source into other formats; the log says when they are reused.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

OPSET = 17
STAGES = ("featurize", "heads")         # the saved model's stage signatures the converter turns into graphs
PURE_PYTHON_PROTOBUF = {"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
SMALL_MODEL_BYTES = 32 << 20            # weights under this: every step in one process (what a process keeps
                                        # grows with the weights; TensorFlow is imported once instead of twice)


def log(msg):
    """One timestamped line of the conversion's log (stdout is the operation's log file)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def strip_timestamp(line) -> str:
    """A log line without the timestamp ``log`` put in front of it."""
    if len(line) > 11 and line[0] == "[" and line[9:11] == "] ":
        return line[11:]
    return line


@dataclass
class ConversionState:
    """What the steps share. Plain values only: it is written to JSON when a step runs in its own process."""
    source_dir: str                               # the saved model folder (SavedModel + accel_model.json)
    work: str                                     # this conversion's scratch folder
    package_dir: str                              # where the package is written
    outputs: list[str]                            # the output names to serve, as given to the converter
    numeric_format: str
    block_size: typing.Optional[int] = None
    source: dict = field(default_factory=dict)    # {"name", "version"} of the registered source, if any
    checks: bool = True                           # run the three checks (the converter always does)
    cache: str = ""                               # a folder for the fp32 graphs of this source ("" : no cache)
    stages: list[str] = field(default_factory=list)       # the saved model's stages this package needs
    frozen: dict = field(default_factory=dict)    # stage -> {"graph": path, "inputs": {tensor: key}, "outputs": ...}
    fp32: dict = field(default_factory=dict)      # stage -> fp32 ONNX path (the featurizer's after ``fold``)
    reference: str = ""                           # .npz of TensorFlow's outputs for the parity check
    cached_from: str = ""                         # the cache folder the fp32 graphs came from, if they did
    layers: list = field(default_factory=list)   # the quantized layers (fpga.device.apply_format's records)
    parity: typing.Optional[dict] = None
    device_check: typing.Optional[dict] = None
    report: typing.Optional[dict] = None
    timings: list = field(default_factory=list)   # [step, seconds, peak RSS of its process in MB]

    def save(self, path):
        """Write the state as JSON (atomically)."""
        tmp = Path(f"{path}.tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=1))
        os.replace(tmp, path)
        return Path(path)

    @classmethod
    def load(cls, path):
        """The state a step wrote."""
        return cls(**json.loads(Path(path).read_text()))

    @property
    def metadata(self):
        """The saved model's typed accel_model.json."""
        from ..fpga import manifest
        return manifest.read(manifest.SavedModelMetadata, self.source_dir)


class StepFailed(RuntimeError):
    """A step's own process ended without finishing the step (killed, or an error it could not report)."""


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
    """The device's format on the featurizer, the heads copied as they are; the package's manifest written."""
    import onnx

    from ..fpga import device, formats, manifest
    meta = state.metadata
    fmt = formats.get(state.numeric_format, state.block_size)
    pkg = Path(state.package_dir)
    if pkg.exists():
        shutil.rmtree(pkg)
    pkg.mkdir(parents=True)
    device_model, layers = device.apply_format(onnx.load(state.fp32["featurize"]), fmt)
    onnx.save(device_model, str(pkg / manifest.DEVICE_FILE))
    state.layers = layers
    log("  " + (f"{fmt.describe()}, {len(layers)} layers quantized (weights once, activations at each layer input)"
                if fmt else "fp32 (the reference format): nothing quantized"))
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
        postprocess=meta.postprocess if "heads" in state.stages else None)
    manifest.write(m, pkg)
    return state


def check_parity(state: ConversionState) -> ConversionState:
    """The package with the fp32 featurizer against TensorFlow's outputs; RuntimeError past the bar."""
    import numpy as np

    from ..fpga.package import AcceleratorPackage
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
    """The device graph (ONNX Runtime, format inside the graph) against the numpy reference device."""
    import onnx

    from ..fpga import formats, kernel
    from ..fpga.package import AcceleratorPackage
    from . import checks
    fmt = formats.get(state.numeric_format, state.block_size)
    if fmt is None:
        return state
    check = checks.device_check(AcceleratorPackage(state.package_dir, arena=False), onnx.load(state.fp32["featurize"]),
                                fmt)
    log(f"  device check ({fmt.name}): max relative difference {check.max_rel_diff:.3g}, top-1 agreement "
        f"{check.top1_agreement:.0%} (ONNX Runtime device, quantizer: {kernel.label()}, vs numpy reference "
        "device)")
    if check.max_rel_diff > check.tolerance:
        raise RuntimeError(f"the {fmt.name} device graph disagrees with the reference device "
                           f"({check.max_rel_diff:.3g}): a simulator bug, please report it.")
    state.device_check = dataclasses.asdict(check)
    return state


def report(state: ConversionState) -> ConversionState:
    """The narrow format against fp32, layer by layer, written as the package's report."""
    from ..fpga import formats, manifest
    from ..fpga.package import AcceleratorPackage
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
    from ..fpga import manifest
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


# -- running them ----------------------------------------------------------------------------------------
def needed_stages(meta, outputs):
    """The saved model's stages a package serving ``outputs`` needs: the featurizer, and the heads when an output
    comes from them."""
    by_name = meta.by_name()
    return ["featurize", *(["heads"] if any(by_name[n].stage == "heads" for n in outputs) else [])]


def weights_bytes(source_dir) -> int:
    """The size of the SavedModel's variables (what the TensorFlow steps' memory grows with)."""
    return sum(p.stat().st_size for p in Path(source_dir, "variables").glob("variables.data-*"))


def memory_needed(source_dir) -> float:
    """About how many bytes the largest step needs for this model: measured (2 cores, see the module docstring),
    0.85 GB of TensorFlow and its libraries plus 2.5 times the weights."""
    return 0.85 * 2**30 + 2.5 * weights_bytes(source_dir)


def cache_key(state: ConversionState, files: dict) -> str:
    """What the fp32 graphs depend on: the source's files (their sha256), the stages and the tools."""
    import hashlib
    text = json.dumps({"files": files, "stages": state.stages, "tools": tool_versions(), "opset": OPSET,
                       "checks": state.checks}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _from_cache(state):
    cache = Path(state.cache)
    index = cache / "fp32.json"
    if not state.cache or not index.is_file():
        return False
    saved = json.loads(index.read_text())
    state.fp32 = {k: str(cache / v) for k, v in saved["fp32"].items()}
    state.reference = str(cache / saved["reference"]) if saved["reference"] else ""
    state.cached_from = saved.get("operation", str(cache))
    return all(Path(p).is_file() for p in state.fp32.values())


def _to_cache(state, label):
    if not state.cache:
        return
    cache = Path(state.cache)
    tmp = cache.with_name(cache.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    fp32 = {}
    for stage, path in state.fp32.items():
        shutil.copyfile(path, tmp / Path(path).name)
        fp32[stage] = Path(path).name
    if state.reference:
        shutil.copyfile(state.reference, tmp / Path(state.reference).name)
    (tmp / "fp32.json").write_text(json.dumps({"fp32": fp32, "operation": label,
                                               "reference": Path(state.reference).name if state.reference else ""}))
    shutil.rmtree(cache, ignore_errors=True)
    os.replace(tmp, cache)


def plan(state: ConversionState, steps=STEPS, cached=False) -> list:
    """The processes the steps will run in: lists of steps (one each; one list of all for a small model). Steps
    the fp32 cache saves, checks when ``state.checks`` is off and narrow-format checks in fp32 are left out."""
    narrow = state.numeric_format != "fp32"
    todo = [s for s in steps if not ((cached and s.name in FP32_STEPS) or (s.checks_only and not state.checks)
                                     or (s.narrow_only and not narrow))]
    if weights_bytes(state.source_dir) < SMALL_MODEL_BYTES:
        return [todo] if todo else []
    return [[s] for s in todo]


def run(state: ConversionState, label="", steps=STEPS, on_group=None, output=None) -> ConversionState:
    """Run the steps in order, each in a process of its own (a small model's all in one); returns the final state.
    ``label`` names this conversion in the cache (its operation id); ``on_group(names)`` after each process;
    ``output``: a file the steps' processes write their log to (default: this process's stdout)."""
    Path(state.work).mkdir(parents=True, exist_ok=True)
    cached = _from_cache(state)
    if cached:
        log(f"the fp32 graphs of this source were converted before ({state.cached_from}): reusing them, with "
            "TensorFlow's outputs for the parity check (steps " + ", ".join(FP32_STEPS) + " skipped)")
    groups = plan(state, steps, cached)
    if len(groups) == 1 and len(groups[0]) > 1:
        log(f"a small model ({weights_bytes(state.source_dir) / 2**20:.1f} MB of weights): its steps run in one "
            "process")
    for group in groups:
        t0 = time.monotonic()
        state, peak = _in_own_process(group, state, output)
        took = time.monotonic() - t0
        names = ", ".join(s.name for s in group)
        state.timings.append([names, round(took, 2), peak])
        log(f"  {names} done in {took:.1f} s, peak memory {peak / 1024:.2f} GB (measured)")
        if any(s.name == FP32_STEPS[-1] for s in group):
            _to_cache(state, label)
        if on_group:
            on_group([s.name for s in group])
    record_checks(state)
    return state


def run_in_this_process(names, state: ConversionState) -> ConversionState:
    """Run the steps called ``names`` in order, in this process (a step process's work), logging each."""
    for name in names:
        step = by_name(name)
        log(f"step {step.name}: {step.what}")
        state = step.run(state)
    return state


STEP_ENTRY = "accel_lib.conversion.worker"      # the conversion's process entry, which runs steps given STEP_FLAG
STEP_FLAG = "--step"


def step_command(names, state_path) -> list:
    """The command line that runs the steps ``names`` on the state file ``state_path`` in a process of its own."""
    import sys
    return [sys.executable, "-m", STEP_ENTRY, STEP_FLAG, ",".join(names), str(state_path)]


def run_step_process(names, state_path):
    """A step process's work: run steps (comma-separated names) on a state file and write the state back. The
    process ends with the operation's process, and offers itself to the out-of-memory killer before it (which then
    reports what happened)."""
    from ..fpga import host
    host.die_with_parent()
    try:
        Path("/proc/self/oom_score_adj").write_text("500")
    except OSError:
        pass
    state = run_in_this_process(names.split(","), ConversionState.load(state_path))
    state.save(state_path)
    return 0


def _in_own_process(group, state, output=None):
    """Run steps with ``step_command`` in one process (one step's environment, or none for several); returns
    (state, peak RSS in MB)."""
    import psutil

    names = [s.name for s in group]
    path = state.save(Path(state.work) / f"state.{names[0]}.json")
    step_env = group[0].env if len(group) == 1 else {}
    env = {**os.environ, **step_env, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(step_command(names, path), stdin=subprocess.DEVNULL, env=env, stdout=output,
                            stderr=subprocess.STDOUT if output else None)
    peak = last = 0
    try:
        p = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                last = p.memory_info().rss
                peak = max(peak, last)
            except psutil.Error:
                pass
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if proc.returncode != 0:
        raise StepFailed(_why_it_ended(", ".join(names), state, proc.returncode, last))
    return ConversionState.load(path), round(peak / 2**20)


def _why_it_ended(step, state, code, last_rss):
    """The reason a step's process ended, in words: a signal (most likely the out-of-memory killer) or an error."""
    import signal as sig

    from ..fpga import host
    if code >= 0:
        return f"the {step} step failed (exit code {code}); its error is in the log above"
    name = sig.Signals(-code).name if -code in sig.Signals._value2member_map_ else f"signal {-code}"
    need = memory_needed(state.source_dir) / 2**30
    limit = host.memory_limit()
    where = f"; this machine or container allows {limit / 2**30:.1f} GB" if limit else ""
    likely = ", most likely out of memory" if -code == sig.SIGKILL else ""
    using = f"it was using {last_rss / 2**30:.2f} GB; " if last_rss >= 2**26 else ""
    return (f"the conversion's {step} step was killed ({name}, signal {-code}{likely}: {using}converting "
            f"{state.metadata.model_class} needs about {need:.1f} GB{where}). Close other notebooks' kernels, or "
            "convert on a machine with more memory.")


def checked_request(meta, outputs, numeric_format=None, block_size=None):
    """What a conversion is asked for, checked against the saved model's metadata before any work:
    (output names, format name, format spec or None for fp32); UserError says what is wrong and what is valid."""
    from ..errors import UserError
    from ..fpga import formats
    outputs = list(outputs)
    unknown = [n for n in outputs if n not in meta.by_name()]
    if unknown:
        raise UserError(f"unknown output tensor(s) {unknown}; valid names are {sorted(meta.by_name())}.")
    fmt_name = numeric_format or meta.default_numeric_format
    try:
        return outputs, fmt_name, formats.get(fmt_name, block_size)
    except ValueError as e:
        raise UserError(f"{e}.") from None


def convert_folder(source_dir, package_dir, outputs=None, numeric_format=None, block_size=None, checks=True,
                   work_dir=None):
    """Convert a saved model folder (``model_graph.save(...)``) into an accelerator package at ``package_dir``,
    without a workspace: the converter's steps, each in a process of its own, with a progress bar; the log goes to
    ``<package_dir>.log`` (its last lines are in the error if a step fails). Returns the manifest."""
    import contextlib
    import tempfile

    from .. import progress
    from ..errors import UserError
    from ..fpga import manifest
    try:
        meta = manifest.read(manifest.SavedModelMetadata, source_dir)
    except manifest.ManifestError as e:
        raise UserError(str(e)) from None
    outputs, fmt_name, fmt = checked_request(meta, outputs or meta.default_output_names(), numeric_format, block_size)
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="accel-convert-"))
    state = ConversionState(source_dir=str(Path(source_dir).resolve()), work=str(work.resolve()),
                            package_dir=str(Path(package_dir).resolve()), outputs=outputs, numeric_format=fmt_name,
                            block_size=fmt.block if fmt else None, checks=checks,
                            stages=needed_stages(meta, outputs))
    log_path = Path(state.package_dir).with_suffix(".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    bar = progress.bar(total=len(plan(state)), desc=f"converting {meta.model_class}", unit="process")
    try:
        with open(log_path, "w") as out, contextlib.redirect_stdout(out):
            run(state, on_group=lambda names: bar.update(1), output=out)
    except StepFailed as e:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-8:])
        raise StepFailed(f"{e}. The log ({log_path}) ends:\n{tail}") from None
    finally:
        bar.close()
        if not work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return manifest.read(manifest.PackageManifest, package_dir)


def fp32_featurizer(source_dir):
    """The featurizer of a saved model folder as the converter makes it, in fp32 (an onnx.ModelProto): for tests
    and benchmarks that apply formats themselves."""
    import tempfile

    import onnx
    with tempfile.TemporaryDirectory(prefix="accel-fp32-") as work:
        state = ConversionState(source_dir=str(Path(source_dir).resolve()), work=work, package_dir="", outputs=[],
                                numeric_format="fp32", checks=False, stages=["featurize"])
        state = run(state, steps=[by_name(n) for n in FP32_STEPS])
        return onnx.load(state.fp32["featurize"])
