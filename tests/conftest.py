"""Shared fixtures: offline, quiet, and no process may outlive the test that started it."""
import os
import time
import uuid

os.environ["ACCEL_LIB_OFFLINE"] = "1"      # tests never fetch weights or data
SESSION = os.environ.setdefault("ACCEL_LIB_TEST_SESSION", uuid.uuid4().hex)   # inherited by what the tests start
os.environ["ACCEL_LIB_CONTAINER_LABELS"] = f"accel_lib.test-session={SESSION}"   # and on the containers they start
os.environ.setdefault("ACCEL_LIB_PROGRESS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")     # as accel_lib sets it for its users

import psutil  # noqa: E402
import pytest  # noqa: E402

from accel_lib import Model, Workspace  # noqa: E402


def _ours():
    """Our child processes, plus the cluster processes and replicas this test session started (they are detached
    on purpose; their environment carries the session's mark, so another session's are never touched)."""
    me = psutil.Process()
    found = {p.pid: p for p in me.children(recursive=True)}
    for p in psutil.process_iter(["cmdline"]):
        if any("fpga.replica.server" in a or "fpga.cluster.frontend" in a for a in (p.info["cmdline"] or [])):
            try:
                if p.environ().get("ACCEL_LIB_TEST_SESSION") == SESSION:
                    found[p.pid] = p
            except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
                pass
    return found


def _containers():
    """The containers this test session started (none where no container engine answers)."""
    from accel_lib.fpga.cluster import containers, running
    engine, _ = containers.find_engine()
    if engine is None:
        return engine, set()
    return engine, set(running.labelled(engine, label=f"accel_lib.test-session={SESSION}"))


@pytest.fixture(scope="module", autouse=True)
def no_leftover_containers():
    """Fail a test module (after removing them) if containers it started are still there when it ends (per module:
    asking the engine takes 0.4 s)."""
    engine, before = _containers()
    yield
    engine, after = _containers()
    left = after - before
    if left:
        from accel_lib.fpga.cluster import running
        for name in left:
            running.remove(engine, name)
    assert not left, f"containers outlived the tests: {sorted(left)}"


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Fail a test (after killing them) if processes it started are still running when it ends."""
    before = set(_ours())
    yield
    deadline = time.monotonic() + 10
    while True:
        left = {pid: p for pid, p in _ours().items() if pid not in before}
        left = {pid: p for pid, p in left.items() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    described = []
    for p in left.values():
        try:
            described.append(" ".join(p.cmdline()[:4]))
            p.kill()
        except psutil.NoSuchProcess:
            pass
    assert not left, f"processes outlived the test: {described}"


@pytest.fixture
def ws(tmp_path):
    """A fresh workspace; whatever clusters a test leaves in it are stopped afterwards."""
    w = Workspace.create("test-ws", path=tmp_path / "ws")
    yield w
    from accel_lib import webservice
    webservice.stop_all(w.path)


@pytest.fixture(scope="session")
def small_model(tmp_path_factory):
    """A Resnet50 with seeded random weights at 64x64 pixels, saved once for the session."""
    from accel_lib.models import Resnet50
    d = tmp_path_factory.mktemp("models")
    graph = Resnet50(d, weights="random", image_size=64)
    info = graph.save(d / "small")
    return graph, info


@pytest.fixture(scope="session")
def converted(tmp_path_factory, small_model):
    """(workspace, source model, finished conversion) for the small model, converted once for the session."""
    from accel_lib import AccelOnnxConverter
    graph, info = small_model
    w = Workspace.create("conv-ws", path=tmp_path_factory.mktemp("conv") / "ws")
    src = Model.register(w, info.path, "small", tags={"kind": "test"})
    op = AccelOnnxConverter.convert_tf_model(w, src, info.input_tensors, [info.output_tensors, "resnet_v1_50/pool5:0"])
    assert op.wait_for_completion(timeout=600), op.get_log()
    return w, src, op


@pytest.fixture(scope="session")
def small_fp32(converted):
    """The path of the small model's featurizer in fp32, as its conversion made it (the conversion's cache of fp32
    graphs: TensorFlow is not run again)."""
    import json
    ws, src, _ = converted
    index = sorted(ws.conversion_cache(src.name, src.version).glob("*/fp32.json"))[0]
    return index.parent / json.loads(index.read_text())["fp32"]["featurize"]


@pytest.fixture(scope="session")
def converted_q(converted, small_model):
    """The small model converted again, in ms-fp9 with blocks of 64, in the same workspace."""
    from accel_lib import AccelOnnxConverter
    ws, src, _ = converted
    op = AccelOnnxConverter.convert_tf_model(ws, src, "images", "output_alias", numeric_format="ms-fp9", block_size=64)
    assert op.wait_for_completion(timeout=600), op.get_log()
    return ws, src, op


@pytest.fixture(scope="session")
def built_image(converted):
    """An image of the small converted model (session-wide; images start no process)."""
    from accel_lib import AccelContainerImage, Image
    ws, src, op = converted
    img = Image.create("small-image", [op.result], AccelContainerImage.image_configuration(tags={"t": "1"}), ws)
    assert img.creation_state == "Succeeded", (img.context / "build.log").read_text()
    return img


@pytest.fixture
def cluster(built_image):
    """A fresh two-node PB6s cluster in the image's workspace; services on it are deleted afterwards."""
    import uuid

    from accel_lib import AksCompute, ComputeTarget, Webservice
    ws = built_image.workspace
    name = "aks-" + uuid.uuid4().hex[:6]
    target = ComputeTarget.create(ws, name, AksCompute.provisioning_configuration(agent_count=2))
    yield target
    for svc in Webservice.list(ws):
        if svc.compute_name == name:
            svc.delete()
    target.delete()


@pytest.fixture(scope="session")
def built_image_q(converted_q):
    """An image of the small model in ms-fp9 (session-wide)."""
    from accel_lib import AccelContainerImage, Image
    ws, src, op = converted_q
    img = Image.create("small-image-q", [op.result], AccelContainerImage.image_configuration(), ws)
    assert img.creation_state == "Succeeded", (img.context / "build.log").read_text()
    return img
