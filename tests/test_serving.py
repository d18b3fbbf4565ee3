"""Containerize, deploy, consume, clean up: real replica processes answering gRPC on loopback."""
import os
import shutil
import subprocess
import sys
import textwrap
import time

import grpc
import numpy as np
import pytest

from accel_lib import (AccelContainerImage, AccelOnnxConverter, AksCompute, AksWebservice, ComputeTarget, Image,
                       Model, PredictionClient, UserError, Webservice, client_from_service, samples)
from accel_lib.compute import list_usage
from accel_lib.fpga.device import timing
from accel_lib.fpga.device.package import AcceleratorPackage

SOFTMAX = "classifier/resnet_v1_50/predictions/Softmax:0"
FEATURES = "resnet_v1_50/pool5:0"


def _deploy(img, target, name, **cfg):
    svc = Webservice.deploy_from_image(img.workspace, name, img, AksWebservice.deploy_configuration(**cfg), target)
    svc.wait_for_deployment(timeout=120)
    return svc


def _stock_predict(address, data, key=None, outputs=(SOFTMAX,), route=None, model="", credentials=None):
    """Score with TensorFlow Serving's own stub and TensorFlow's make_tensor_proto (not accel_lib's client)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    req.inputs["images"].CopyFrom(tf.make_tensor_proto([data]))
    req.output_filter.extend(outputs)
    md = [("authorization", f"Bearer {key}")] if key else []
    if route:
        md.append(("x-ms-aml-grpc-service-route", f"/api/v1/service/{route}"))
    target = address.split("://")[-1]
    ch = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with ch:
        resp = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(req, timeout=30, metadata=md)
    return tf.make_ndarray(resp.outputs[SOFTMAX])


# -- image ------------------------------------------------------------------------------------------
def test_image_record_and_context(built_image):
    img = built_image
    assert img.version == 1 and img.image_location == "conv-ws.azurecr.local/small-image:1"
    assert img.image_build_log_uri == "images/small-image/1/build.log"
    assert "smoke test" in (img.context / "build.log").read_text()
    reqs = (img.context / "requirements.txt").read_text()
    assert "onnxruntime==" in reqs and "grpcio==" in reqs and "protobuf==" in reqs
    assert "tensorflow" not in reqs                 # a replica speaks TF Serving's protocol without TensorFlow
    assert "fpga.replica.server" in (img.context / "Dockerfile").read_text()
    assert [i.id for i in Image.list(img.workspace, tags=[["t", "1"]])] == ["small-image:1"]
    assert Image(img.workspace, "small-image").models[0].name == "small.1.accelonnx"


def test_image_takes_one_converted_model(converted):
    ws, src, op = converted
    cfg = AccelContainerImage.image_configuration()
    with pytest.raises(UserError, match="exactly one model"):
        Image.create("two", [op.result, op.result], cfg, ws)
    with pytest.raises(UserError, match="no manifest.json: convert it first"):
        Image.create("raw", [src], cfg, ws)
    with pytest.raises(UserError, match="invalid image name"):
        Image.create("Upper", [op.result], cfg, ws)
    assert [i.name for i in Image.list(ws)] in ([], ["small-image"])


def test_context_copied_elsewhere_serves_alone(built_image, tmp_path):
    """A replica serves from a copy of the context alone, which carries only the device and replica wings; started,
    it has loaded neither the cluster wing nor TensorFlow (every import it made, from ``python -X importtime``)."""
    import socket
    copy = tmp_path / "elsewhere"
    shutil.copytree(built_image.context, copy)
    assert sorted(p.name for p in (copy / "fpga").iterdir()) == ["__init__.py", "device", "replica"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(copy)}
    imports = open(tmp_path / "imports.txt", "w+")
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "fpga.replica.server", "--package", "package",
                             "--port", str(port)], cwd=copy, env=env, stdout=subprocess.DEVNULL, stderr=imports)
    try:
        with PredictionClient(f"127.0.0.1:{port}", retry_seconds=60) as c:      # it answers once it has loaded
            data = samples.sample_images(1, seed=3)[0]
            got = c.score_numpy_arrays({"images": [data]}, outputs=SOFTMAX)
        ref = AcceleratorPackage(copy / "package").run([data], [SOFTMAX])[SOFTMAX]
        np.testing.assert_array_equal(got, ref)
        assert "accel_lib" not in " ".join(p.name for p in copy.iterdir())
        imports.seek(0)
        loaded = {line.rsplit("|", 1)[1].strip() for line in imports if line.startswith("import time:")}
        assert {"fpga.replica.limits", "fpga.device.package", "onnxruntime"} <= loaded      # what it did load
        assert not [m for m in loaded if m.startswith(("fpga.cluster", "tensorflow", "keras", "accel_lib"))]
    finally:
        proc.terminate()
        proc.wait(10)
        imports.close()


# -- compute ----------------------------------------------------------------------------------------
def test_provisioning_configuration_is_validated():
    with pytest.raises(UserError, match="has no FPGA.*Standard_PB6s"):
        AksCompute.provisioning_configuration(vm_size="Standard_D3_v2")
    with pytest.raises(UserError, match="eastus, southeastasia, westeurope, westus2"):
        AksCompute.provisioning_configuration(location="centralus")
    with pytest.raises(UserError, match="agent_count"):
        AksCompute.provisioning_configuration(agent_count=0)


def test_quota_is_enforced_and_reported(ws):
    big = ComputeTarget.create(ws, "big", AksCompute.provisioning_configuration(agent_count=2))
    assert list_usage(ws, "eastus") == [{"location": "eastus", "localName": "Standard PBS Family vCPUs",
                                         "currentValue": 12, "limit": 12}]
    over = ComputeTarget.create(ws, "over", AksCompute.provisioning_configuration(agent_count=1))
    assert over.provisioning_state == "Failed" and "QuotaExceeded" in over.provisioning_errors
    assert over.wait_for_completion() is False
    other = ComputeTarget.create(ws, "west", AksCompute.provisioning_configuration(location="westus2"))
    assert other.provisioning_state == "Succeeded" and big.fpgas == 2
    with pytest.raises(UserError, match="exists"):
        ComputeTarget.create(ws, "big", AksCompute.provisioning_configuration())


# -- deploy and consume -----------------------------------------------------------------------------
def test_a_model_converted_for_another_device_is_refused_and_nothing_is_recorded(converted, cluster):
    ws, src, _ = converted
    op = AccelOnnxConverter.convert_tf_model(ws, src, "images", "output_alias", device="brainwave-s10")
    assert op.wait_for_completion(timeout=600), op.get_log()
    assert op.result.manifest.device_preset == "brainwave-s10" and op.result.timing["preset"] == "brainwave-s10"
    img = Image.create("s10-image", [op.result], AccelContainerImage.image_configuration(), ws)
    try:
        assert cluster.device_preset == "arria10-pb6"
        with pytest.raises(UserError, match=r"fingerprint mismatch: .*converted for brainwave-s10 \(fingerprint "
                                            r"[0-9a-f]{12}\).*carry arria10-pb6.*device='arria10-pb6'"):
            Webservice.deploy_from_image(ws, "svc-s10", img, AksWebservice.deploy_configuration(), cluster)
        assert "svc-s10" not in [s.name for s in Webservice.list(ws)]
    finally:
        img.delete()
        op.result.delete()
    # the same configuration under another name (the Data Box Edge's Arria 10) is the same device
    assert timing.fingerprint(timing.preset("arria10-edge")) == timing.fingerprint(timing.preset("arria10-pb6"))


def test_deploy_score_and_lifecycle(built_image, cluster, tmp_path):
    img, ws = built_image, built_image.workspace
    svc = _deploy(img, cluster, "svc-a", num_replicas=2, auth_enabled=True)
    assert svc.state == "Healthy"
    uri = svc.scoring_uri
    assert uri.startswith("http://127.0.0.1:") and uri == f"http://127.0.0.1:{cluster.endpoints().grpc_port}"
    key = svc.get_keys()[0]
    data = samples.sample_images(1, seed=9)[0]
    ref = AcceleratorPackage(img.context / "package").run([data], [SOFTMAX, FEATURES])

    with client_from_service(svc) as c:
        one = c.score_numpy_arrays({"images": [data]}, outputs=SOFTMAX)
        both = c.score_numpy_arrays({"images": [data]}, outputs=[FEATURES, SOFTMAX])
        every = c.score_numpy_arrays({"images": [data]})
        np.testing.assert_array_equal(one, ref[SOFTMAX])
        np.testing.assert_array_equal(both[0], ref[FEATURES])
        assert set(every) == {SOFTMAX, FEATURES}
        f = tmp_path / "x.jpg"
        f.write_bytes(data)
        assert c.score_file(f, outputs=SOFTMAX).shape == (1000,)
        meta = c.get_model_metadata()
        assert meta["inputs"] == ["images"] and meta["numeric_format"] == "fp32"
        # the FPGA's own time, modeled from the package's timing report, in the response's trailing metadata
        report = img.models[0].timing
        c.score_numpy_arrays({"images": [data] * 3}, outputs=SOFTMAX)
        assert c.modeled_device_us == pytest.approx(timing.seconds(report, 3) * 1e6, abs=0.05)
        assert set(c.replica_us) == {"preprocess", "device", "heads"} and min(c.replica_us.values()) > 0   # measured
        assert timing.seconds(report, 3) > timing.seconds(report, 1) > 0

    # the stock TF Serving stub through the front end, with and without the route header, with and without the key
    np.testing.assert_array_equal(_stock_predict(uri, data, key), ref[SOFTMAX])
    np.testing.assert_array_equal(_stock_predict(uri, data, key, route="svc-a"), ref[SOFTMAX])
    with pytest.raises(grpc.RpcError) as e:
        _stock_predict(uri, data)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as e:                  # a model the cluster does not have: not the only one
        _stock_predict(uri, data, key, model="any")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND

    # the article's client code, unchanged: it strips the scheme and passes port 80
    address = uri[uri.find('/') + 2:].strip('/')
    with PredictionClient(address=address, port=80, use_ssl=uri.startswith("https"), access_token=key,
                          service_name=svc.name) as seed_client:
        np.testing.assert_array_equal(seed_client.score_numpy_arrays({"images": [data]}, outputs=SOFTMAX),
                                      ref[SOFTMAX])

    # what a real Kubernetes cluster would run for it
    import kubernetes_validate
    import yaml
    files = svc.kubernetes_manifests(tmp_path / "k8s")
    docs = [yaml.safe_load(p.read_text()) for p in files]
    assert [d["kind"] for d in docs] == ["Secret", "Deployment", "Service"]
    assert docs[1]["spec"]["template"]["spec"]["containers"][0]["image"] == img.image_location
    assert docs[0]["stringData"]["keys"].split() == list(svc.get_keys())
    for d in docs:
        kubernetes_validate.validate(d, "1.33.0", strict=True)

    # every FPGA of the cluster is taken: another deployment is refused like AKS does
    with pytest.raises(UserError, match=r"0/2 nodes are available: 2 Insufficient .*fpga.*svc-a"):
        Webservice.deploy_from_image(ws, "svc-b", img, AksWebservice.deploy_configuration(), cluster)
    assert [s.name for s in Webservice.list(ws)] == ["svc-a"]

    # re-attach from another process
    script = textwrap.dedent(f"""
        from accel_lib import Workspace, Webservice, client_from_service, samples
        svc = Webservice(Workspace({str(ws.path)!r}), "svc-a")
        c = client_from_service(svc)
        print(c.score_numpy_arrays({{"images": samples.sample_images(1, seed=9)}}, outputs={SOFTMAX!r}).argmax())
        c.close()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == str(ref[SOFTMAX].argmax()), out.stderr[-2000:]

    # clean-up order is enforced, naming the holder
    with pytest.raises(UserError, match="used by service svc-a"):
        img.delete()
    with pytest.raises(UserError, match="runs service svc-a"):
        cluster.delete()
    with pytest.raises(UserError, match="used by image small-image"):
        Model(ws, "small.1.accelonnx", version=1).delete()

    svc.delete()
    assert svc.state == "Deleted" and [s.name for s in Webservice.list(ws)] == []
    again = _deploy(img, cluster, "svc-b", num_replicas=2)     # FPGAs were freed
    again.delete()


def test_bad_requests_get_invalid_argument_and_the_replica_keeps_serving(built_image, cluster):
    svc = _deploy(built_image, cluster, "svc-bad")
    data = samples.sample_images(1)[0]
    with client_from_service(svc) as c:
        cases = [({"images": [data, b"\x89PNG broken"]}, SOFTMAX, "image 1 "),
                 ({"images": [data]}, "nope:0", "unknown output 'nope:0'"),
                 ({"pixels": [data]}, SOFTMAX, "unknown input 'pixels'"),
                 ({"images": np.zeros((1, 5), np.int32)}, SOFTMAX, "DT_STRING"),
                 ({"images": np.zeros((1, 32, 32, 3), np.float32)}, SOFTMAX, "float32 \\[N, 64, 64, 3\\]")]
        for inputs, outputs, msg in cases:
            with pytest.raises(grpc.RpcError) as e:
                c.score_numpy_arrays(inputs, outputs=outputs)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert __import__("re").search(msg, e.value.details()), e.value.details()
        pre = samples.sample_batch(2, 64, "BGR")                      # preprocessed input is accepted too
        assert c.score_numpy_arrays({"images": pre}, outputs=SOFTMAX).shape == (2, 1000)
        assert c.score_numpy_arrays({"images": [data]}, outputs=SOFTMAX).shape == (1, 1000)
    assert svc.state == "Healthy"
    assert svc.get_logs().count("INVALID_ARGUMENT") == len(cases)      # never retried
    big = samples.encode(samples.synthetic_image(4, 600, 800), "PNG")  # > 16 KiB
    with client_from_service(svc, max_message_mb=0.016) as small:
        with pytest.raises(grpc.RpcError) as e:
            small.score_numpy_arrays({"images": [big]}, outputs=SOFTMAX)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_client_rides_through_flashing_and_a_killed_replica_is_restarted(built_image, cluster):
    import psutil
    svc = Webservice.deploy_from_image(built_image.workspace, "svc-flash", built_image,
                                       AksWebservice.deploy_configuration(flash_seconds=3.0), cluster)
    assert svc.state == "Transitioning"
    with client_from_service(svc) as c:          # UNAVAILABLE while flashing, then an answer
        assert c.score_numpy_arrays({"images": samples.sample_images(1)}, outputs=SOFTMAX).shape == (1, 1000)
    assert "is being flashed" not in svc.get_logs()   # the refusals are not errors in the log
    svc.wait_for_deployment()
    assert svc.state == "Healthy" and svc.restart_count == 0
    pid = svc.replica_status()[0].pid
    psutil.Process(pid).kill()
    deadline = time.monotonic() + 30
    while svc.restart_count == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert svc.restart_count == 1 and svc.state == "Transitioning"      # flashing again
    svc.wait_for_deployment(timeout=60)
    (again,) = svc.replica_status()
    assert again.state == "Healthy" and again.pid != pid and again.last_exit == -9
    assert "killed by signal 9; restart 1" in svc.get_logs()


def test_unknown_service_and_missing_keys(built_image, cluster):
    with pytest.raises(UserError, match="no service 'ghost'"):
        Webservice(built_image.workspace, "ghost")
    keyed = _deploy(built_image, cluster, "svc-keyed")                  # keys by default on AKS, as Azure ML
    assert len(keyed.get_keys()) == 2 and all(len(k) >= 32 for k in keyed.get_keys())
    keyed.delete()
    svc = _deploy(built_image, cluster, "svc-nokey", auth_enabled=False)
    with pytest.raises(UserError, match="auth_enabled=True"):
        svc.get_keys()
    with pytest.raises(UserError, match="autoscale"):
        AksWebservice.deploy_configuration(autoscale_enabled=True)


def test_client_address_forms():
    from accel_lib.client import parse_address
    assert parse_address("http://127.0.0.1:5000") == "127.0.0.1:5000"
    assert parse_address("127.0.0.1:5000", 80) == "127.0.0.1:5000"           # the address's own port wins
    assert parse_address("myservice.eastus.cloudapp.azure.com", None, True) == "myservice.eastus.cloudapp.azure.com:443"
    assert parse_address("host") == "host:80" and parse_address("https://host/", 8443) == "host:8443"
    for bad in ("", "a:1,b:2", "host:http"):
        with pytest.raises(UserError):
            parse_address(bad)


def test_edge_device_runs_one_model_and_a_new_deployment_replaces_it(built_image, converted_q):
    from accel_lib import EdgeCompute
    ws = built_image.workspace
    before = list_usage(ws)
    edge = ComputeTarget.create(ws, "edge-box", EdgeCompute.provisioning_configuration(device_name="dbe-1"))
    try:
        assert edge.type == "edge" and edge.fpgas == 1
        assert list_usage(ws) == before          # an edge device uses no "Standard PBS Family vCPUs"
        with pytest.raises(UserError, match="one FPGA"):
            Webservice.deploy_from_image(ws, "e2", built_image, AksWebservice.deploy_configuration(num_replicas=2), edge)
        first = _deploy(built_image, edge, "edge-a")
        with pytest.raises(UserError, match="auth_enabled=True"):       # an edge device: no keys by default
            first.get_keys()
        img_q = Image.create("small-q-edge", [converted_q[2].result], AccelContainerImage.image_configuration(), ws)
        second = _deploy(img_q, edge, "edge-b")
        assert first.state == "Replaced" and second.state == "Healthy"
        assert "by service 'edge-b'" in Webservice(ws, "edge-a").error and second.error is None
        assert second.compute_type == "Edge" and "edge-b" not in [s.name for s in Webservice.list(ws, "AKS")]
        assert [s.name for s in Webservice.list(ws, compute_type="Edge")] == ["edge-a", "edge-b"]
        assert "service 'edge-a' replaced by 'edge-b'" in (first.log_dir / "replica-0.log").read_text()
        assert "service 'edge-a' replaced by 'edge-b'" in second.get_logs()
        with client_from_service(second) as c:
            assert c.get_model_metadata()["numeric_format"] == "ms-fp9"
        first.delete()
        second.delete()
        img_q.delete()
    finally:
        for s in Webservice.list(ws):
            if s.compute_name == "edge-box":
                s.delete()
        edge.delete()
