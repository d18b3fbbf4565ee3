"""Every class of the zoo: saved, registered, converted (fp32 parity, device check, report) and served.

Small inputs and random weights keep this within CI's time; the tutorial runs the real sizes. The article's
QuantizedResnet152 converts at its real size (224 px), where summation order once failed the device check, and its
device graph is judged again on the other paths that can be forced here: numpy's OpenBLAS on its AVX2 kernels
(OPENBLAS_CORETYPE=Haswell) and the pure-ONNX quantizer, around which ONNX Runtime fuses the graph otherwise.
"""
from pathlib import Path

import numpy as np
import pytest

from accel_lib import (AccelContainerImage, AccelOnnxConverter, AksCompute, ComputeTarget, Image, Model, UserError,
                       Webservice, AksWebservice, Workspace, client_from_service, models, samples)
from accel_lib.conversion import checks

REAL_SIZE = {"Resnet152": 224}   # the Quantized class at the article's size
FAMILIES = {  # class: (image size for the test, feature dim, the article's default output name, input order)
    "Resnet152": (32, 2048, "classifier/resnet_v1_152/predictions/Softmax:0", "BGR"),
    "Vgg16": (32, 4096, "classifier/vgg_16/fc8/squeezed:0", "BGR"),
    "Densenet121": (32, 1024, "classifier/densenet121/predictions/Softmax:0", "RGB"),
}



@pytest.fixture(autouse=True)
def free_keras_models():
    """These tests build large Keras models in the test process: let them go afterwards (CI has 24 GiB)."""
    yield
    import gc

    import keras
    keras.backend.clear_session()
    gc.collect()

def _convert(ws, graph, path, name, **kw):
    info = graph.save(path)
    src = Model.register(ws, info.path, name)
    return info, AccelOnnxConverter.convert_tf_model(ws, src, info.input_tensors, info.output_tensors, **kw)


def _deploy_and_score(ws, converted, name):
    """Serve a converted model on a one-node cluster; the service's answer and the same package in-process."""
    from accel_lib.fpga.device.package import AcceleratorPackage
    img = Image.create(f"{name}-image", [converted], AccelContainerImage.image_configuration(), ws)
    assert img.creation_state == "Succeeded", (img.context / "build.log").read_text()
    target = ComputeTarget.create(ws, f"{name}-aks", AksCompute.provisioning_configuration(agent_count=1))
    svc = Webservice.deploy_from_image(ws, f"{name}-svc", img, AksWebservice.deploy_configuration(flash_seconds=0),
                                       target)
    try:
        svc.wait_for_deployment(timeout=180)
        data = samples.sample_images(2, seed=5)
        with client_from_service(svc) as client:
            served = client.score_numpy_arrays({"images": data})
        local = AcceleratorPackage(img.context / "package").run(data)
    finally:
        svc.delete()
        target.delete()
    return served, local


JUDGE = """
import json, sys
import onnx
from accel_lib.conversion import checks
from accel_lib.fpga.device import formats, host
from accel_lib.samples import sample_images
fp32, dev, prep, fmt, block = sys.argv[1:6]
x = host.preprocess(sample_images(1, seed=31), **json.loads(prep))
_, judge = checks.judge_layers(onnx.load(fp32), onnx.load(dev), formats.get(fmt, int(block)), x)
print(json.dumps({"layers": judge.layers, "used": judge.used, "boundary": judge.boundary}))
"""


def _judged_elsewhere(ws, source_name, converted, folder):
    """The device check's layer judge on the converted package, in a process on OpenBLAS's AVX2 kernels with the
    pure-ONNX quantizer."""
    import json
    import os
    import subprocess
    import sys

    from accel_lib.fpga.device.manifest import DEVICE_FILE
    (cache,) = (ws.path / "cache" / "conversion").glob(f"{source_name}.*/*/fp32.json")
    fp32 = cache.parent / json.loads(cache.read_text())["fp32"]["featurize"]
    package = converted.download(folder)
    m = converted.manifest
    env = {**os.environ, "OPENBLAS_CORETYPE": "Haswell", "ACCEL_LIB_DEVICE_KERNEL": "onnx"}
    r = subprocess.run([sys.executable, "-c", JUDGE, str(fp32), str(Path(package) / DEVICE_FILE),
                        json.dumps(m.stage("preprocess").params), m.numeric_format, str(m.device.block_size)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.splitlines()[-1])


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_classifier_family_saves_converts_and_serves(family, tmp_path):
    """The Quantized class saved and converted in its default format, then the same source in fp32 (the float twin's
    format; the conversion's cache spares TensorFlow), which a cluster serves. The float twin is the same graph: its
    class is checked for what sets it apart (names, version, format)."""
    size, dim, seed_name, order = FAMILIES[family]
    ws = Workspace.create("zoo", path=tmp_path / "ws")
    plain = getattr(models, family)(tmp_path, weights="random", image_size=size)
    quant = getattr(models, "Quantized" + family)(tmp_path, weights="random", image_size=REAL_SIZE.get(family, size))
    assert plain.output_tensors == quant.output_tensors == seed_name and plain.feature_dim == dim
    assert plain.input_order == quant.input_order == order and plain.default_numeric_format == "fp32"
    assert quant.version == plain.version + "-q" and quant.default_numeric_format == "ms-fp9"
    info, qop = _convert(ws, quant, tmp_path / "quant", "q" + family.lower())
    assert qop.wait_for_completion(timeout=900), qop.get_log()
    op = AccelOnnxConverter.convert_tf_model(ws, Model(ws, "q" + family.lower()), info.input_tensors,
                                             info.output_tensors, numeric_format="fp32")
    assert op.wait_for_completion(timeout=900), op.get_log()
    assert "converted before" in op.get_log() and "reusing them" in op.get_log()     # TensorFlow ran once
    assert info.metadata.features[0].shape == [-1, dim] and info.metadata.preprocessing["order"] == order
    for o in (op, qop):
        m = o.result.manifest
        assert m.parity.top1_agreement == 1.0 and m.parity.max_relative_error < checks.PARITY_TOLERANCE, m.parity
        assert "parity (fp32): top-1 agreement 100%" in o.get_log()
        assert m.outputs == [seed_name] and m.labels == "imagenet"
    assert op.result.manifest.numeric_format == "fp32"
    qm = qop.result.manifest
    assert qm.numeric_format == "ms-fp9" and qm.device.quantized_layers > 0
    assert qm.device_check.layers == qm.device.quantized_layers and qm.device_check.bound_used <= 1
    if family in REAL_SIZE:
        assert qm.stage("preprocess").params["output_height"] == 224 and qm.device_check.layers == 155
        other = _judged_elsewhere(ws, "q" + family.lower(), qop.result, tmp_path / "downloaded")
        assert other["layers"] == 155 and other["used"] <= 1, other
    served, local = _deploy_and_score(ws, op.result, family.lower())
    assert list(served) == [seed_name] and served[seed_name].shape == (2, 1000)
    np.testing.assert_allclose(served[seed_name], local[seed_name], rtol=1e-6, atol=1e-7)


def test_vgg16_imagenet_weights_need_224_pixels(tmp_path):
    import h5py
    path = tmp_path / "vgg16.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = []
    with pytest.raises(UserError, match="image_size=224"):
        models.Vgg16(tmp_path, weights=str(path), image_size=64).restore_weights()


def test_ssd_has_no_download_and_a_fixed_size(tmp_path):
    with pytest.raises(UserError, match="no public SSD-VGG weights"):
        models.SsdVgg(tmp_path, weights="imagenet")
    with pytest.raises(UserError, match="image_size must be 300"):
        models.QuantizedSsdVgg(tmp_path, weights="random", image_size=224)
    with pytest.raises(UserError, match="no public SsdSmall \\(the project's own\\) weights"):
        models.SsdSmall(tmp_path, weights="imagenet")


def test_an_old_package_format_gets_a_clear_error(tmp_path):
    import json

    from accel_lib.fpga.device.manifest import ManifestError
    from accel_lib.fpga.device.package import AcceleratorPackage
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "accel_lib.accelonnx/1", "stages": []}))
    with pytest.raises(ManifestError, match=r"format 'accel_lib.accelonnx/1'; this accel_lib reads "
                                            r"'accel_lib.accelonnx/4': convert the source model again"):
        AcceleratorPackage(tmp_path)
