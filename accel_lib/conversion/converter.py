"""AccelOnnxConverter: start a conversion (validated at once) and follow it through its operation record."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from .. import records
from ..errors import OperationTimeout, UserError
from ..model import Model
from ..records import FAILED, QUEUED, SUCCEEDED, UNDER_WAY

Op = records.OperationRecord


def split_names(outputs_nodes):
    """Output names given as a list or as one comma-joined string -> a list (UserError if none)."""
    if isinstance(outputs_nodes, str):
        names = [n.strip() for n in outputs_nodes.split(",")]
    elif isinstance(outputs_nodes, (list, tuple)):
        names = [str(n).strip() for n in outputs_nodes]
    else:
        raise UserError(f"outputs_nodes must be a list of tensor names or one comma-joined string, "
                        f"got {type(outputs_nodes).__name__}.")
    names = [n for n in names if n]
    if not names:
        raise UserError("outputs_nodes is empty; give at least one output tensor name.")
    return names


class AccelOnnxConverter:
    """Converts TensorFlow models registered in a workspace to accelerator packages."""

    @staticmethod
    def convert_tf_model(workspace, source_model, input_node, outputs_nodes, numeric_format=None, block_size=None,
                         device=None):
        """Start converting ``source_model``; returns a ModelConvertOperation to wait on.

        ``numeric_format``: the device format (fp32, ms-fp8, ms-fp9, msfp12, msfp16); default ms-fp9 for the
        Quantized models, else fp32. ``block_size``: values sharing one exponent (default: the format's).
        ``device``: the device preset the package is for (default ``"arria10-pb6"``, Azure's PB6s; a cluster of
        another device refuses it).
        """
        from . import runner, worker
        if not isinstance(source_model, Model):
            raise UserError("source_model must be a registered Model (Model.register(...) or Model(ws, name)).")
        meta = source_model.source_metadata
        if input_node not in meta.input.names:
            raise UserError(f"unknown input tensor {input_node!r}; the model's input is one of {meta.input.names}.")
        names, fmt, spec = runner.checked_request(meta, split_names(outputs_nodes), numeric_format, block_size)
        request = {"source": source_model.id, "input": input_node, "outputs": names, "numeric_format": fmt,
                   "block_size": spec.block if spec else None, "device": runner.checked_device(device)}
        op_id = uuid.uuid4().hex[:12]
        log = workspace.layout.operation_log(op_id)
        log.parent.mkdir(parents=True, exist_ok=True)
        with workspace.connect(immediate=True) as db:
            records.insert(db, records.OperationRecord(id=op_id, kind="convert", status=QUEUED,
                                                       log=workspace.layout.relative(log), request=request,
                                                       created_time=records.now()))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        with open(log, "ab") as f:
            proc = subprocess.Popen(worker.command(workspace.path, op_id), stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        with workspace.connect(immediate=True) as db:
            records.set_status(db, records.OperationRecord, {"id": op_id}, QUEUED, only_from=(QUEUED,), pid=proc.pid)
        return ModelConvertOperation(workspace, op_id, _proc=proc)


class ModelConvertOperation:
    """A conversion under way: ``status``, ``wait_for_completion()``, ``result``."""

    LOG_TAIL = 8            # lines of the log quoted when the worker ends without reporting

    def __init__(self, workspace, operation_id, _proc=None):
        self.workspace = workspace
        self.id = operation_id
        self._proc = _proc
        self._record()

    def _record(self) -> records.OperationRecord:
        """The operation's record; one whose process is gone without reporting reads as Failed (not written)."""
        with self.workspace.connect() as db:
            rec = records.get(db, records.OperationRecord, id=self.id)
        if rec is None:
            raise UserError(f"no operation {self.id!r} in this workspace.")
        if rec.status in UNDER_WAY and not self._alive(rec.pid):
            with self.workspace.connect() as db:      # it may have reported just before it exited
                rec = records.get(db, records.OperationRecord, id=self.id)
            if rec.status in UNDER_WAY:
                rec.status, rec.error = FAILED, self._how_it_ended(rec)
        return rec

    def _how_it_ended(self, rec) -> str:
        """Why the worker is gone without reporting: its exit status when this process started it, and the log's
        last lines."""
        import signal
        code = self._proc.returncode if self._proc is not None else None
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else "a signal"
            why = (f"the conversion worker was killed ({name}, signal {-code}"
                   + (", most likely by the out-of-memory killer" if -code == signal.SIGKILL else "") + ")")
        elif code is not None:
            why = f"the conversion worker exited with code {code} before it could report"
        else:
            why = (f"the conversion worker (pid {rec.pid}) was stopped before it could report: killed by a "
                   "signal (SIGKILL, or the out-of-memory killer)")
        p = self.workspace.layout.resolve(rec.log)
        tail = p.read_text(errors="replace").splitlines()[-self.LOG_TAIL:] if p.exists() else []
        return why + (". The log's last lines:\n" + "\n".join(tail) if tail else "; it wrote no log")

    def _alive(self, pid):
        if self._proc is not None:
            return self._proc.poll() is None
        if pid is None:
            return True          # not yet started
        import psutil
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    @property
    def status(self):
        """Queued, Running, Succeeded or Failed."""
        return self._record().status

    @property
    def error(self):
        """Why the operation failed (None otherwise)."""
        return self._record().error

    @property
    def log_path(self) -> Path:
        """The operation's log file."""
        return self.workspace.layout.resolve(self._record().log)

    def get_log(self) -> str:
        """The whole log so far."""
        p = self.log_path
        return p.read_text(errors="replace") if p.exists() else ""

    def log_lines(self, *keys) -> list[str]:
        """The log's lines that contain any of ``keys`` (all lines without keys), without their timestamps."""
        from .state import strip_timestamp
        lines = [strip_timestamp(line) for line in self.get_log().splitlines()]
        return [line for line in lines if not keys or any(k in line for k in keys)]

    def wait_for_completion(self, show_output=False, timeout=None) -> bool:
        """Wait until the conversion ends; True if it succeeded. show_output streams the log."""
        from .. import progress
        start, shown = time.monotonic(), 0
        bar = progress.bar(desc=f"converting ({self.id})", unit="s", show=not show_output)
        try:
            while True:
                rec = self._record()
                if show_output:
                    text = self.get_log()
                    if len(text) > shown:
                        print(text[shown:], end="", flush=True)
                        shown = len(text)
                if rec.status in (SUCCEEDED, FAILED):
                    break
                if timeout is not None and time.monotonic() - start > timeout:
                    raise OperationTimeout(f"conversion {self.id} still {rec.status} after {timeout} s; call "
                                           "wait_for_completion() again, it keeps running.")
                bar.update(0.5)
                time.sleep(0.5)
        finally:
            bar.close()
            if self._proc is not None and self._proc.poll() is not None:
                self._proc.wait()
        if rec.status == FAILED:          # record what the wait found (a no-op when the worker reported it)
            with self.workspace.connect(immediate=True) as db:
                records.set_status(db, records.OperationRecord, {"id": self.id}, FAILED, only_from=UNDER_WAY,
                                   error=rec.error)
        if show_output:
            print(f"\nconversion {self.id}: {rec.status}")
        if rec.status == FAILED:
            print(f"conversion {self.id} failed: {rec.error}\n(run wait_for_completion(show_output=True) "
                  "to see the log)", file=sys.stderr)
        return rec.status == SUCCEEDED

    @property
    def result(self) -> Model:
        """The converted model (UserError while not succeeded)."""
        rec = self._record()
        if rec.status != SUCCEEDED:
            raise UserError(f"conversion {self.id} is {rec.status}"
                            + (f": {rec.error}" if rec.error else "; wait_for_completion() first."))
        return Model(self.workspace, id=rec.result)
