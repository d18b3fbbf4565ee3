"""The generated Kubernetes manifests on real containers: podman's Kubernetes runner (``podman kube play``) runs the
Deployment of a deployed service from the image built for it, unchanged; clients no one here wrote (TF Serving's
own stub, tritonclient over the Open Inference Protocol) score through the pod as the package does in-process; a
killed container is brought back by the pod's restart policy; ``kube down`` leaves nothing.

A KServe InferenceService runs as the Pod KServe makes of its predictor and answers the Open Inference Protocol
over HTTP and gRPC. What the runner lacks is said, not bent around: it publishes a container's port on the host (there is no Service),
runs no probes and no scheduler, and does not enforce ``microsoft.com/fpga``. Debian's podman 4.3 cannot mount a
Secret as a volume (its ``kube play`` panics), so there the keyed manifests are reported skipped, with the reason.
Needs podman that can start containers; skipped, saying why, without (failed where .ci/run requires containers).
"""
import os
import signal
import socket
import time

import grpc
import numpy as np
import pytest
from helpers import container_engine, deploy

from accel_lib import AccelContainerImage, Image, kubernetes, samples
from accel_lib.fpga.cluster import containers, podman, running
from accel_lib.fpga.device.package import AcceleratorPackage

SOFTMAX = "classifier/resnet_v1_50/predictions/Softmax:0"
ADDRESS = f"127.0.0.1:{kubernetes.PORT}"          # where kube play publishes the containerPort
WAIT = 180                                          # a pod's start: the replica loads and flashes its FPGA


@pytest.fixture(scope="module")
def engine():
    eng = container_engine()[0]
    if containers.engine_name(eng) != "podman":
        pytest.skip(f"only podman runs Kubernetes YAML (podman kube play); the engine here is {eng}")
    return eng


@pytest.fixture(scope="module")
def kube_image(engine, converted):
    """An image of the small converted model, built into a container image (once for the module), then removed."""
    ws, src, op = converted
    img = Image.create("small-kube", [op.result], AccelContainerImage.image_configuration(), ws)
    img.wait_for_creation()
    assert containers.image_exists(engine, img.container_tag)
    yield img
    img.delete()


@pytest.fixture
def play(engine, tmp_path):
    """play(service) runs its manifests; whatever was played is taken down afterwards, and must leave nothing."""
    for port in (kubernetes.PORT, kubernetes.REST_PORT):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.fail(f"port {port} on this machine is taken: podman kube play publishes the manifests' "
                            "containerPort there; stop what listens on it")
    played = []

    def run(svc, flavour="deployment"):
        folder = tmp_path / svc.name
        f = kubernetes.play(svc.kubernetes_manifests(folder, flavour=flavour), folder, engine)
        played.append(f)
        return f
    yield run
    for f in played:
        kubernetes.down(f, engine)
    assert podman.pods(engine, label=kubernetes.MANAGED_LABEL) == []
    assert [s for s in podman.secrets(engine) if s.endswith("-keys")] == []


def _serving(deadline):
    """Wait (bounded) until the pod's replica answers gRPC health with SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with grpc.insecure_channel(ADDRESS) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"the pod's replica did not serve on {ADDRESS} in time"
            time.sleep(0.5)


def _tf_serving_predict(name, images, key=None):
    """TF Serving's own client: its generated stub and TensorFlow's tensor protos."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    req.inputs["images"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string, shape=[len(images)]))
    req.output_filter.append(SOFTMAX)
    with grpc.insecure_channel(ADDRESS) as ch:
        resp = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(
            req, timeout=60, metadata=[("authorization", f"Bearer {key}")] if key else None)
    return tf.make_ndarray(resp.outputs[SOFTMAX])


def _triton_infer(name, images, key=None):
    import tritonclient.grpc as tgrpc
    c = tgrpc.InferenceServerClient(ADDRESS)
    try:
        x = tgrpc.InferInput("images", [len(images)], "BYTES")
        x.set_data_from_numpy(np.array(images, dtype=object))
        return c.infer(name, [x], headers={"authorization": f"Bearer {key}"} if key else None).as_numpy(SOFTMAX)
    finally:
        c.close()


def test_the_deployment_runs_scores_comes_back_after_a_kill_and_goes(kube_image, cluster, play, engine):
    svc = deploy(kube_image, cluster, "svc-kube", num_replicas=1)
    f = play(svc)
    (pod,) = podman.pods(engine, label=f"app={svc.name}")
    (name, c), = podman.pod_containers(engine, pod).items()
    assert c["state"] == "running"
    _serving(time.monotonic() + WAIT)
    images = samples.sample_images(2, seed=21)
    ref = AcceleratorPackage(kube_image.context / "package").run(images, [SOFTMAX])[SOFTMAX]
    got = _tf_serving_predict(svc.name, images)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)          # another process, the same package
    np.testing.assert_array_equal(_triton_infer(svc.name, images), got)

    os.kill(c["pid"], signal.SIGKILL)                                   # as a crash would
    deadline = time.monotonic() + WAIT
    while True:
        now = podman.pod_containers(engine, pod).get(name, {})
        if now.get("restarts", 0) >= 1 and now.get("state") == "running":
            break
        assert time.monotonic() < deadline, f"the killed container was not restarted by the pod's policy: {now}"
        time.sleep(0.5)
    _serving(deadline)
    np.testing.assert_array_equal(_tf_serving_predict(svc.name, images), got)

    kubernetes.down(f, engine)
    assert podman.pods(engine, label=f"app={svc.name}") == []
    assert not [n for n in running.labelled(engine, label=f"app={svc.name}")]


def test_the_keyed_manifests_check_the_secrets_key_where_the_runner_mounts_it(kube_image, cluster, play, engine):
    svc = deploy(kube_image, cluster, "svc-kube-keys", num_replicas=1, auth_enabled=True)
    try:
        play(svc)
    except containers.EngineError as e:
        if "VolumeFromSecret" not in str(e):
            raise
        pytest.skip(f"podman {containers.engine_version(engine)}'s kube play cannot mount a Secret as a volume (it "
                    "panics in VolumeFromSecret: it is given no secrets manager); the manifests keep the volume a "
                    "cluster mounts, and the keyless service's run is tested above")
    _serving(time.monotonic() + WAIT)
    images = samples.sample_images(1, seed=22)
    with pytest.raises(grpc.RpcError) as e:
        _tf_serving_predict(svc.name, images, key="not-a-key")
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    ref = AcceleratorPackage(kube_image.context / "package").run(images, [SOFTMAX])[SOFTMAX]
    np.testing.assert_allclose(_triton_infer(svc.name, images, key=svc.get_keys()[0]), ref, rtol=1e-5, atol=1e-6)


def test_the_inference_service_runs_as_its_predictor_pod_and_answers_the_protocol_over_http_and_grpc(
        kube_image, cluster, play, engine):
    import requests
    import tritonclient.http as thttp
    svc = deploy(kube_image, cluster, "svc-kserve", num_replicas=1)
    play(svc, flavour="kserve")
    assert podman.pods(engine, label=f"app={svc.name}") == [f"{svc.name}-predictor"]
    _serving(time.monotonic() + WAIT)
    rest = f"127.0.0.1:{kubernetes.REST_PORT}"
    r = requests.get(f"http://{rest}/v2/health/ready", timeout=10)
    assert r.status_code == 200 and r.json() == {"ready": True}
    images = samples.sample_images(2, seed=23)
    ref = AcceleratorPackage(kube_image.context / "package").run(images, [SOFTMAX])[SOFTMAX]
    c = thttp.InferenceServerClient(rest)
    x = thttp.InferInput("images", [len(images)], "BYTES")
    x.set_data_from_numpy(np.array(images, dtype=object))
    got = c.infer(svc.name, [x]).as_numpy(SOFTMAX)
    c.close()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(_triton_infer(svc.name, images), got)
