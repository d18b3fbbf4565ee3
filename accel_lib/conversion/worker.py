"""The conversion's process entry.

``python -m accel_lib.conversion.worker WORKSPACE OPERATION`` (``command``) runs one conversion operation: it
fetches the source model, runs ``steps.STEPS`` with ``runner`` (each TensorFlow step in a process of its own) and
registers the package as ``<name>.<version>.accelonnx``, recording the outcome in the operation. Its output is
the operation's log.
With ``runner.STEP_FLAG`` first it is a step's process instead (``runner.step_command`` builds that command line).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import traceback
from pathlib import Path

from .. import records
from . import runner
from .state import ConversionState, StepFailed, log

Op = records.OperationRecord


def command(workspace_path, op_id) -> list:
    """The command line that runs operation ``op_id`` of the workspace at ``workspace_path``."""
    return [sys.executable, "-m", "accel_lib.conversion.worker", str(workspace_path), op_id]


def _work(ws, op_id):
    from ..model import Model
    with ws.connect() as db:
        req = records.get(db, Op, id=op_id).request
    src = Model(ws, id=req["source"])
    work = ws.layout.operation_work(op_id)
    log(f"converting {src.id} (input {req['input']}, outputs {req['outputs']}, format {req['numeric_format']})")
    source_dir = Path(src.download(work, exist_ok=True))
    state = ConversionState(source_dir=str(source_dir), work=str(work), package_dir=str(work / "package"),
                            outputs=req["outputs"], numeric_format=req["numeric_format"],
                            block_size=req.get("block_size"), source={"name": src.name, "version": src.version},
                            device=req.get("device") or runner.checked_device())
    meta = state.metadata
    state.stages = runner.needed_stages(meta, state.outputs)
    state.cache = str(ws.conversion_cache(src.name, src.version) / runner.cache_key(state, src.files))
    log(f"the package: host preprocessing {json.dumps(meta.preprocessing)} -> featurizer on the device "
        f"({req['numeric_format']}), outputs {[f.name for f in meta.features]}"
        + (f" -> heads on the host (fp32), outputs {[o.name for o in meta.outputs]}"
           if "heads" in state.stages else ""))
    state = runner.run(state, label=f"operation {op_id}")          # the checks end up in the package's manifest
    parity = state.parity
    conv = Model.register(ws, state.package_dir, src.converted_name,
                          tags={"accelonnx": "true", "numeric_format": req["numeric_format"]},
                          properties={"source_model": src.id, "numeric_format": req["numeric_format"],
                                      "parity_top1_agreement": f"{parity['top1_agreement']:.4f}",
                                      "parity_max_relative_error": f"{parity['max_relative_error']:.3g}"},
                          description=f"{src.name} v{src.version} converted for the FPGA ({req['numeric_format']})")
    shutil.rmtree(work, ignore_errors=True)
    log(f"registered {conv.id}")
    return conv


def main(argv):
    """Run one conversion operation (or, with runner.STEP_FLAG, one step process) and record its outcome."""
    if argv and argv[0] == runner.STEP_FLAG:
        try:
            return runner.run_step_process(argv[1], argv[2])
        except Exception:  # noqa: BLE001 - the operation's process reports it; the traceback goes to the log
            traceback.print_exc()
            return 1
    from ..workspace import Workspace
    ws, op_id = Workspace(argv[0]), argv[1]
    with ws.connect(immediate=True) as db:
        records.set_status(db, Op, {"id": op_id}, records.RUNNING, pid=os.getpid())
    try:
        conv = _work(ws, op_id)
    except Exception as e:  # noqa: BLE001 - everything is reported through the operation
        if not isinstance(e, StepFailed):
            traceback.print_exc()
        error = str(e) if isinstance(e, StepFailed) else f"{type(e).__name__}: {e}"
        log(f"failed: {error}")
        with ws.connect(immediate=True) as db:
            records.set_status(db, Op, {"id": op_id}, records.FAILED, error=error)
        return 1
    with ws.connect(immediate=True) as db:
        records.set_status(db, Op, {"id": op_id}, records.SUCCEEDED, result=conv.id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
