"""Real containers: the image's build context built offline (a local Debian base, the pinned wheels from a
wheelhouse in the context), and a service whose replicas run in containers of it: scored over TF Serving's API and
the Open Inference Protocol, a killed container brought back, and nothing left once it is deleted.

Needs a container engine that can start containers (podman, or docker with its daemon); skipped, saying why and
how, without one (and failed instead where .ci/run requires containers). Where .ci/run has given the run a store of
its own ($ACCEL_LIB_RUN_STARTED), the base image must have been made in this run, as on a new machine.
"""
import base64
import os
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from helpers import container_engine, deploy

from accel_lib import AccelContainerImage, Image, UserError, client_from_service, samples
from accel_lib.fpga.cluster import containers, running
from accel_lib.fpga.device.package import AcceleratorPackage

ENGINE = containers.find_engine()[0]
SOFTMAX = "classifier/resnet_v1_50/predictions/Softmax:0"


@pytest.fixture(scope="module", autouse=True)
def engine():
    """The engine, once it has started a throwaway container of the base (else every test here is skipped)."""
    return container_engine()[0]


def test_the_base_image_was_made_in_this_run(engine):
    """On a fresh store (CI's, under build/) the base was made from Debian's packages in this very run."""
    started = os.environ.get("ACCEL_LIB_RUN_STARTED")
    if not started:
        pytest.skip("$ACCEL_LIB_RUN_STARTED is not set: this run did not start from an empty store (.ci/run does)")
    root = Path(os.environ["ACCEL_LIB_RUN_STORE"]).resolve()
    assert Path(containers.graph_root(engine)).resolve().is_relative_to(root), "the engine does not use the run's store"
    made = containers.image_created(engine, containers.BASE_TAG)
    tar = containers.cache_dir() / containers.BASE_TAR
    assert made is not None and made >= float(started), f"{containers.BASE_TAG} predates this run"
    assert containers.base_tar_ok(tar) and tar.stat().st_mtime >= float(started), f"{tar} predates this run"


@pytest.fixture(scope="module")
def container_image(converted):
    """An image of the small converted model, built into a container image (once for the module)."""
    ws, src, op = converted
    img = Image.create("small-container", [op.result], AccelContainerImage.image_configuration(), ws)
    img.wait_for_creation()
    assert img.container_image == img.container_tag and containers.image_exists(ENGINE, img.container_tag)
    log = (img.context / "build.log").read_text()
    assert "--no-index" in log and f"built {img.container_tag}" in log
    yield img
    img.delete()                          # the record, the context and the container image: the session's
    assert not containers.image_exists(ENGINE, img.container_tag)        # workspace is as the other tests expect


def test_the_image_runs_without_tensorflow_as_a_user_and_offline(container_image):
    code, out, err = running.run_once(
        ENGINE, container_image.container_tag, "python3", "-c",
        "import os, importlib.util as u; print(os.getuid(), u.find_spec('tensorflow') is None)")
    assert code == 0 and out.split() == ["10001", "True"], err
    code, out, err = running.run_once(ENGINE, container_image.container_tag, "python3", "-m", "fpga.replica.server",
                                         "--package", "package", "--check")
    assert code == 0 and (SOFTMAX in out or "output_alias" in out), err[-2000:]


def test_the_image_serves_on_tcp_as_docker_run_would(container_image, tmp_path):
    """The image as the README runs it: the server on TCP (the image's own command, on a free port)."""
    import socket

    import tritonclient.grpc as tgrpc

    from accel_lib import PredictionClient
    from accel_lib.fpga.replica import server
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name = f"accel-tcp-{port}"
    running.run_detached(ENGINE, container_image.container_tag, name,
                            server.command(containers.PYTHON, host="127.0.0.1", port=port))
    try:
        images = samples.sample_images(1, seed=13)
        ref = AcceleratorPackage(container_image.context / "package").run(images, [SOFTMAX])[SOFTMAX]
        with PredictionClient("127.0.0.1", port, service_name="local", retry_seconds=60) as c:
            got = c.score_numpy_arrays({"images": images}, outputs=SOFTMAX)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
        g = tgrpc.InferenceServerClient(f"127.0.0.1:{port}")
        x = tgrpc.InferInput("images", [1], "BYTES")
        x.set_data_from_numpy(np.array(images, dtype=object))
        np.testing.assert_array_equal(g.infer("local", [x]).as_numpy(SOFTMAX), got)
        assert g.is_server_live() and g.is_model_ready("local")
        g.close()
    finally:
        running.remove(ENGINE, name)


def test_replicas_in_containers_serve_both_protocols_and_come_back(container_image, cluster):
    import tritonclient.grpc as tgrpc

    from accel_lib.client import triton_client
    svc = deploy(container_image, cluster, "svc-ctr", runtime="container", num_replicas=2, auth_enabled=True)
    reps = svc.replica_status()
    assert len(reps) == 2 and all(r.container for r in reps)
    assert set(running.labelled(ENGINE, running.cluster_id(cluster.run_dir))) == {r.container for r in reps}
    images = samples.sample_images(2, seed=12)
    ref = AcceleratorPackage(container_image.context / "package").run(images, [SOFTMAX])[SOFTMAX]
    with client_from_service(svc) as c:
        got = c.score_numpy_arrays({"images": images}, outputs=SOFTMAX)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)           # another process, the same package
    tc, head = triton_client(svc, "grpc")
    x = tgrpc.InferInput("images", [2], "BYTES")
    x.set_data_from_numpy(np.array(images, dtype=object))
    np.testing.assert_array_equal(tc.infer(svc.name, [x], headers=head).as_numpy(SOFTMAX), got)
    tc.close()
    r = requests.post(svc.rest_uri, json={"instances": [{"b64": base64.b64encode(images[0]).decode()}]},
                      headers={"Authorization": f"Bearer {svc.get_keys()[0]}"}, timeout=60)
    assert r.status_code == 200

    victim = reps[0].container
    running.kill(ENGINE, victim)                                       # as a crash would
    deadline = time.monotonic() + 30
    while svc.restart_count < 1:
        assert time.monotonic() < deadline, "the killed container's replica was not restarted within 30 s"
        time.sleep(0.2)
    svc.wait_for_deployment(timeout=120)
    assert victim not in running.labelled(ENGINE, running.cluster_id(cluster.run_dir))
    with client_from_service(svc) as c:
        np.testing.assert_array_equal(c.score_numpy_arrays({"images": images}, outputs=SOFTMAX), got)
    logs = svc.get_logs()
    assert "restart 1" in logs
    assert "telemetry" not in logs and "\x1b[" not in logs, "a replica's log in a container: no ONNX Runtime warning"
    svc.delete()
    assert running.labelled(ENGINE, running.cluster_id(cluster.run_dir)) == []


def test_a_container_runtime_needs_a_built_image(built_image, cluster):
    with pytest.raises(UserError, match="has no container image: runtime='container' needs one"):
        deploy(built_image, cluster, "svc-nobuild", runtime="container")
    with pytest.raises(UserError, match="runtime must be one of"):
        deploy(built_image, cluster, "svc-bad", runtime="vm")
