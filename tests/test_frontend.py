"""The cluster like AKS: the front end (routing, keys, TLS, REST, balancing, retries), supervised replicas, limits."""
import base64
import ssl
import struct
import threading
import time
import zlib

import grpc
import numpy as np
import psutil
import pytest
import requests

from accel_lib import (AccelContainerImage, AksCompute, AksWebservice, ComputeTarget, Image, UserError, Webservice, client_from_service, samples)
from accel_lib.fpga.cluster import supervisor
from accel_lib.fpga.cluster.specs import STATUS_FILE, TLS_KEY_FILE
from accel_lib.fpga.device import timing
from accel_lib.fpga.replica import trailers
from accel_lib.fpga.device.package import AcceleratorPackage
from accel_lib.deployment import schedule
from helpers import deploy as _deploy

SOFTMAX = "classifier/resnet_v1_50/predictions/Softmax:0"


def _stub(address, credentials=None):
    from tensorflow_serving.apis import prediction_service_pb2_grpc
    target = address.split("://")[-1]
    ch = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    return ch, prediction_service_pb2_grpc.PredictionServiceStub(ch)


def _request(images, model="", outputs=(SOFTMAX,)):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    req.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    req.output_filter.extend(outputs)
    return req


def _route(name):
    return [("x-ms-aml-grpc-service-route", f"/api/v1/service/{name}")]


def _png_header(width, height):
    """A PNG whose header claims width x height pixels, with almost no data: a decompression bomb's shape."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# -- pure parts, no process ---------------------------------------------------------------------------
def test_schedule_takes_free_fpgas_and_refuses_like_kubernetes():
    assert schedule(3, {}, 2) == ([0, 1], [])
    assert schedule(3, {0: "a"}, 2) == ([1, 2], [])
    with pytest.raises(UserError, match=r"0/3 nodes are available: 2 Insufficient microsoft.com/fpga.*\(a, b\)"):
        schedule(3, {0: "a", 2: "b"}, 2)
    assert schedule(1, {0: "old"}, 1, edge=True) == ([0], ["old"])      # one model per edge FPGA: it replaces
    with pytest.raises(UserError, match="one FPGA"):
        schedule(1, {}, 2, edge=True)


def test_back_off_is_immediate_first_then_doubles_to_a_cap():
    waits = [supervisor.backoff(n) for n in range(1, 10)]
    assert waits[:4] == [0.0, supervisor.BACKOFF_FIRST, 2 * supervisor.BACKOFF_FIRST, 4 * supervisor.BACKOFF_FIRST]
    assert max(waits) == supervisor.BACKOFF_MAX and waits == sorted(waits)


def test_generated_protos_match_their_sources(tmp_path):
    import subprocess
    import sys

    from accel_lib.fpga.replica.protos import build
    r = subprocess.run([sys.executable, "-m", "accel_lib.fpga.replica.protos.build", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)        # its own process: no TensorFlow there
    assert r.returncode == 0, r.stderr[-2000:]
    made = sorted(tmp_path.glob("*.py"))
    assert [p.name for p in made] == ["inference_pb2.py", "inference_pb2_grpc.py", "serving_pb2.py",
                                      "serving_pb2_grpc.py", "tensorflow_pb2.py"]
    for p in made:
        assert p.read_text() == (build.HERE / p.name).read_text(), f"{p.name}: run python -m {build.__name__}"


def test_enable_ssl_is_validated(tmp_path):
    cfg = AksCompute.provisioning_configuration()
    with pytest.raises(UserError, match="leaf_domain_label"):
        cfg.enable_ssl()
    with pytest.raises(UserError, match="ssl_cname"):
        cfg.enable_ssl(ssl_cert_pem_file="c.pem", ssl_key_pem_file="k.pem")
    with pytest.raises(UserError, match="not both"):
        cfg.enable_ssl(ssl_cert_pem_file="c.pem", leaf_domain_label="x")
    with pytest.raises(UserError, match="no file"):
        cfg.enable_ssl(ssl_cert_pem_file=str(tmp_path / "c.pem"), ssl_key_pem_file="k.pem", ssl_cname="a.b")
    assert cfg.enable_ssl(leaf_domain_label="myservice").ssl == {"leaf_domain_label": "myservice"}


# -- the front end ------------------------------------------------------------------------------------
def test_replicas_are_light_and_share_the_cores(built_image, cluster):
    svc = _deploy(built_image, cluster, "svc-light", num_replicas=2)
    for r in svc.replica_status():
        maps = open(f"/proc/{r.pid}/maps").read()
        assert "tensorflow" not in maps, "a replica must not load TensorFlow"
        assert psutil.Process(r.pid).memory_info().rss < 1 << 30
    threads = max(1, min(6, (psutil.cpu_count() or 1) // 2))
    logs = svc.get_logs()
    assert f"{threads} CPU thread(s)" in logs
    assert "\x1b[" not in logs and "telemetry" not in logs, "a learner's log: plain text, no ONNX Runtime warnings"


def test_routing_by_header_by_model_name_and_to_the_only_service(built_image, cluster):
    a = _deploy(built_image, cluster, "svc-a")
    b = _deploy(built_image, cluster, "svc-b", auth_enabled=True)
    assert a.scoring_uri == b.scoring_uri                        # one address per cluster
    data = samples.sample_images(1, seed=4)[0]
    ref = AcceleratorPackage(built_image.context / "package").run([data], [SOFTMAX])[SOFTMAX]
    key = b.get_keys()[1]                                       # the secondary key works too
    ch, stub = _stub(a.scoring_uri)
    with ch:
        def ask(model="", md=()):
            import tensorflow as tf
            return tf.make_ndarray(stub.Predict(_request([data], model), timeout=30, metadata=list(md)).outputs[SOFTMAX])
        np.testing.assert_array_equal(ask(md=_route("svc-a")), ref)
        np.testing.assert_array_equal(ask(md=_route("svc-b") + [("authorization", f"Bearer {key}")]), ref)
        np.testing.assert_array_equal(ask(model="svc-a"), ref)                  # no header: model_spec.name
        for md, code, msg in [((), "NOT_FOUND", "x-ms-aml-grpc-service-route"),
                              (_route("ghost"), "NOT_FOUND", r"^no service 'ghost' on this cluster\.$"),
                              (_route("svc-b"), "UNAUTHENTICATED", "Bearer"),
                              (_route("svc-b") + [("authorization", "Bearer wrong")], "UNAUTHENTICATED", "Bearer")]:
            with pytest.raises(grpc.RpcError) as e:
                ask(md=md)
            assert e.value.code().name == code and __import__("re").search(msg, e.value.details()), e.value.details()
        b.delete()
        np.testing.assert_array_equal(ask(), ref)                 # the only service left takes unrouted calls
    assert "Predict ok" in a.get_logs()


def test_rest_api_like_tensorflow_serving(built_image, cluster):
    svc = _deploy(built_image, cluster, "svc-rest", auth_enabled=True, max_message_mb=0.5)
    key = svc.get_keys()[0]
    auth = {"Authorization": f"Bearer {key}"}
    data = samples.sample_images(2, seed=5)
    ref = AcceleratorPackage(built_image.context / "package").run(data)
    b64 = [{"b64": base64.b64encode(d).decode()} for d in data]
    url = svc.rest_uri
    base = url.rsplit(":", 1)[0]
    assert url.endswith("/v1/models/svc-rest:predict")

    assert requests.get(base, headers=auth, timeout=30).json()["model_version_status"][0]["state"] == "AVAILABLE"
    meta = requests.get(base + "/metadata", headers=auth, timeout=30).json()
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert list(sig["inputs"]) == ["images"] and SOFTMAX in sig["outputs"]

    r = requests.post(url, json={"instances": b64}, headers=auth, timeout=30)
    rows = r.json()["predictions"]
    assert len(rows) == 2 and set(rows[0]) == set(ref)
    report = built_image.models[0].timing                      # the FPGA's own time, modeled, as a header
    assert float(r.headers[trailers.MODELED_DEVICE_US]) == pytest.approx(timing.seconds(report, 2) * 1e6, abs=0.05)
    np.testing.assert_array_equal(np.array([r[SOFTMAX] for r in rows], np.float32), ref[SOFTMAX])
    cols = requests.post(url, json={"inputs": {"images": b64}}, headers=auth, timeout=30).json()["outputs"]
    np.testing.assert_array_equal(np.array(cols[SOFTMAX], np.float32), ref[SOFTMAX])

    for body, headers, status, msg in [
            ({"instances": b64}, {}, 401, "Bearer"),
            ({"instances": b64}, {"Authorization": "Bearer nope"}, 401, "Bearer"),
            ({"instances": [{"b64": "%%%"}]}, auth, 400, "base64"),
            ({"instances": [{"b64": base64.b64encode(b"not an image").decode()}]}, auth, 400, "image 0"),
            ({"rows": []}, auth, 400, "instances"),
            ({"inputs": {"pixels": b64}}, auth, 400, "pixels"),
            ({"instances": [{"b64": base64.b64encode(b"x" * 600_000).decode()}]}, auth, 413, "at most")]:
        r = requests.post(url, json=body, headers=headers, timeout=30)
        assert r.status_code == status and msg in r.json()["error"], (status, r.text[:300])
    r = requests.post(url, data=b"{not json", headers=auth, timeout=30)
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    r = requests.post(base.replace("svc-rest", "ghost") + ":predict", json={"instances": b64}, timeout=30)
    assert r.status_code == 404 and r.json()["error"] == "no service 'ghost' on this cluster."   # no list of others
    assert svc.state == "Healthy"


def test_a_call_past_the_services_scoring_timeout_fails_as_deadline_exceeded(built_image, cluster):
    with pytest.raises(UserError, match="limit scoring_timeout_ms must be a whole number above 0"):
        AksWebservice.deploy_configuration(scoring_timeout_ms=0)
    svc = _deploy(built_image, cluster, "svc-timeout", scoring_timeout_ms=1)   # a ResNet-50 takes far longer
    images = samples.sample_images(2, seed=3)
    ch, stub = _stub(svc.scoring_uri)
    with ch:
        with pytest.raises(grpc.RpcError) as e:
            stub.Predict(_request(images), metadata=_route("svc-timeout"), timeout=60)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "'svc-timeout' did not answer within its scoring_timeout_ms (1 ms)" in e.value.details()
    r = requests.post(svc.rest_uri, json={"instances": [{"b64": base64.b64encode(images[0]).decode()}]}, timeout=60)
    assert r.status_code == 504 and "scoring_timeout_ms (1 ms)" in r.json()["error"]
    assert svc.state == "Healthy"                          # the call timed out, not the replica
    svc.delete()


def test_rest_answers_503_while_the_fpga_is_flashed(built_image, cluster):
    svc = Webservice.deploy_from_image(built_image.workspace, "svc-slow", built_image,
                                       AksWebservice.deploy_configuration(flash_seconds=30.0, auth_enabled=False), cluster)
    r = requests.post(svc.rest_uri, json={"instances": [{"b64": base64.b64encode(b"x").decode()}]}, timeout=30)
    assert r.status_code == 503 and "no ready replica" in r.json()["error"]
    assert requests.get(svc.rest_uri.rsplit(":", 1)[0], timeout=30).json()["model_version_status"][0]["state"] \
        == "LOADING"


def test_tls_with_a_generated_certificate(built_image, tmp_path):
    ws = built_image.workspace
    cfg = AksCompute.provisioning_configuration(agent_count=1).enable_ssl(leaf_domain_label="myservice")
    target = ComputeTarget.create(ws, "aks-tls", cfg)
    try:
        svc = _deploy(built_image, target, "svc-tls", auth_enabled=True)
        assert svc.scoring_uri.startswith("https://127.0.0.1:") and svc.rest_uri.startswith("https://")
        pem = target.ssl_certificate_pem
        assert b"BEGIN CERTIFICATE" in pem
        from cryptography import x509
        ca = x509.load_pem_x509_certificate(pem)                           # what clients trust: a CA that can
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0   # sign no CA
        served = x509.load_pem_x509_certificate(
            ssl.get_server_certificate(("127.0.0.1", int(svc.scoring_uri.rsplit(":", 1)[1]))).encode())
        assert not served.extensions.get_extension_for_class(x509.BasicConstraints).value.ca     # a leaf
        assert served.issuer == ca.subject
        names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert any(n.endswith(".eastus.cloudapp.azure.com") and n.startswith("myservice")
                   for n in names.get_values_for_type(x509.DNSName))
        assert oct((target.run_dir / TLS_KEY_FILE).stat().st_mode & 0o777) == "0o600"
        data = samples.sample_images(1, seed=6)[0]
        ref = AcceleratorPackage(built_image.context / "package").run([data], [SOFTMAX])[SOFTMAX]
        with client_from_service(svc) as c:
            np.testing.assert_array_equal(c.score_numpy_arrays({"images": [data]}, outputs=SOFTMAX), ref)
        key = svc.get_keys()[0]
        ch, stub = _stub(svc.scoring_uri, grpc.ssl_channel_credentials(root_certificates=pem))
        with ch:
            stub.Predict(_request([data]), timeout=30,
                         metadata=_route("svc-tls") + [("authorization", f"Bearer {key}")])
        ch, stub = _stub(svc.scoring_uri)                                    # plain text to the TLS port
        with ch, pytest.raises(grpc.RpcError) as e:
            stub.Predict(_request([data]), timeout=5, metadata=_route("svc-tls"))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        (tmp_path / "ca.pem").write_bytes(pem)
        r = requests.post(svc.rest_uri, json={"instances": [{"b64": base64.b64encode(data).decode()}]},
                          headers={"Authorization": f"Bearer {key}"}, verify=str(tmp_path / "ca.pem"), timeout=30)
        np.testing.assert_array_equal(np.array([p[SOFTMAX] for p in r.json()["predictions"]], np.float32), ref)
        with client_from_service(svc) as c:                                   # still serving
            c.score_numpy_arrays({"images": [data]}, outputs=SOFTMAX)
    finally:
        for s in Webservice.list(ws):
            if s.compute_name == "aks-tls":
                s.delete()
        target.delete()


def test_bad_input_battery_each_with_its_status_and_the_service_keeps_serving(built_image, cluster):
    svc = _deploy(built_image, cluster, "svc-bad", auth_enabled=True, max_images=4, max_message_mb=1)
    key = svc.get_keys()[0]
    good = samples.sample_images(1, seed=7)[0]
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    def req(images=None, inputs=None, outputs=(SOFTMAX,)):
        r = predict_pb2.PredictRequest()
        for k, v in (inputs if inputs is not None else {"images": tf.make_tensor_proto(images)}).items():
            r.inputs[k].CopyFrom(v)
        r.output_filter.extend(outputs)
        return r

    mismatch = tf.make_tensor_proto([good, good])
    mismatch.string_val.pop()                                       # shape [2], one value
    cases = [
        ("corrupt", req([good[:200]]), "INVALID_ARGUMENT", "image 0"),
        ("empty", req([b""]), "INVALID_ARGUMENT", "image 0"),
        ("text", req([b"hello, this is text"]), "INVALID_ARGUMENT", "image 0"),
        ("huge-dimension PNG", req([_png_header(8000, 8000)]), "INVALID_ARGUMENT", "64,000,000 pixels, over the limit"),
        ("bomb PNG", req([_png_header(100_000, 100_000)]), "INVALID_ARGUMENT", "image 0"),
        ("unknown input", req(inputs={"pixels": tf.make_tensor_proto([good])}), "INVALID_ARGUMENT", "unknown input"),
        ("unknown output", req([good], outputs=["nope:0"]), "INVALID_ARGUMENT", "unknown output 'nope:0'"),
        ("wrong dtype", req(inputs={"images": tf.make_tensor_proto(np.zeros((1, 3), np.int32))}), "INVALID_ARGUMENT",
         "DT_STRING"),
        ("shape/value mismatch", req(inputs={"images": mismatch}), "INVALID_ARGUMENT", "holds 1 strings"),
        ("no inputs", req(inputs={}), "INVALID_ARGUMENT", "exactly one input"),
        ("too many images", req([good] * 5), "RESOURCE_EXHAUSTED", "at most 4"),
        ("oversize", req([good + b"\0" * 1_100_000]), "RESOURCE_EXHAUSTED", "1048576"),   # gRPC's own limit: 1 MB
    ]
    ch, stub = _stub(svc.scoring_uri)
    md = _route("svc-bad") + [("authorization", f"Bearer {key}")]
    with ch:
        for what, request, code, msg in cases:
            with pytest.raises(grpc.RpcError) as e:
                stub.Predict(request, timeout=30, metadata=md)
            assert e.value.code().name == code, (what, e.value.details())
            assert msg in e.value.details(), (what, e.value.details())
            assert stub.Predict(req([good]), timeout=30, metadata=md).outputs[SOFTMAX].tensor_shape.dim[1].size == 1000
        for what, bad_md in [("no key", _route("svc-bad")),
                             ("wrong key", _route("svc-bad") + [("authorization", "Bearer x")])]:
            with pytest.raises(grpc.RpcError) as e:
                stub.Predict(req([good]), timeout=30, metadata=bad_md)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, what
        with pytest.raises(grpc.RpcError) as e:                       # the client's deadline is respected
            stub.Predict(req([good] * 4), timeout=0.001, metadata=md)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert svc.state == "Healthy" and svc.restart_count == 0


def _load(client, data, n, clients, errors, done):
    """``n`` requests from ``clients`` threads; errors collected, completed count in done[0]."""
    lock = threading.Lock()
    left = [n]

    def work():
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            try:
                out = client.score_numpy_arrays({"images": [data]}, outputs=SOFTMAX, timeout=30)
                assert out.shape == (1, 1000)
            except Exception as e:  # noqa: BLE001 - every failure is counted
                with lock:
                    errors.append(repr(e)[:300])
            with lock:
                done[0] += 1
    threads = [threading.Thread(target=work) for _ in range(clients)]
    for t in threads:
        t.start()
    return threads


def test_load_through_the_front_end_and_a_replica_killed_mid_load(built_image, cluster):
    svc = _deploy(built_image, cluster, "svc-load", num_replicas=2, flash_seconds=0.5)
    data = samples.sample_images(1, seed=8)[0]
    with client_from_service(svc, retry_seconds=0) as client:        # no client retries: the front end's own
        errors, done = [], [0]
        for t in _load(client, data, 2000, 16, errors, done):
            t.join(300)
        assert done[0] == 2000 and errors == []
        served = [svc.get_logs().split("--- replica ")[i].count("Predict ok") for i in (1, 2)]
        assert min(served) > 400, served                              # both replicas took a fair share

        errors, done = [], [0]
        threads = _load(client, data, 1000, 16, errors, done)
        while done[0] < 200:
            time.sleep(0.01)
        victim = svc.replica_status()[0].pid
        psutil.Process(victim).kill()
        for t in threads:
            t.join(300)
        assert done[0] == 1000 and errors == [], errors[:3]
    svc.wait_for_deployment(timeout=60)
    assert svc.restart_count == 1 and [r.state for r in svc.replica_status()] == ["Healthy", "Healthy"]


def test_a_replica_that_cannot_load_is_failed_not_restarted(converted, cluster):
    ws, src, op = converted
    img = Image.create("broken-image", [op.result], AccelContainerImage.image_configuration(), ws)
    try:
        (img.context / "package" / "device.onnx").write_bytes(b"not an onnx graph")
        svc = Webservice.deploy_from_image(ws, "svc-broken", img, AksWebservice.deploy_configuration(), cluster)
        with pytest.raises(UserError, match="cannot load its model"):
            svc.wait_for_deployment(timeout=60)
        assert svc.state == "Failed" and svc.restart_count == 0
        assert "loading failed" in svc.get_logs() and "not restarted" in svc.get_logs()
        svc.delete()
    finally:
        img.delete()


def test_a_replica_that_keeps_crashing_backs_off(built_image, cluster):
    svc = _deploy(built_image, cluster, "svc-crash", flash_seconds=0)
    for n in range(1, 4):
        (r,) = svc.replica_status()
        psutil.Process(r.pid).kill()
        deadline = time.monotonic() + 30
        while svc.restart_count < n and time.monotonic() < deadline:
            time.sleep(0.02)
        if n < 3:
            svc.wait_for_deployment(timeout=60)
    assert svc.restart_count == 3
    assert svc.replica_status()[0].state == "CrashLoopBackOff" and svc.state == "Unhealthy"
    logs = svc.get_logs()
    assert "restart 1 in 0 s" in logs and "restart 2 in 1 s" in logs and "restart 3 in 2 s" in logs
    deadline = time.monotonic() + 60                                 # after the back-off it serves again
    while svc.state != "Healthy" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert svc.state == "Healthy" and svc.restart_count == 3


def test_the_cluster_process_owns_its_replicas(built_image, cluster):
    svc = _deploy(built_image, cluster, "svc-owned", num_replicas=2)
    front = psutil.Process(cluster.endpoints().pid)
    helpers = front.children(recursive=True)                        # replicas, the REST pool, its tracker
    assert {r.pid for r in svc.replica_status()} <= {p.pid for p in helpers}
    front.kill()                                                    # the cluster process dies ...
    gone, alive = psutil.wait_procs(helpers, timeout=15)
    assert not alive, [" ".join(p.cmdline()[:4]) for p in alive]    # ... and everything it started follows it
    assert svc.state == "Unhealthy" and svc.scoring_uri is None
    with pytest.raises(UserError, match="restart"):
        client_from_service(svc)
    assert (cluster.run_dir / STATUS_FILE).exists()                  # the killed process could not remove its report
    cluster.restart()                                               # its spec brings the services back
    svc.wait_for_deployment(timeout=60)                             # on the new process's word, not the old report
    ch, stub = _stub(svc.scoring_uri)
    with ch:                                                        # a stock stub: no retry hides an UNAVAILABLE
        assert stub.Predict(_request(samples.sample_images(1), svc.name), timeout=30).outputs[SOFTMAX].tensor_shape


def test_deleting_the_cluster_stops_every_process(built_image):
    ws = built_image.workspace
    target = ComputeTarget.create(ws, "aks-gone", AksCompute.provisioning_configuration(agent_count=1))
    svc = _deploy(built_image, target, "svc-gone")
    procs = [psutil.Process(target.endpoints().pid)] + [psutil.Process(r.pid) for r in svc.replica_status()]
    with pytest.raises(UserError, match="runs service svc-gone"):
        target.delete()
    svc.delete()
    target.delete()
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs)
    assert not target.run_dir.exists()


def test_the_replicas_socket_folder_fits_a_sockets_path_wherever_tmpdir_is(tmp_path, monkeypatch):
    """A Unix socket's path holds at most 107 bytes: under a deep $TMPDIR the folder is made in /tmp instead."""
    import os

    from accel_lib.fpga.cluster import specs
    deep = tmp_path / ("a-deep-temporary-folder-" * 4)
    deep.mkdir()
    monkeypatch.setenv("TMPDIR", str(deep))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)          # read $TMPDIR again
    folder = specs.make_socket_dir()
    try:
        assert not folder.is_relative_to(deep) and (folder.stat().st_mode & 0o777) == 0o700
        assert len(os.fsencode(folder / specs.LONGEST_SOCKET)) <= specs.SOCKET_PATH_LIMIT
        assert list(deep.iterdir()) == []                   # the deep one it tried is not left behind
    finally:
        folder.rmdir()
