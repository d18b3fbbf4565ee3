"""The package contracts have one owner: typed, validated on read, with errors that name the bad field."""
import json

import pytest

from accel_lib.fpga.device import manifest
from accel_lib.fpga.device.manifest import ManifestError, PackageManifest, SavedModelMetadata


def _package_dict(converted, tmp_path):
    ws, src, op = converted
    folder = op.result.download(tmp_path)
    return json.loads((tmp_path / op.result.name / "manifest.json").read_text()), folder


def test_round_trip_and_typed_access(converted, tmp_path):
    data, folder = _package_dict(converted, tmp_path)
    m = manifest.read(PackageManifest, folder)
    assert m.format == "accel_lib.accelonnx/4" and m.device.where == "device" and m.stage("heads").where == "host"
    assert [t.name for t in m.served()] == m.outputs
    assert json.loads(manifest.dumps(m)) == data
    meta = converted[1].source_metadata
    assert isinstance(meta, SavedModelMetadata) and meta.signatures["heads"] == "heads"
    assert meta.by_name()["output_alias"].name == "classifier/resnet_v1_50/predictions/Softmax:0"


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("stages"), "required field 'stages' is missing"),
    (lambda d: d["tensors"][0].update(shape="224"), r"field 'tensors\[0\].shape' must be a list"),
    (lambda d: d["tensors"][1].update(shape=[-1, "x"]), r"field 'tensors\[1\].shape\[1\]' must be int"),
    (lambda d: d["stages"][1].update(where="gpu"), r"field 'stages\[1\].where' must be one of"),
    (lambda d: d["tensors"][1].update(key="nope"), r"field 'tensors\[1\]' .* names key 'nope'"),
    (lambda d: d.update(outputs=["missing:0"]), r"field 'outputs\[0\]' is 'missing:0'"),
    (lambda d: d.update(colour="blue"), "unknown field 'colour'"),
    (lambda d: d["tensors"][1].update(kind="pixels"), r"field 'tensors\[1\].kind' must be one of"),
])
def test_a_bad_field_is_named(converted, tmp_path, change, message):
    data, _ = _package_dict(converted, tmp_path)
    change(data)
    with pytest.raises(ManifestError, match=message):
        manifest.loads(PackageManifest, json.dumps(data))


def test_not_json_and_other_versions(tmp_path):
    with pytest.raises(ManifestError, match="not valid JSON"):
        manifest.loads(SavedModelMetadata, "{")
    with pytest.raises(ManifestError, match=r"format 'accel_lib.saved_model/1'; .* save the model again"):
        manifest.loads(SavedModelMetadata, json.dumps({"format": "accel_lib.saved_model/1"}))
    with pytest.raises(ManifestError, match="has no manifest.json: convert the source model again"):
        manifest.read(PackageManifest, tmp_path)


def test_service_config_is_stored_as_itself_and_older_flat_configs_still_read():
    from accel_lib import AksWebservice, UserError
    from accel_lib.fpga.cluster.specs import ServiceConfig
    from accel_lib.fpga.replica.limits import ServiceLimits
    cfg = AksWebservice.deploy_configuration(num_replicas=2, max_images=8, tags={"a": "b"})
    back = ServiceConfig.from_json(cfg.to_json())
    assert back == cfg and back.limits.max_images == 8 and back.limits.max_message_mb == ServiceLimits.max_message_mb
    flat = ('{"autoscale_enabled": false, "num_replicas": 1, "auth_enabled": true, "flash_seconds": 1.0, '
            '"max_message_mb": 2, "description": null, "tags": {}, "max_images": 64, "max_pixels": 40000000, '
            '"generation": 17}')                                  # as an older accel_lib stored it
    old = ServiceConfig.from_json(flat)
    assert old.auth_enabled is True and old.limits.max_message_mb == 2 and not hasattr(old, "generation")
    assert old.limits.max_request_mb == ServiceLimits.max_request_mb
    v1 = {**json.loads(cfg.to_json()), "format": "accel_lib.service-config/1", "generation": 17,
          "engine": "/usr/bin/podman"}                             # version 1 kept what Settled now holds
    assert ServiceConfig.from_json(json.dumps(v1)) == cfg
    with pytest.raises(ManifestError, match="this accel_lib reads 'accel_lib.service-config/2'"):
        ServiceConfig.from_json(cfg.to_json().replace(ServiceConfig.FORMAT, "accel_lib.service-config/9"))
    with pytest.raises(UserError, match="num_replicas must be a whole number"):
        AksWebservice.deploy_configuration(num_replicas=0)
    with pytest.raises(UserError, match="limit max_images must be a whole number"):
        AksWebservice.deploy_configuration(max_images=2.5)
    with pytest.raises(ManifestError, match="field 'limits.max_images' must be int"):
        ServiceConfig.from_json(cfg.to_json().replace('"max_images": 8', '"max_images": "8"'))


def test_checks_and_report_are_typed_and_validated(converted_q, tmp_path):
    import dataclasses

    from accel_lib.report import load_report
    conv = converted_q[2].result
    m = conv.manifest
    assert isinstance(m.parity, manifest.Parity) and isinstance(m.device_check, manifest.DeviceCheck)
    assert m.parity.max_relative_error == max(m.parity.relative_error.values())
    rep = load_report(conv)
    assert isinstance(rep, manifest.QuantizationReport) and rep.numeric_format == "ms-fp9"
    assert isinstance(rep.layers[0], manifest.LayerReport) and len(rep.layers) == m.device.quantized_layers
    assert manifest.loads(manifest.QuantizationReport, manifest.dumps(rep)) == rep
    data = json.loads(manifest.dumps(rep))
    data["layers"][2].pop("output_sqnr_db")
    with pytest.raises(ManifestError, match=r"required field 'layers\[2\].output_sqnr_db' is missing"):
        manifest.loads(manifest.QuantizationReport, json.dumps(data))
    with pytest.raises(ManifestError, match="field 'top5_overlap' must be a fraction"):
        manifest.loads(manifest.QuantizationReport, manifest.dumps(dataclasses.replace(rep, top5_overlap=1.5)))
    bad = {**dataclasses.asdict(m.parity), "relative_error": {"x": "big"}}
    with pytest.raises(ManifestError, match="field 'relative_error.x' must be a number"):
        manifest.build(manifest.Parity, bad)
