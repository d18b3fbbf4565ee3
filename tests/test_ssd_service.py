"""SSD-VGG end to end: converted with the article's twelve outputs in both formats (the Quantized class's and its
float twin's), served over gRPC, post-processed."""
import numpy as np
import pytest

from accel_lib import (AccelContainerImage, AccelOnnxConverter, AksCompute, AksWebservice, ComputeTarget, Image,
                       Model, Webservice, Workspace, client_from_service, models, samples)
from accel_lib.conversion import checks
from accel_lib.models import ssd



@pytest.fixture(autouse=True)
def free_keras_models():
    """These tests build large Keras models in the test process: let them go afterwards (CI has 24 GiB)."""
    yield
    import gc

    import keras
    keras.backend.clear_session()
    gc.collect()

@pytest.mark.timeout(1800)
def test_ssd_converts_serves_twelve_outputs_and_detects_like_in_process(tmp_path):
    from accel_lib.fpga.device.package import AcceleratorPackage
    ws = Workspace.create("ssd", path=tmp_path / "ws")
    plain = models.SsdVgg(tmp_path, weights="random")
    info = models.QuantizedSsdVgg(tmp_path, weights="random").save(tmp_path / "QuantizedSsdVgg")
    assert info.output_tensors == plain.output_tensors == list(ssd.OUTPUT_NAMES)
    assert info.metadata.preprocessing["preserve_aspect_ratio"] is False and plain.default_numeric_format == "fp32"
    src = Model.register(ws, info.path, "quantizedssdvgg")
    ops = {}
    # the Quantized class in its default format, then the same source in fp32 (the float twin's; TensorFlow once)
    for cls, fmt in (("QuantizedSsdVgg", None), ("SsdVgg", "fp32")):
        op = AccelOnnxConverter.convert_tf_model(ws, src, "images", ",".join(info.output_tensors), numeric_format=fmt)
        ops[cls] = op
        assert op.wait_for_completion(timeout=1200), op.get_log()
    assert "reusing them" in ops["SsdVgg"].get_log()
    for op in ops.values():
        m = op.result.manifest
        assert m.outputs == list(ssd.OUTPUT_NAMES) and m.labels == "voc"
        assert m.parity.top1_agreement == 1.0 and m.parity.max_relative_error < checks.PARITY_TOLERANCE
        assert [s.where for s in m.stages] == ["host", "device", "host"] and len(m.device.outputs) == 6
    q = ops["QuantizedSsdVgg"].result
    assert q.manifest.numeric_format == "ms-fp9" and q.manifest.device_check.bound_used <= 1

    img = Image.create("ssd-image", [q], AccelContainerImage.image_configuration(), ws)
    target = ComputeTarget.create(ws, "ssd-aks", AksCompute.provisioning_configuration(agent_count=1))
    svc = Webservice.deploy_from_image(ws, "ssd-svc", img, AksWebservice.deploy_configuration(flash_seconds=0), target)
    try:
        svc.wait_for_deployment(timeout=300)
        data = [samples.encode(samples.synthetic_image(21, 375, 500))]
        with client_from_service(svc) as client:
            every = client.score_numpy_arrays({"images": data}, timeout=120)
            subset = client.score_numpy_arrays({"images": data}, outputs=[ssd.LOC_NAMES[2], ssd.CLS_NAMES[5]],
                                               timeout=120)
            metadata = client.get_model_metadata()
        local = AcceleratorPackage(img.context / "package").run(data)
    finally:
        svc.delete()
        target.delete()
    assert sorted(every) == sorted(ssd.OUTPUT_NAMES)          # a protobuf map: names, in no order
    anchors = ssd.anchors_per_location()
    for name, size, a in zip(ssd.CLS_NAMES, ssd.MAP_SIZES, anchors):
        assert every[name].shape == (1, size, size, a, 21)
    for name, size, a in zip(ssd.LOC_NAMES, ssd.MAP_SIZES, anchors):
        assert every[name].shape == (1, size, size, a, 4)
    assert [a.shape for a in subset] == [(1, 10, 10, 6, 4), (1, 1, 1, 4, 21)]
    assert sorted(metadata["outputs"]) == sorted(ssd.OUTPUT_NAMES) and metadata["labels"] == "voc"
    assert metadata["postprocess"]["function"] == "accel_lib.models.ssd.postprocess"
    (c1, s1, b1), = ssd.postprocess(every)
    (c2, s2, b2), = ssd.postprocess(local)
    assert len(c1) > 0                                # the random heads are set to give a few detections
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_allclose(s1, s2, atol=1e-6)
    np.testing.assert_allclose(b1, b2, atol=1e-6)
