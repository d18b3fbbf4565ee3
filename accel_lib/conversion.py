"""AccelOnnxConverter: convert a registered TensorFlow model into an accelerator package (ONNX stages).

The conversion runs in a separate process (``python -m accel_lib.conversion WORKSPACE OPERATION``) that
writes a log, records its status in the workspace and registers the result as ``<name>.<version>.accelonnx``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
import uuid
from pathlib import Path

from .errors import OperationTimeout, UserError
from .model import Model
from .workspace import Workspace, _now

OPSET = 17
PARITY_IMAGES = 6
REPORT_IMAGES = 8


def _split_names(outputs_nodes):
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


def valid_outputs(meta) -> dict:
    """Every output name the source model can expose, mapped to its package entry."""
    out = {}
    for o in meta["outputs"]:
        entry = {"name": o["name"], "aliases": [o["alias"], *o.get("aliases", [])], "stage": "classifier",
                 "shape": o["shape"], "dtype": "float32"}
        for n in [o["name"], o["alias"], *o.get("aliases", [])]:
            out[n] = entry
    f = meta["feature"]
    out[f["name"]] = {"name": f["name"], "aliases": [], "stage": "featurizer", "shape": f["shape"],
                      "dtype": "float32"}
    return out


class AccelOnnxConverter:
    """Converts TensorFlow models registered in a workspace to accelerator packages."""

    @staticmethod
    def convert_tf_model(workspace, source_model, input_node, outputs_nodes, numeric_format=None, block_size=None):
        """Start converting ``source_model``; returns a ModelConvertOperation to wait on.

        ``numeric_format``: the device format (fp32, ms-fp8, ms-fp9, msfp12, msfp16); default ms-fp9 for the
        Quantized models, else fp32. ``block_size``: values sharing one exponent (default: the format's).
        """
        from .fpga import formats
        from .models.zoo import METADATA_FILE
        if not isinstance(source_model, Model):
            raise UserError("source_model must be a registered Model (Model.register(...) or Model(ws, name)).")
        if METADATA_FILE not in source_model.files:
            raise UserError(f"model {source_model.id} has no {METADATA_FILE}: register a folder saved with "
                            "model_graph.save(...) from accel_lib.models.")
        meta = json.loads(source_model.read_file(METADATA_FILE))
        inputs = [meta["input"]["name"], *meta["input"]["aliases"]]
        if input_node not in inputs:
            raise UserError(f"unknown input tensor {input_node!r}; the model's input is one of {inputs}.")
        valid = valid_outputs(meta)
        names = _split_names(outputs_nodes)
        unknown = [n for n in names if n not in valid]
        if unknown:
            raise UserError(f"unknown output tensor(s) {unknown}; valid names are {sorted(valid)}.")
        fmt = numeric_format or meta.get("default_numeric_format", "fp32")
        try:
            spec = formats.get(fmt, block_size)
        except ValueError as e:
            raise UserError(f"{e}.") from None
        request = {"source": source_model.id, "input": input_node, "outputs": names, "numeric_format": fmt,
                   "block_size": spec.block if spec else None}
        op_id = uuid.uuid4().hex[:12]
        op_dir = workspace.scratch("operations", op_id)
        log = op_dir / "log.txt"
        with workspace.connect(immediate=True) as db:
            db.execute("INSERT INTO operations (id, kind, status, log, request, created_time) VALUES (?,?,?,?,?,?)",
                       (op_id, "convert", "Queued", str(log.relative_to(workspace.path)), json.dumps(request),
                        _now()))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        with open(log, "ab") as f:
            proc = subprocess.Popen([sys.executable, "-m", "accel_lib.conversion", str(workspace.path), op_id],
                                    stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        with workspace.connect(immediate=True) as db:
            db.execute("UPDATE operations SET pid=? WHERE id=?", (proc.pid, op_id))
        return ModelConvertOperation(workspace, op_id, _proc=proc)


class ModelConvertOperation:
    """A conversion under way: ``status``, ``wait_for_completion()``, ``result``."""

    def __init__(self, workspace, operation_id, _proc=None):
        self.workspace = workspace
        self.id = operation_id
        self._proc = _proc
        self._row()

    def _row(self):
        with self.workspace.connect() as db:
            row = db.execute("SELECT * FROM operations WHERE id=?", (self.id,)).fetchone()
        if row is None:
            raise UserError(f"no operation {self.id!r} in this workspace.")
        if row["status"] in ("Queued", "Running") and not self._alive(row["pid"]):
            with self.workspace.connect(immediate=True) as db:
                row = db.execute("SELECT * FROM operations WHERE id=?", (self.id,)).fetchone()
                if row["status"] in ("Queued", "Running"):
                    db.execute("UPDATE operations SET status='Failed', error=? WHERE id=?",
                               ("the conversion process ended without reporting; see the log", self.id))
                    row = db.execute("SELECT * FROM operations WHERE id=?", (self.id,)).fetchone()
        return row

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
        return self._row()["status"]

    @property
    def error(self):
        """Why the operation failed (None otherwise)."""
        return self._row()["error"]

    @property
    def log_path(self) -> Path:
        """The operation's log file."""
        return self.workspace.path / self._row()["log"]

    def get_log(self) -> str:
        """The whole log so far."""
        p = self.log_path
        return p.read_text(errors="replace") if p.exists() else ""

    def wait_for_completion(self, show_output=False, timeout=None) -> bool:
        """Wait until the conversion ends; True if it succeeded. show_output streams the log."""
        from . import progress
        start, shown = time.monotonic(), 0
        bar = progress.bar(desc=f"converting ({self.id})", unit="s", show=not show_output)
        try:
            while True:
                row = self._row()
                if show_output:
                    text = self.get_log()
                    if len(text) > shown:
                        print(text[shown:], end="", flush=True)
                        shown = len(text)
                if row["status"] in ("Succeeded", "Failed"):
                    break
                if timeout is not None and time.monotonic() - start > timeout:
                    raise OperationTimeout(f"conversion {self.id} still {row['status']} after {timeout} s; call "
                                           "wait_for_completion() again, it keeps running.")
                bar.update(0.5)
                time.sleep(0.5)
        finally:
            bar.close()
            if self._proc is not None and self._proc.poll() is not None:
                self._proc.wait()
        if show_output:
            print(f"\nconversion {self.id}: {row['status']}")
        if row["status"] == "Failed":
            print(f"conversion {self.id} failed: {row['error']}\n(run wait_for_completion(show_output=True) "
                  "to see the log)", file=sys.stderr)
        return row["status"] == "Succeeded"

    @property
    def result(self) -> Model:
        """The converted model (UserError while not succeeded)."""
        row = self._row()
        if row["status"] != "Succeeded":
            raise UserError(f"conversion {self.id} is {row['status']}"
                            + (f": {row['error']}" if row["error"] else "; wait_for_completion() first."))
        return Model(self.workspace, id=row["result"])


# ------------------------------------------------------------------------------------------------
# the worker process
# ------------------------------------------------------------------------------------------------
def _log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _tool_versions():
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    from . import __version__
    return {"tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "accel_lib": __version__}


def _convert_stage(loaded, signature, spec, out_path):
    import tf2onnx
    fn = getattr(loaded, signature)
    model_proto, _ = tf2onnx.convert.from_function(fn, input_signature=[spec], opset=OPSET,
                                                   output_path=str(out_path))
    return model_proto


def parity_check(saved_model_dir, package_dir, device_file=None, n=PARITY_IMAGES) -> dict:
    """Score generated images with the source SavedModel and with the package; compare the outputs."""
    import numpy as np
    import tensorflow as tf

    from .fpga.package import AcceleratorPackage
    from .samples import sample_images
    imgs = sample_images(n, seed=11)
    loaded = tf.saved_model.load(str(saved_model_dir))
    ref = loaded.signatures["serving_default"](images=tf.constant(imgs))["output_alias"].numpy()
    pkg = AcceleratorPackage(package_dir, device_file=device_file)
    cls = [o["name"] for o in pkg.manifest["outputs"] if o["stage"] == "classifier"]
    got = pkg.run(imgs, outputs=cls[:1])[cls[0]] if cls else pkg.classify(pkg.featurize(pkg.preprocess(imgs)))
    top1 = float(np.mean(ref.argmax(1) == got.argmax(1)))
    top5 = float(np.mean([len(set(np.argsort(-r)[:5]) & set(np.argsort(-g)[:5])) / 5 for r, g in zip(ref, got)]))
    return {"images": n, "max_abs_diff": float(np.abs(ref - got).max()), "top1_agreement": top1,
            "top5_overlap": top5,
            "measured": "source SavedModel (TensorFlow) vs fp32 package (numpy host + ONNX Runtime)"}


def device_check(pkg, fp32_model, fmt, n=4) -> dict:
    """The package's device stage (ONNX Runtime, in-graph format) vs the numpy reference device."""
    import numpy as np

    from .fpga.reference import reference_device
    from .samples import sample_images
    x = pkg.preprocess(sample_images(n, seed=31))
    dev = pkg.featurize(x)
    ref = reference_device(fp32_model, fmt)(x)
    rel = float(np.abs(dev - ref).max() / max(float(np.abs(ref).max()), 1e-30))
    top1 = float(np.mean(pkg.classify(dev).argmax(1) == pkg.classify(ref).argmax(1)))
    return {"images": n, "max_rel_diff": rel, "top1_agreement": top1,
            "measured": "device stage: ONNX Runtime (format in the graph) vs numpy reference device (formats.py)"}


def _work(ws: Workspace, op_id: str):
    import shutil

    import onnx
    import tensorflow as tf

    from .fpga import formats
    from .fpga.device import apply_format
    from .fpga.package import MANIFEST, PACKAGE_FORMAT
    tf.get_logger().setLevel("ERROR")
    from .models.zoo import read_metadata
    with ws.connect() as db:
        req = json.loads(db.execute("SELECT request FROM operations WHERE id=?", (op_id,)).fetchone()[0])
    src = Model(ws, id=req["source"])
    work = ws.scratch("operations", op_id, "work")
    _log(f"converting {src.id} (input {req['input']}, outputs {req['outputs']}, format {req['numeric_format']})")
    saved = Path(src.download(work, exist_ok=True))
    meta = read_metadata(saved)
    valid = valid_outputs(meta)
    pkg_dir = work / "package"
    if pkg_dir.exists():
        shutil.rmtree(pkg_dir)
    pkg_dir.mkdir()
    loaded = tf.saved_model.load(str(saved))
    prep = meta["preprocessing"]
    h, w = prep["output_height"], prep["output_width"]
    dim = meta["feature"]["shape"][-1]
    fmt = formats.get(req["numeric_format"], req.get("block_size"))
    _log("stage 1/4: host preprocessing (decode, resize shortest side, centre crop, channel means): "
         f"{json.dumps(prep)}")
    _log("stage 2/4: featurizer -> ONNX (tf2onnx), then the device format")
    t = time.monotonic()
    fp32_path = work / "device_fp32.onnx"
    _convert_stage(loaded, "featurize", tf.TensorSpec([None, h, w, 3], tf.float32, name="image_tensors"), fp32_path)
    fp32_model = onnx.load(str(fp32_path))
    device_model, layers = apply_format(fp32_model, fmt)
    onnx.save(device_model, str(pkg_dir / "device.onnx"))
    _log(f"  done in {time.monotonic() - t:.1f} s; " + (fmt.describe() + f", {len(layers)} layers quantized "
         "(weights once, activations at each layer input)" if fmt else "fp32 (reference format)"))
    _log("stage 3/4: classifier -> classifier.onnx (tf2onnx)")
    _convert_stage(loaded, "classify", tf.TensorSpec([None, dim], tf.float32, name="features"),
                   pkg_dir / "classifier.onnx")
    outputs, seen = [], set()
    for n in req["outputs"]:
        e = valid[n]
        if e["name"] not in seen:
            seen.add(e["name"])
            outputs.append(e)
    manifest = {
        "format": PACKAGE_FORMAT,
        "source_model": {"name": src.name, "version": src.version},
        "featurizer": meta["featurizer"], "featurizer_version": meta["version"], "weights": meta["weights"],
        "numeric_format": req["numeric_format"],
        "input": {"name": meta["input"]["name"], "aliases": meta["input"]["aliases"], "dtype": "string",
                  "shape": [-1]},
        "outputs": outputs,
        "labels": meta.get("labels"),
        "stages": [
            {"name": "preprocess", "where": "host", "params": prep},
            {"name": "featurizer", "where": "device", "file": "device.onnx", "numeric_format": req["numeric_format"],
             "block_size": fmt.block if fmt else None, "format": fmt.describe() if fmt else "IEEE fp32",
             "quantized_layers": len(layers), "input_shape": [-1, h, w, 3], "output_shape": [-1, dim]},
            {"name": "classifier", "where": "host", "file": "classifier.onnx", "input_shape": [-1, dim]},
        ],
        "tools": _tool_versions(),
    }
    (pkg_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    _log("stage 4/4: checks on generated images")
    parity = parity_check(saved, pkg_dir, device_file=fp32_path)
    _log(f"  parity (fp32): top-1 agreement {parity['top1_agreement']:.0%}, top-5 overlap "
         f"{parity['top5_overlap']:.0%}, max abs difference {parity['max_abs_diff']:.3g} over "
         f"{parity['images']} images "
         "(source TensorFlow model vs fp32 package)")
    if parity["max_abs_diff"] > 1e-3:
        raise RuntimeError(f"fp32 package disagrees with the source model (max abs diff "
                           f"{parity['max_abs_diff']:.3g} > 1e-3): a conversion bug, please report it.")
    manifest["parity"] = parity
    if fmt is not None:
        from .fpga.package import AcceleratorPackage
        from .fpga.quality import quantization_report
        from .samples import sample_images
        pkg = AcceleratorPackage(pkg_dir)
        check = device_check(pkg, fp32_model, fmt)
        _log(f"  device check ({fmt.name}): max relative difference {check['max_rel_diff']:.3g}, top-1 agreement "
             f"{check['top1_agreement']:.0%} (ONNX Runtime device vs numpy reference device)")
        if check["max_rel_diff"] > 1e-3:
            raise RuntimeError(f"the {fmt.name} device graph disagrees with the reference device "
                               f"({check['max_rel_diff']:.3g}): a simulator bug, please report it.")
        manifest["device_check"] = check
        x = pkg.preprocess(sample_images(REPORT_IMAGES, seed=51))
        report = quantization_report(fp32_model, device_model, layers, fmt.name, x, pkg.classify)
        report["weights"] = meta["weights"]
        report["random_weights"] = str(meta["weights"]).startswith("random")
        (pkg_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        manifest["report"] = "report.json"
        _log(f"  quantization effect ({fmt.name} vs fp32): top-1 agreement {report['top1_agreement']:.0%}, top-5 "
             f"overlap {report['top5_overlap']:.0%}, feature SQNR {report['feature_sqnr_db']:.1f} dB over "
             f"{report['images']} images" + (" — RANDOM WEIGHTS: not what a trained model would show"
                                             if report["random_weights"] else ""))
    (pkg_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    name = f"{src.name}.{src.version}.accelonnx"
    conv = Model.register(ws, pkg_dir, name, tags={"accelonnx": "true", "numeric_format": req["numeric_format"]},
                          properties={"source_model": src.id, "numeric_format": req["numeric_format"],
                                      "parity_top1_agreement": f"{parity['top1_agreement']:.4f}",
                                      "parity_max_abs_diff": f"{parity['max_abs_diff']:.3g}"},
                          description=f"{src.name} v{src.version} converted for the FPGA ({req['numeric_format']})")
    shutil.rmtree(work, ignore_errors=True)
    _log(f"registered {conv.id}")
    return conv


def main(argv):
    ws, op_id = Workspace(argv[0]), argv[1]
    with ws.connect(immediate=True) as db:
        db.execute("UPDATE operations SET status='Running', pid=? WHERE id=?", (os.getpid(), op_id))
    try:
        conv = _work(ws, op_id)
    except Exception as e:  # noqa: BLE001 - everything is reported through the operation
        traceback.print_exc()
        with ws.connect(immediate=True) as db:
            db.execute("UPDATE operations SET status='Failed', error=? WHERE id=?", (f"{type(e).__name__}: {e}", op_id))
        return 1
    with ws.connect(immediate=True) as db:
        db.execute("UPDATE operations SET status='Succeeded', result=? WHERE id=?", (conv.id, op_id))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
