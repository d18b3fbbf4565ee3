"""The Open Inference Protocol on the front end, called by clients no one here wrote: tritonclient's gRPC and HTTP
clients (and plain requests for the JSON form), with keys and TLS; the answers equal TF Serving Predict's bit for
bit, and the errors follow the protocol's status mapping."""
import base64
import json
import uuid

import numpy as np
import pytest
import requests
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from helpers import deploy
from tritonclient.utils import InferenceServerException

from accel_lib import AksCompute, ComputeTarget, Webservice, client_from_service, samples
from accel_lib.fpga.cluster import specs as cluster_files

SOFTMAX = "classifier/resnet_v1_50/predictions/Softmax:0"


def _hostport(uri):
    return uri.split("://", 1)[1].split("/", 1)[0]


def _bytes_input(cls, images, name="images"):
    x = cls(name, [len(images)], "BYTES")
    x.set_data_from_numpy(np.array(images, dtype=np.object_))
    return x


def _predict(svc, images):
    with client_from_service(svc) as c:
        return c.score_numpy_arrays({"images": list(images)}, outputs=SOFTMAX)


def _headers(svc):
    return {"authorization": f"Bearer {svc.get_keys()[0]}"} if svc.auth_enabled else {}


def test_tritonclient_grpc_and_http_score_like_predict(built_image, cluster):
    svc = deploy(built_image, cluster, "svc-oip", auth_enabled=True, num_replicas=1)
    images = samples.sample_images(3, seed=8)
    ref = _predict(svc, images)
    head = _headers(svc)

    g = tgrpc.InferenceServerClient(_hostport(svc.scoring_uri))
    assert g.is_server_live() and g.is_server_ready() and g.is_model_ready(svc.name, headers=head)
    assert g.get_server_metadata().extensions == ["binary_tensor_data"]
    meta = g.get_model_metadata(svc.name, headers=head)
    assert meta.inputs[0].name == "images" and meta.inputs[0].datatype == "BYTES" and meta.platform
    assert SOFTMAX in [o.name for o in meta.outputs]
    out = g.infer(svc.name, [_bytes_input(tgrpc.InferInput, images)], outputs=[tgrpc.InferRequestedOutput(SOFTMAX)],
                  headers=head)
    np.testing.assert_array_equal(out.as_numpy(SOFTMAX), ref)                 # bit for bit
    g.close()

    h = thttp.InferenceServerClient(_hostport(svc.rest_uri))
    assert h.is_server_live() and h.is_model_ready(svc.name, headers=head)
    assert h.get_model_metadata(svc.name, headers=head)["inputs"][0]["datatype"] == "BYTES"
    out = h.infer(svc.name, [_bytes_input(thttp.InferInput, images)], headers=dict(head))   # binary both ways
    np.testing.assert_array_equal(out.as_numpy(SOFTMAX), ref)
    out = h.infer(svc.name, [_bytes_input(thttp.InferInput, images)], headers=dict(head),
                  outputs=[thttp.InferRequestedOutput(SOFTMAX, binary_data=False)])   # the answer as JSON
    np.testing.assert_array_equal(out.as_numpy(SOFTMAX), ref)
    h.close()

    body = {"inputs": [{"name": "images", "shape": [len(images)], "datatype": "BYTES",
                        "parameters": {"content_type": "base64"},
                        "data": [base64.b64encode(b).decode() for b in images]}],
            "outputs": [{"name": SOFTMAX}]}
    r = requests.post(svc.v2_uri + "/infer", json=body, headers=head, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()["outputs"][0]
    assert got["datatype"] == "FP32" and got["shape"] == list(ref.shape)
    np.testing.assert_array_equal(np.array(got["data"], np.float32).reshape(got["shape"]), ref)


def test_oip_errors_follow_the_status_mapping(built_image, cluster):
    svc = deploy(built_image, cluster, "svc-oip-err", auth_enabled=True, max_images=2)
    head = _headers(svc)
    image = samples.sample_images(1, seed=9)[0]
    g = tgrpc.InferenceServerClient(_hostport(svc.scoring_uri))
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED|missing or wrong key"):
        g.infer(svc.name, [_bytes_input(tgrpc.InferInput, [image])])
    with pytest.raises(InferenceServerException, match="no service 'nope'"):     # routed by the article's header
        g.infer("nope", [_bytes_input(tgrpc.InferInput, [image])],
                headers={**head, cluster_files.ROUTE_HEADER: cluster_files.route("nope")})
    with pytest.raises(InferenceServerException, match="version 1 only"):
        g.infer(svc.name, [_bytes_input(tgrpc.InferInput, [image])], model_version="7", headers=head)
    with pytest.raises(InferenceServerException, match="at most 2 per request"):
        g.infer(svc.name, [_bytes_input(tgrpc.InferInput, [image] * 3)], headers=head)
    with pytest.raises(InferenceServerException, match="unknown input 'pixels'"):
        g.infer(svc.name, [_bytes_input(tgrpc.InferInput, [image], name="pixels")], headers=head)
    with pytest.raises(InferenceServerException, match="could not be decoded as JPEG or PNG"):
        g.infer(svc.name, [_bytes_input(tgrpc.InferInput, [b"not a picture"])], headers=head)
    g.close()
    url = svc.v2_uri
    cases = [({}, {"inputs": []}, 401),                                     # no key: refused before the body
             (head, {"inputs": []}, 400),
             (head, {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": ["%%%"],
                                 "parameters": {"content_type": "base64"}}]}, 400),
             (head, {"inputs": [{"name": "images", "shape": [3], "datatype": "BYTES",
                                 "parameters": {"content_type": "base64"},
                                 "data": [base64.b64encode(image).decode()] * 3}]}, 413)]
    for headers, body, status in cases:
        r = requests.post(url + "/infer", data=json.dumps(body), headers=headers, timeout=60)
        assert r.status_code == status and "error" in r.json(), (body, r.status_code, r.text)
    assert requests.get(url.replace("svc-oip-err", "nope") + "/ready", headers=head, timeout=10).status_code == 404
    assert requests.get(url + "/versions/2", headers=head, timeout=10).status_code == 404
    r = requests.post(url + "/infer", data=b"{}x", headers={**head, "Inference-Header-Content-Length": "99"},
                      timeout=10)
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]
    ok = requests.post(url + "/infer", headers=head, timeout=60, json={
        "inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "parameters": {"content_type": "base64"},
                    "data": [base64.b64encode(image).decode()]}]})
    assert ok.status_code == 200, ok.text                                   # the service kept serving


def test_tritonclient_over_tls_with_keys(built_image, tmp_path):
    ws = built_image.workspace
    cfg = AksCompute.provisioning_configuration(agent_count=1).enable_ssl(leaf_domain_label="oip")
    target = ComputeTarget.create(ws, "aks-oip-" + uuid.uuid4().hex[:4], cfg)
    try:
        svc = deploy(built_image, target, "svc-oip-tls", auth_enabled=True)
        ca = str(target.ssl_certificate_file)
        images = samples.sample_images(2, seed=10)
        ref = _predict(svc, images)
        head = _headers(svc)
        g = tgrpc.InferenceServerClient(_hostport(svc.scoring_uri), ssl=True, root_certificates=ca)
        out = g.infer(svc.name, [_bytes_input(tgrpc.InferInput, images)], headers=head)
        np.testing.assert_array_equal(out.as_numpy(SOFTMAX), ref)
        g.close()
        h = thttp.InferenceServerClient(_hostport(svc.rest_uri), ssl=True, ssl_options={"ca_certs": ca})
        out = h.infer(svc.name, [_bytes_input(thttp.InferInput, images)], headers=dict(head))   # it adds to the dict
        np.testing.assert_array_equal(out.as_numpy(SOFTMAX), ref)
        h.close()
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(svc.v2_uri, headers=head, timeout=10)                # not trusted without the CA
    finally:
        for s in [s for s in Webservice.list(ws) if s.compute_name == target.name]:
            s.delete()
        target.delete()


def test_the_protocol_forms_are_checked_before_they_are_copied():
    from accel_lib.fpga.replica import oip
    from accel_lib.fpga.replica.protos import inference_pb2
    raw = oip.join_bytes([b"ab", b"", b"xyz"])
    assert oip.split_bytes(raw) == [b"ab", b"", b"xyz"]
    with pytest.raises(oip.ProtocolError, match="more than its raw contents hold"):
        oip.split_bytes(raw[:-1])
    with pytest.raises(oip.ProtocolError, match="end inside an element's length"):
        oip.split_bytes(raw + b"\x01")
    with pytest.raises(oip.ProtocolError, match="more than 2 images") as e:
        oip.split_bytes(raw, max_items=2)
    assert e.value.code == "RESOURCE_EXHAUSTED"
    req = inference_pb2.ModelInferRequest(model_name="m")
    req.inputs.add(name="images", datatype="BYTES", shape=[2, 1])
    req.raw_input_contents.append(oip.join_bytes([b"a", b"b"]))
    assert oip.infer_input(req, ["images"], 8, 1 << 20) == [b"a", b"b"]
    req.inputs[0].shape[:] = [3]
    with pytest.raises(oip.ProtocolError, match=r"holds 2 elements but its shape \[3\] needs 3"):
        oip.infer_input(req, ["images"], 8, 1 << 20)
    big = inference_pb2.ModelInferRequest()
    big.inputs.add(name="images", datatype="FP32", shape=[1 << 20, 224, 224, 3])       # no values: refused by shape
    with pytest.raises(oip.ProtocolError, match="max_request_mb"):
        oip.infer_input(big, ["images"], 8, 256 << 20)
    # REST: binary data after the JSON header, answered in binary or in JSON
    two = oip.join_bytes([b"ab", b"x"])
    head = json.dumps({"inputs": [{"name": "images", "shape": [2], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(two)}}]}).encode()
    body, how = oip.rest_infer_request(head + two, len(head), "svc", 8, 1 << 28)
    parsed = inference_pb2.ModelInferRequest.FromString(body)
    assert parsed.model_name == "svc" and oip.split_bytes(parsed.raw_input_contents[0]) == [b"ab", b"x"]
    with pytest.raises(oip.ProtocolError, match="no input claims"):
        oip.rest_infer_request(head + two + b"zz", len(head), "svc", 8, 1 << 28)
    resp = oip.infer_response(inference_pb2.ModelInferResponse, "svc", "7",
                              {"p": np.arange(6, dtype=np.float32).reshape(2, 3)})
    text, length = oip.rest_infer_reply(resp.SerializeToString(), {"binary": [], "id": "7"})
    assert length is None and json.loads(text)["outputs"][0]["data"] == [0, 1, 2, 3, 4, 5]
    blob, length = oip.rest_infer_reply(resp.SerializeToString(), {"binary": True, "id": ""})
    meta = json.loads(blob[:length])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 24
    assert np.frombuffer(blob[length:], "<f4").tolist() == [0, 1, 2, 3, 4, 5]


def test_an_unknown_model_is_not_found_even_with_one_service_and_no_shape_is_a_500(built_image, cluster):
    """The protocol's corners, called with stubs made from the protocols' own definitions (the .proto files that
    accel_lib/fpga/replica/protos compiles), without the route header: the model name alone must decide."""
    import grpc

    from accel_lib.fpga.replica import oip
    from accel_lib.fpga.cluster import routing
    from accel_lib.fpga.replica.protos import inference_pb2, serving_pb2
    svc = deploy(built_image, cluster, "svc-corner", num_replicas=1)        # the cluster's only service
    image = samples.sample_images(1, seed=11)[0]
    channel = grpc.insecure_channel(_hostport(svc.scoring_uri))
    calls = [(routing.MODEL_READY, inference_pb2.ModelReadyRequest(name="nope"), inference_pb2.ModelReadyResponse),
             (routing.MODEL_METADATA, inference_pb2.ModelMetadataRequest(name="nope"),
              inference_pb2.ModelMetadataResponse)]
    infer = inference_pb2.ModelInferRequest(model_name="nope")
    infer.inputs.add(name="images", datatype="BYTES", shape=[1])
    infer.raw_input_contents.append(oip.join_bytes([image]))
    calls.append((routing.INFER, infer, inference_pb2.ModelInferResponse))
    predict = serving_pb2.PredictRequest()
    predict.model_spec.name = "nope"
    calls.append((routing.PREDICT, predict, serving_pb2.PredictResponse))
    try:
        for method, request, reply in calls:
            stub = channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString(),
                                       response_deserializer=reply.FromString)
            with pytest.raises(grpc.RpcError) as e:
                stub(request, timeout=30)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND and "no service 'nope'" in e.value.details(), method
        # no model named (the article's client sends "default"): the documented single-service default
        ready = channel.unary_unary(routing.MODEL_READY, request_serializer=lambda m: m.SerializeToString(),
                                    response_deserializer=inference_pb2.ModelReadyResponse.FromString)
        assert ready(inference_pb2.ModelReadyRequest(name=cluster_files.DEFAULT_MODEL), timeout=30).ready
        assert ready(inference_pb2.ModelReadyRequest(name=svc.name), timeout=30).ready
    finally:
        channel.close()
    url = svc.v2_uri
    good = {"name": "images", "shape": [1], "datatype": "BYTES", "parameters": {"content_type": "base64"},
            "data": [base64.b64encode(image).decode()]}
    bad = [{"inputs": [{**good, "shape": [2 ** 63]}]},                     # a uint64, not an int64
           {"inputs": [{**good, "shape": [2 ** 64 + 5, 1]}]},
           {"inputs": [{**good, "shape": [-1]}]},
           {"inputs": [good], "parameters": [1]},
           {"inputs": [good], "outputs": {"name": SOFTMAX}},
           {"inputs": [good], "outputs": [{"name": SOFTMAX, "parameters": "binary"}]},
           {"inputs": [{**good, "name": "\ud800"}]},                       # a lone surrogate, escaped in the JSON
           {"inputs": [{**good, "datatype": "INT64", "data": [2 ** 70]}]}]
    for body in bad:
        r = requests.post(url + "/infer", data=json.dumps(body), timeout=60)
        assert r.status_code == 400 and r.headers["Content-Type"].startswith("application/json"), (body, r.text)
        assert "error" in r.json(), r.text
    r = requests.post(url + "/infer", data=json.dumps({"inputs": [{**good, "shape": [2 ** 63 - 1]}]}), timeout=60)
    assert r.status_code in (400, 413) and "error" in r.json(), r.text   # valid, but more than the request holds
    assert requests.get(url.replace("svc-corner", "nope") + "/ready", timeout=10).status_code == 404
    ok = requests.post(url + "/infer", json={"inputs": [good]}, timeout=60)
    assert ok.status_code == 200, ok.text                                 # the service kept serving


def test_a_replica_answers_the_protocol_over_http_itself_with_its_key_and_limits(built_image, tmp_path):
    """What KServe's predictor is called on (PROTOCOL=v2): a replica started as the image starts it, on TCP with
    ``--rest-port``: tritonclient's HTTP client scores as the package does in-process; the key, the model's name
    and the body's size are checked before the body is read."""
    import os
    import re
    import subprocess
    import sys
    import time

    from accel_lib.fpga.cluster import specs
    from accel_lib.fpga.replica import server
    from accel_lib.fpga.replica.limits import ServiceLimits
    from accel_lib.fpga.device.package import AcceleratorPackage
    keys = tmp_path / "keys"
    keys.write_text("k-right\n")
    cfg = specs.ServiceConfig(limits=ServiceLimits(max_message_mb=0.5))
    svc = specs.ServiceSpec(name="svc-rest", context=str(built_image.context), log_dir=str(tmp_path),
                              replicas=[specs.ReplicaSpec(idx=0, node=0)], config=cfg,
                              settled=specs.Settled(generation=1, runtime="process"), keys=["k-right"])
    cmd = server.command(sys.executable, svc, port=0, rest_port=0, keys_file=keys, threads=1)
    log = open(tmp_path / "replica.log", "w+")
    proc = subprocess.Popen(cmd, cwd=built_image.context, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(built_image.context)})
    try:
        deadline = time.monotonic() + 120
        while not (m := re.search(r"HTTP 127\.0\.0\.1:(\d+)", (tmp_path / "replica.log").read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "replica.log").read_text()
            time.sleep(0.1)
        url = f"127.0.0.1:{m.group(1)}"
        assert requests.get(f"http://{url}/v2/health/live", timeout=10).json() == {"live": True}
        while requests.get(f"http://{url}/v2/health/ready", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the replica did not become ready over HTTP"
            time.sleep(0.2)
        images = samples.sample_images(2, seed=31)
        ref = AcceleratorPackage(built_image.context / "package").run(images, [SOFTMAX])[SOFTMAX]
        c = thttp.InferenceServerClient(url)
        got = c.infer("svc-rest", [_bytes_input(thttp.InferInput, images)],
                      headers={"authorization": "Bearer k-right"}).as_numpy(SOFTMAX)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
        meta = c.get_model_metadata("svc-rest", headers={"authorization": "Bearer k-right"})
        assert meta["name"] == "svc-rest" and meta["inputs"][0]["name"] == "images"
        with pytest.raises(InferenceServerException, match="wrong key"):
            c.infer("svc-rest", [_bytes_input(thttp.InferInput, images)], headers={"authorization": "Bearer no"})
        with pytest.raises(InferenceServerException, match="serves model 'svc-rest', not 'other'"):
            c.infer("other", [_bytes_input(thttp.InferInput, images)], headers={"authorization": "Bearer k-right"})
        c.close()
        big = requests.post(f"http://{url}/v2/models/svc-rest/infer", data=b"{" + b" " * 600_000 + b"}",
                            headers={"Authorization": "Bearer k-right"}, timeout=30)
        assert big.status_code == 413 and "max_message_mb" in big.json()["error"]
        assert requests.get(f"http://{url}/v2/models/svc-rest", timeout=10).status_code == 401
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
        log.close()
