"""A narrow-format conversion end to end: manifest, checks, report, and a deployed service vs the reference device."""
import numpy as np
import pytest

from accel_lib import AccelContainerImage, AksWebservice, Image, Webservice, client_from_service, samples
from accel_lib.fpga.device import formats, host
from accel_lib.report import load_report, show_report


def test_ms_fp9_conversion_records_format_checks_and_report(converted_q, capsys):
    ws, src, op = converted_q
    conv = op.result
    assert conv.name == "small.1.accelonnx" and conv.version == 2 and conv.tags["numeric_format"] == "ms-fp9"
    m = conv.manifest
    assert (m.numeric_format, m.device.block_size, m.device.quantized_layers) == ("ms-fp9", 64, 53)
    assert m.parity.top1_agreement == 1.0 and m.parity.max_relative_error < 1e-3     # fp32 conversion
    dc = m.device_check
    assert dc.layers == 53 and dc.values > 0 and 0 <= dc.boundary_fraction <= 1 and dc.bound_used <= 1, dc
    rep = load_report(conv)
    from accel_lib.conversion import checks
    assert rep.random_weights and len(rep.layers) == 53
    assert rep.images == checks.images_for(m.stage("preprocess").params, checks.REPORT_IMAGES)
    assert all(15 < r.weight_sqnr_db < 30 for r in rep.layers)    # 3 mantissa bits: ~20 dB on weights
    show_report(conv, plot=False)
    out = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in out and "weight SQNR" in out
    assert "device check (ms-fp9)" in op.get_log()


def test_an_mx_format_converts_with_the_same_checks_and_fields(converted, capsys):
    """MXFP4 through the same conversion option: the manifest, the device check and the report, as for ms-fp9."""
    from accel_lib import AccelOnnxConverter
    ws, src, _ = converted
    op = AccelOnnxConverter.convert_tf_model(ws, src, "images", "output_alias", numeric_format="mxfp4")
    assert op.wait_for_completion(timeout=600), op.get_log()
    m = op.result.manifest
    assert (m.numeric_format, m.device.block_size, m.device.quantized_layers) == ("mxfp4", 32, 53)
    assert "OCP MX" in m.device.format and "E2M1" in m.device.format
    assert m.device_check.layers == 53 and m.device_check.bound_used <= 1, m.device_check
    rep = load_report(op.result)
    assert len(rep.layers) == 53 and all(0 < r.weight_sqnr_db < 30 for r in rep.layers)
    assert "device check (mxfp4)" in op.get_log()


def test_bad_format_arguments_fail_at_once(converted):
    from accel_lib import AccelOnnxConverter, UserError
    ws, src, _ = converted
    with pytest.raises(UserError, match="block size"):
        AccelOnnxConverter.convert_tf_model(ws, src, "images", "output_alias", numeric_format="ms-fp9", block_size=0)


def test_deployed_ms_fp9_service_agrees_with_the_reference_device(converted_q, small_fp32, cluster, tmp_path):
    import onnx

    from accel_lib.fpga.device.package import AcceleratorPackage
    from accel_lib.fpga.device.reference import reference_device
    ws, src, op = converted_q
    img = Image.create("small-q", [op.result], AccelContainerImage.image_configuration(), ws)
    svc = Webservice.deploy_from_image(ws, "svc-q", img, AksWebservice.deploy_configuration(), cluster)
    svc.wait_for_deployment(timeout=120)
    data = samples.sample_images(2, seed=77)
    with client_from_service(svc) as c:
        served = c.score_numpy_arrays({"images": data}, outputs="output_alias")
        assert c.get_model_metadata()["numeric_format"] == "ms-fp9"
    # the reference device: the fp32 featurizer (as the conversion made it) run by numpy with formats.quantize
    fp32 = onnx.load(str(small_fp32))
    x = host.preprocess(data, order="BGR", output_height=64, output_width=64)
    feats = reference_device(fp32, formats.get("ms-fp9", 64))(x)
    pkg = AcceleratorPackage(img.context / "package")
    expected = pkg.run_heads(feats)["output_alias"]
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert (served.argmax(1) == expected.argmax(1)).all()
    svc.delete()
    img.delete()
