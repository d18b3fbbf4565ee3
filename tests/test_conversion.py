import pytest

from accel_lib import AccelOnnxConverter, Model, UserError, samples
from accel_lib.conversion import checks
from accel_lib.fpga.device.package import AcceleratorPackage, RequestError


def test_converted_model_is_named_linked_and_in_parity(converted, tmp_path):
    ws, src, op = converted
    conv = op.result
    assert op.status == "Succeeded"
    assert conv.name == "small.1.accelonnx" and conv.version == 1
    assert conv.properties["source_model"] == "small:1"
    manifest = conv.manifest
    assert [s.name for s in manifest.stages] == ["preprocess", "featurizer", "heads"]
    assert [s.where for s in manifest.stages] == ["host", "device", "host"]
    assert manifest.numeric_format == "fp32" and manifest.source_model == {"name": "small", "version": 1}
    assert manifest.outputs == ["classifier/resnet_v1_50/predictions/Softmax:0", "resnet_v1_50/pool5:0"]
    assert {"tensorflow", "tf2onnx", "onnx", "onnxruntime"} <= set(manifest.tools)
    assert manifest.parity.top1_agreement == 1.0
    assert manifest.parity.max_relative_error < checks.PARITY_TOLERANCE
    assert "parity (fp32): top-1 agreement 100%" in op.get_log()
    # its timing on the device it was converted for: modeled, layer by layer
    assert manifest.device_preset == "arria10-pb6"
    report = conv.timing
    assert report["modeled"] and report["preset"] == "arria10-pb6" and report["numeric_format"] == "fp32"
    convs = [r for r in report["layers"] if r["op"] == "Conv"]
    assert convs and all(r["cycles"] > 0 and r["macs"] > 0 for r in convs)
    net = report["network"]
    assert net["cycles"] == sum(r["cycles"] for r in report["layers"])
    assert net["latency_s"] > net["device_s"] > 0 and net["bottleneck"] in {r["name"] for r in report["layers"]}
    assert f"modeled on arria10-pb6: {1000 * net['latency_s']:.2f} ms at batch 1" in op.get_log()


def test_package_scores_like_the_source_model(converted, small_model, tmp_path):
    import tensorflow as tf
    ws, src, op = converted
    pkg = AcceleratorPackage(op.result.download(tmp_path))
    imgs = samples.sample_images(3, seed=40)
    out = pkg.run(imgs)
    probs = out["classifier/resnet_v1_50/predictions/Softmax:0"]
    feats = out["resnet_v1_50/pool5:0"]
    assert probs.shape == (3, 1000) and feats.shape == (3, 2048)
    loaded = tf.saved_model.load(small_model[1].path)
    ref = loaded.signatures["serving_default"](images=tf.constant(imgs))["output_alias"].numpy()
    assert (probs.argmax(1) == ref.argmax(1)).all()
    # fp32 noise is relative to the scale where each stage computes: features, and the head on the same features
    ref_feats = loaded.signatures["featurize"](image_tensors=tf.constant(pkg.preprocess(imgs)))["features"].numpy()
    assert checks.relative_error(ref_feats, feats) < checks.PARITY_TOLERANCE
    head = loaded.signatures["heads"](features=tf.constant(ref_feats))["output_alias"].numpy()
    assert checks.relative_error(head, pkg.run_heads({"features": ref_feats})["output_alias"]) < checks.PARITY_TOLERANCE
    assert pkg.run(imgs, outputs=["output_alias"])["output_alias"].shape == (3, 1000)
    with pytest.raises(RequestError, match="unknown output 'nope'"):
        pkg.run(imgs, outputs=["nope"])
    with pytest.raises(RequestError, match="image 1 "):
        pkg.run([imgs[0], b"junk"])


def test_unknown_names_fail_at_once_with_the_valid_list(converted):
    ws, src, _ = converted
    with pytest.raises(UserError, match=r"unknown output tensor\(s\) \['bogus:0'\]; valid names are .*output_alias"):
        AccelOnnxConverter.convert_tf_model(ws, src, "images", "classifier/resnet_v1_50/predictions/Softmax:0,bogus:0")
    with pytest.raises(UserError, match="unknown input tensor 'pixels'"):
        AccelOnnxConverter.convert_tf_model(ws, src, "pixels", "output_alias")
    with pytest.raises(UserError, match="outputs_nodes is empty"):
        AccelOnnxConverter.convert_tf_model(ws, src, "images", " , ")
    with pytest.raises(UserError, match="unknown numeric format .int3.; choose one of"):
        AccelOnnxConverter.convert_tf_model(ws, src, "images", "output_alias", numeric_format="int3")
    with pytest.raises(UserError, match="unknown device preset 'stratix'; choose one of .*'arria10-pb6'"):
        AccelOnnxConverter.convert_tf_model(ws, src, "images", "output_alias", device="stratix")
    with ws.connect() as db:
        assert db.execute("SELECT COUNT(*) FROM operations").fetchone()[0] == 1   # nothing half-started


def test_a_model_without_metadata_is_refused(ws, tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "saved_model.pb").write_bytes(b"x")
    m = Model.register(ws, tmp_path / "plain", "plain")
    with pytest.raises(UserError, match=r"no accel_model.json: register a folder saved with model_graph.save"):
        AccelOnnxConverter.convert_tf_model(ws, m, "images", "output_alias")


def test_a_failing_conversion_reports_failure_and_registers_nothing(ws, small_model, tmp_path):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(small_model[1].path, broken)
    (broken / "saved_model.pb").write_bytes(b"corrupted graph")
    src = Model.register(ws, broken, "broken")
    op = AccelOnnxConverter.convert_tf_model(ws, src, "images", "output_alias")
    assert op.wait_for_completion(timeout=300) is False
    assert op.status == "Failed" and op.error
    with pytest.raises(UserError, match="is Failed"):
        _ = op.result
    assert [m.name for m in Model.list(ws)] == ["broken"]


def _step_process(op, name, seconds=180):
    """The process running conversion step ``name`` of operation ``op`` (a child of its worker)."""
    import time

    import psutil
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for p in psutil.Process(op._proc.pid).children(recursive=True):
            try:
                cmd = p.cmdline()
            except psutil.Error:
                continue
            if "--step" in cmd and name in cmd[cmd.index("--step") + 1].split(","):
                return p
        time.sleep(0.1)
    raise AssertionError(f"no {name} step started within {seconds} s:\n{op.get_log()}")


def test_a_step_killed_by_a_signal_is_reported_as_killed_and_registers_nothing(ws, small_model):
    src = Model.register(ws, small_model[1].path, "victim")
    op = AccelOnnxConverter.convert_tf_model(ws, src, "images", "output_alias")
    _step_process(op, "to_onnx").kill()                      # what the out-of-memory killer does
    assert op.wait_for_completion(timeout=300) is False
    assert op.status == "Failed"
    assert ("the conversion's to_onnx step was killed (SIGKILL, signal 9, most likely out of memory: "
            in op.error), op.error
    assert "converting Resnet50 needs about" in op.error and "Close other notebooks' kernels" in op.error
    assert [m.name for m in Model.list(ws)] == ["victim"]


def test_a_killed_worker_is_reported_with_its_signal_and_the_log_and_its_steps_end_too(ws, small_model):
    import os
    import signal
    import time

    import psutil

    from accel_lib import ModelConvertOperation
    src = Model.register(ws, small_model[1].path, "victim")
    op = AccelOnnxConverter.convert_tf_model(ws, src, "images", "output_alias")
    step = _step_process(op, "freeze")
    deadline = time.monotonic() + 60                       # the step has started: its first line is in the log
    while "step freeze:" not in op.get_log() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(op._proc.pid, signal.SIGKILL)
    assert op.wait_for_completion(timeout=60) is False
    assert op.error.startswith("the conversion worker was killed (SIGKILL, signal 9, most likely by the "
                               "out-of-memory killer). The log's last lines:"), op.error
    assert "step freeze" in op.error
    again = ModelConvertOperation(ws, op.id)               # as another kernel sees it: the reason was recorded
    assert again.status == "Failed" and again.error == op.error
    deadline = time.monotonic() + 10                       # the step does not outlive its worker
    while step.is_running() and step.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not step.is_running() or step.status() == psutil.STATUS_ZOMBIE


def test_each_step_ran_in_its_own_process_and_reported_its_memory(converted):
    ws, src, op = converted
    log = op.get_log()
    for step in ("freeze", "to_onnx", "fold", "device_format", "check_parity"):
        assert f"step {step}:" in log
        assert f"  {step} done in " in log and f"{step} done in" in log
    assert log.count("peak memory") == 5                   # one process each (fp32: no device check, no report)
