"""Running the conversion's steps: which stages a request needs, the plan (with the cache of fp32 graphs), each
group of steps in a process of its own (``step_command``), and ``convert_folder`` for a saved model without a
workspace."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from .state import OPSET, SMALL_MODEL_BYTES, ConversionState, StepFailed, log
from .steps import FP32_STEPS, STEPS, by_name, record_checks, tool_versions


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
    from ..fpga.device import resources
    resources.die_with_parent()
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

    from ..fpga.device import resources
    if code >= 0:
        return f"the {step} step failed (exit code {code}); its error is in the log above"
    name = sig.Signals(-code).name if -code in sig.Signals._value2member_map_ else f"signal {-code}"
    need = memory_needed(state.source_dir) / 2**30
    limit = resources.memory_limit()
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
    from ..fpga.device import formats
    outputs = list(outputs)
    unknown = [n for n in outputs if n not in meta.by_name()]
    if unknown:
        raise UserError(f"unknown output tensor(s) {unknown}; valid names are {sorted(meta.by_name())}.")
    fmt_name = numeric_format or meta.default_numeric_format
    try:
        return outputs, fmt_name, formats.get(fmt_name, block_size)
    except ValueError as e:
        raise UserError(f"{e}.") from None


def checked_device(device=None) -> str:
    """The device preset a conversion is for (None: the default, Azure's PB6s Arria 10); UserError naming the
    presets for another."""
    from ..errors import UserError
    from ..fpga.device import timing
    name = device or timing.DEFAULT_PRESET
    try:
        return timing.preset(name).name
    except ValueError as e:
        raise UserError(f"{e}.") from None


def convert_folder(source_dir, package_dir, outputs=None, numeric_format=None, block_size=None, checks=True,
                   work_dir=None, device=None):
    """Convert a saved model folder (``model_graph.save(...)``) into an accelerator package at ``package_dir``,
    without a workspace: the converter's steps, each in a process of its own, with a progress bar; the log goes to
    ``<package_dir>.log`` (its last lines are in the error if a step fails). Returns the manifest."""
    import contextlib
    import tempfile

    from .. import progress
    from ..errors import UserError
    from ..fpga.device import manifest
    try:
        meta = manifest.read(manifest.SavedModelMetadata, source_dir)
    except manifest.ManifestError as e:
        raise UserError(str(e)) from None
    outputs, fmt_name, fmt = checked_request(meta, outputs or meta.default_output_names(), numeric_format, block_size)
    device = checked_device(device)
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="accel-convert-"))
    state = ConversionState(source_dir=str(Path(source_dir).resolve()), work=str(work.resolve()),
                            package_dir=str(Path(package_dir).resolve()), outputs=outputs, numeric_format=fmt_name,
                            block_size=fmt.block if fmt else None, checks=checks, device=device,
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
