"""The conversion's process entry (``command`` and ``step_command`` build its two command lines).

``python -m accel_lib.conversion.worker WORKSPACE OPERATION`` runs one conversion operation: it fetches the source
model, runs ``steps.STEPS`` (each TensorFlow step in a process of its own) and registers the package as
``<name>.<version>.accelonnx``, recording the outcome in the operation. Its output is the operation's log.
``python -m accel_lib.conversion.worker --step NAME STATE`` runs one step on a state file and writes it back.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import traceback
from pathlib import Path

from . import steps


def command(workspace_path, op_id) -> list:
    """The command line that runs operation ``op_id`` of the workspace at ``workspace_path``."""
    return [sys.executable, "-m", "accel_lib.conversion.worker", str(workspace_path), op_id]


def step_command(names, state_path) -> list:
    """The command line that runs the steps ``names`` on the state file ``state_path`` in a process of its own."""
    return [sys.executable, "-m", "accel_lib.conversion.worker", "--step", ",".join(names), str(state_path)]


def _work(ws, op_id):
    from ..model import Model
    with ws.connect() as db:
        req = json.loads(db.execute("SELECT request FROM operations WHERE id=?", (op_id,)).fetchone()[0])
    src = Model(ws, id=req["source"])
    work = ws.scratch("operations", op_id, "work")
    steps.log(f"converting {src.id} (input {req['input']}, outputs {req['outputs']}, format {req['numeric_format']})")
    source_dir = Path(src.download(work, exist_ok=True))
    state = steps.ConversionState(source_dir=str(source_dir), work=str(work), package_dir=str(work / "package"),
                                  outputs=req["outputs"], numeric_format=req["numeric_format"],
                                  block_size=req.get("block_size"), source={"name": src.name, "version": src.version})
    meta = state.metadata
    state.stages = steps.needed_stages(meta, state.outputs)
    state.cache = str(ws.conversion_cache(src.name, src.version) / steps.cache_key(state, src.files))
    steps.log(f"the package: host preprocessing {json.dumps(meta.preprocessing)} -> featurizer on the device "
              f"({req['numeric_format']}), outputs {[f.name for f in meta.features]}"
              + (f" -> heads on the host (fp32), outputs {[o.name for o in meta.outputs]}"
                 if "heads" in state.stages else ""))
    state = steps.run(state, label=f"operation {op_id}")
    from ..fpga import manifest
    m = manifest.read(manifest.PackageManifest, state.package_dir)
    m.parity, m.device_check = state.parity, state.device_check
    m.report = manifest.REPORT_FILE if state.report else None
    manifest.write(m, state.package_dir)
    name = src.converted_name
    parity = state.parity
    conv = Model.register(ws, state.package_dir, name,
                          tags={"accelonnx": "true", "numeric_format": req["numeric_format"]},
                          properties={"source_model": src.id, "numeric_format": req["numeric_format"],
                                      "parity_top1_agreement": f"{parity['top1_agreement']:.4f}",
                                      "parity_max_relative_error": f"{parity['max_relative_error']:.3g}"},
                          description=f"{src.name} v{src.version} converted for the FPGA ({req['numeric_format']})")
    shutil.rmtree(work, ignore_errors=True)
    steps.log(f"registered {conv.id}")
    return conv


def _die_with_parent():
    """Ask the kernel to end this process when the operation's process ends (PR_SET_PDEATHSIG), so that no step
    outlives its conversion; exit at once if that already happened."""
    import ctypes
    import signal
    parent = os.getppid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)      # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        sys.exit(1)


def run_step(names, state_path):
    """Run steps (comma-separated names) on a state file and write the state back (the steps' own process). The
    process ends with the operation's process, and offers itself to the out-of-memory killer before it (which then
    reports what happened)."""
    _die_with_parent()
    try:
        Path("/proc/self/oom_score_adj").write_text("500")
    except OSError:
        pass
    state = steps.run_in_this_process(names.split(","), steps.ConversionState.load(state_path))
    state.save(state_path)
    return 0


def main(argv):
    """Run one conversion operation (or, with --step, one step) and record its outcome."""
    if argv and argv[0] == "--step":
        try:
            return run_step(argv[1], argv[2])
        except Exception:  # noqa: BLE001 - the operation's process reports it; the traceback goes to the log
            traceback.print_exc()
            return 1
    from ..workspace import Workspace
    ws, op_id = Workspace(argv[0]), argv[1]
    with ws.connect(immediate=True) as db:
        db.execute("UPDATE operations SET status='Running', pid=? WHERE id=?", (os.getpid(), op_id))
    try:
        conv = _work(ws, op_id)
    except Exception as e:  # noqa: BLE001 - everything is reported through the operation
        if not isinstance(e, steps.StepFailed):
            traceback.print_exc()
        error = str(e) if isinstance(e, steps.StepFailed) else f"{type(e).__name__}: {e}"
        steps.log(f"failed: {error}")
        with ws.connect(immediate=True) as db:
            db.execute("UPDATE operations SET status='Failed', error=? WHERE id=?", (error, op_id))
        return 1
    with ws.connect(immediate=True) as db:
        db.execute("UPDATE operations SET status='Succeeded', result=? WHERE id=?", (conv.id, op_id))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
