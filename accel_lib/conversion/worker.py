"""The conversion worker: ``python -m accel_lib.conversion.worker WORKSPACE OPERATION`` (see ``command``).

Stages: host preprocessing (recorded), the featurizer -> ONNX and the device format, the heads -> ONNX, then the
checks; the package is registered as ``<name>.<version>.accelonnx``. Progress goes to the operation's log.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

OPSET = 17


def command(workspace_path, op_id) -> list:
    """The command line that runs operation ``op_id`` of the workspace at ``workspace_path``."""
    return [sys.executable, "-m", "accel_lib.conversion.worker", str(workspace_path), op_id]


def _log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tool_versions() -> dict:
    """Versions of the tools that build a package (recorded in its manifest)."""
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    from .. import __version__
    return {"tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "accel_lib": __version__}


def _rename(model, renames):
    """Rename graph inputs and outputs (old -> new) everywhere they are used."""
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for v in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        v.name = renames.get(v.name, v.name)


def load_saved_model(path):
    """The SavedModel at ``path``, loaded with TensorFlow (quietly)."""
    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")
    return tf.saved_model.load(str(path))


def convert_stage(loaded, meta, stage, out_path=None):
    """One stage of a loaded saved model ("featurize" or "heads") -> ONNX (tf2onnx), its inputs and outputs named
    by the metadata's keys; returns the onnx.ModelProto (and writes it to ``out_path`` if given)."""
    import onnx
    import tensorflow as tf
    import tf2onnx
    if stage == "featurize":
        p = meta.preprocessing
        specs = [tf.TensorSpec([None, p["output_height"], p["output_width"], 3], tf.float32, name="image_tensors")]
        in_keys = ["image_tensors"]
    elif stage == "heads":
        specs = [tf.TensorSpec([None, *f.shape[1:]], tf.float32, name=f.key) for f in meta.features]
        in_keys = [f.key for f in meta.features]
    else:
        raise ValueError(f"no stage {stage!r}; stages are 'featurize' and 'heads'")
    fn = getattr(loaded, meta.signatures[stage])
    concrete = fn.get_concrete_function(*specs)
    by_tensor = {t.name: k for k, t in concrete.structured_outputs.items()}
    model, _ = tf2onnx.convert.from_function(fn, input_signature=specs, opset=OPSET)
    renames = {i.name: k for i, k in zip(model.graph.input, in_keys)}
    renames.update({o.name: by_tensor[o.name] for o in model.graph.output if o.name in by_tensor})
    _rename(model, renames)
    got = sorted(o.name for o in model.graph.output)
    if got != sorted(by_tensor.values()):
        raise RuntimeError(f"tf2onnx named the {stage} outputs {got}, expected {sorted(by_tensor.values())}")
    if out_path is not None:
        onnx.save(model, str(out_path))
    return model


def build_package(meta, source, request, loaded, pkg_dir, work):
    """Write the package's graphs and manifest into ``pkg_dir``; returns (manifest, fp32 device graph, device graph,
    quantized layers, format)."""
    import onnx

    from ..fpga import formats, manifest
    from ..fpga.device import apply_format
    fmt = formats.get(request["numeric_format"], request.get("block_size"))
    prep = meta.preprocessing
    _log("stage 1/4: host preprocessing (decode, resize shortest side, centre crop, channel means): "
         f"{json.dumps(prep)}")
    _log(f"stage 2/4: featurizer -> ONNX (tf2onnx), then the device format; outputs "
         f"{[f.name for f in meta.features]}")
    t = time.monotonic()
    fp32_model = convert_stage(loaded, meta, "featurize", work / "device_fp32.onnx")
    device_model, layers = apply_format(fp32_model, fmt)
    onnx.save(device_model, str(pkg_dir / manifest.DEVICE_FILE))
    _log(f"  done in {time.monotonic() - t:.1f} s; " + (fmt.describe() + f", {len(layers)} layers quantized "
         "(weights once, activations at each layer input)" if fmt else "fp32 (reference format)"))
    _log(f"stage 3/4: heads -> {manifest.HEADS_FILE} (tf2onnx), on the host in fp32; outputs "
         f"{[o.name for o in meta.outputs]}")
    convert_stage(loaded, meta, "heads", pkg_dir / manifest.HEADS_FILE)
    by_name = meta.by_name()
    served = list(dict.fromkeys(by_name[n].name for n in request["outputs"]))
    h, w = prep["output_height"], prep["output_width"]
    m = manifest.PackageManifest(
        source_model={"name": source.name, "version": source.version}, model_class=meta.model_class,
        model_version=meta.version, weights=meta.weights, numeric_format=request["numeric_format"],
        input=meta.input, tensors=meta.tensors(), outputs=served,
        stages=[manifest.Stage("preprocess", "host", params=prep, outputs=["image_tensors"]),
                manifest.Stage("featurizer", "device", manifest.DEVICE_FILE, inputs=["image_tensors"],
                               outputs=[f.key for f in meta.features], numeric_format=request["numeric_format"],
                               block_size=fmt.block if fmt else None,
                               format=fmt.describe() if fmt else "IEEE fp32", quantized_layers=len(layers),
                               params={"input_shape": [-1, h, w, 3]}),
                manifest.Stage("heads", "host", manifest.HEADS_FILE, inputs=[f.key for f in meta.features],
                               outputs=[o.key for o in meta.outputs], format="IEEE fp32")],
        tools=tool_versions(), labels=meta.labels, class_names=meta.class_names, postprocess=meta.postprocess)
    manifest.write(m, pkg_dir)
    return m, fp32_model, device_model, layers, fmt


def run_checks(m, meta, loaded, pkg_dir, work, fp32_model, device_model, layers, fmt):
    """The three checks, logged and recorded in the manifest; RuntimeError when a bar is missed."""
    from ..fpga import manifest
    from ..fpga.package import AcceleratorPackage
    from . import checks
    _log("stage 4/4: checks on generated images")
    fp32_pkg = AcceleratorPackage(pkg_dir, device_file=work / "device_fp32.onnx")
    parity = checks.parity_check(loaded, meta, fp32_pkg)
    _log(f"  parity (fp32): top-1 agreement {parity['top1_agreement']:.0%}, largest relative error "
         f"{parity['max_relative_error']:.2g} (bar {checks.PARITY_TOLERANCE:g}), max abs difference "
         f"{parity['max_abs_diff']:.3g} over {parity['images']} images (source TensorFlow model vs fp32 package)")
    if parity["max_relative_error"] > checks.PARITY_TOLERANCE:
        worst = max(parity["relative_error"], key=parity["relative_error"].get)
        raise RuntimeError(f"the fp32 package disagrees with the source model on {worst} (relative error "
                           f"{parity['max_relative_error']:.3g} > {checks.PARITY_TOLERANCE:g}): a conversion bug, "
                           "please report it.")
    m.parity = parity
    if fmt is not None:
        from ..fpga import kernel
        pkg = AcceleratorPackage(pkg_dir)
        check = checks.device_check(pkg, fp32_model, fmt)
        _log(f"  device check ({fmt.name}): max relative difference {check['max_rel_diff']:.3g}, top-1 agreement "
             f"{check['top1_agreement']:.0%} (ONNX Runtime device, quantizer: {kernel.label()}, vs numpy reference "
             "device)")
        if check["max_rel_diff"] > checks.DEVICE_TOLERANCE:
            raise RuntimeError(f"the {fmt.name} device graph disagrees with the reference device "
                               f"({check['max_rel_diff']:.3g}): a simulator bug, please report it.")
        m.device_check = check
        report = checks.quantization_effect(pkg, fp32_model, device_model, layers, fmt, meta.weights)
        (pkg_dir / manifest.REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
        m.report = manifest.REPORT_FILE
        _log(f"  quantization effect ({fmt.name} vs fp32): top-1 agreement {report['top1_agreement']:.0%}, top-5 "
             f"overlap {report['top5_overlap']:.0%}, feature SQNR {report['feature_sqnr_db']:.1f} dB over "
             f"{report['images']} images" + (" — RANDOM WEIGHTS: not what a trained model would show"
                                             if report["random_weights"] else ""))
    manifest.write(m, pkg_dir)
    return parity


def _work(ws, op_id):
    import shutil

    from ..model import Model
    from ..models.zoo import read_metadata
    with ws.connect() as db:
        req = json.loads(db.execute("SELECT request FROM operations WHERE id=?", (op_id,)).fetchone()[0])
    src = Model(ws, id=req["source"])
    work = ws.scratch("operations", op_id, "work")
    _log(f"converting {src.id} (input {req['input']}, outputs {req['outputs']}, format {req['numeric_format']})")
    saved = Path(src.download(work, exist_ok=True))
    meta = read_metadata(saved)
    pkg_dir = work / "package"
    if pkg_dir.exists():
        shutil.rmtree(pkg_dir)
    pkg_dir.mkdir()
    loaded = load_saved_model(saved)
    m, fp32_model, device_model, layers, fmt = build_package(meta, src, req, loaded, pkg_dir, work)
    parity = run_checks(m, meta, loaded, pkg_dir, work, fp32_model, device_model, layers, fmt)
    name = f"{src.name}.{src.version}.accelonnx"
    conv = Model.register(ws, pkg_dir, name, tags={"accelonnx": "true", "numeric_format": req["numeric_format"]},
                          properties={"source_model": src.id, "numeric_format": req["numeric_format"],
                                      "parity_top1_agreement": f"{parity['top1_agreement']:.4f}",
                                      "parity_max_relative_error": f"{parity['max_relative_error']:.3g}"},
                          description=f"{src.name} v{src.version} converted for the FPGA ({req['numeric_format']})")
    shutil.rmtree(work, ignore_errors=True)
    _log(f"registered {conv.id}")
    return conv


def main(argv):
    """Run one conversion operation and record its outcome in the workspace."""
    from ..workspace import Workspace
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
