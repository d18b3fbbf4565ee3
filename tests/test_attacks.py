"""Stage H: the cluster under attack and under faults, on loopback. Each attack gets its status, names the limit,
and the service still serves afterwards."""
import contextlib
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import zlib

import grpc
import psutil
import pytest
import requests

from accel_lib import Webservice, client_from_service, samples
from accel_lib.fpga.cluster import specs as cluster_files
from accel_lib.fpga.cluster import ingress, routing, supervisor
from accel_lib.fpga.replica.protos import serving_pb2, tensorflow_pb2
from helpers import deploy as _deploy
from helpers import length_delimited as _ld

PREDICT = routing.PREDICT
SOFTMAX = "classifier/resnet_v1_50/predictions/Softmax:0"
BIG = [("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)]


def _md(svc, key=None):
    md = [(cluster_files.ROUTE_HEADER, cluster_files.route(svc.name))]
    return md + ([("authorization", f"Bearer {key}")] if key else [])


def _predict_bytes(images=None, tensor=None):
    req = serving_pb2.PredictRequest()
    t = req.inputs["images"]
    if tensor is not None:
        t.CopyFrom(tensor)
    else:
        t.dtype = 7
        t.tensor_shape.dim.add(size=len(images))
        t.string_val.extend(images)
    req.output_filter.append(SOFTMAX)
    return req.SerializeToString()


def _call(svc, body: bytes, key=None, timeout=60):
    """Send ``body`` (a serialized PredictRequest, or any bytes) to the front end; (status name, details)."""
    with grpc.insecure_channel(svc.scoring_uri.split("://")[-1], options=BIG) as ch:
        try:
            ch.unary_unary(PREDICT)(body, timeout=timeout, metadata=_md(svc, key))
            return "OK", ""
        except grpc.RpcError as e:
            return e.code().name, e.details()


def _still_serves(svc):
    data = samples.sample_images(1, seed=3)[0]
    with client_from_service(svc) as c:
        assert c.score_numpy_arrays({"images": [data]}, outputs=SOFTMAX).shape == (1, 1000)


def _frontend(target):
    return psutil.Process(target.endpoints().pid)


def _replica(svc, i=0):
    return psutil.Process(svc.replica_status()[i].pid)


def _png(width, height):
    """A real PNG of width x height black pixels: tiny on the wire, large once decoded."""
    import struct

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = zlib.compress((b"\0" + b"\0" * (3 * width)) * height, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


class PeakRss:
    """The highest RSS a process reaches while the block runs (sampled every 10 ms), in MB above its start."""

    def __init__(self, proc):
        self.proc, self.peak, self._stop = proc, 0, threading.Event()

    def _watch(self):
        while not self._stop.wait(0.01):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.NoSuchProcess:
                return

    def __enter__(self):
        self.start = self.proc.memory_info().rss
        self.peak = self.start
        self._t = threading.Thread(target=self._watch)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(5)

    @property
    def grew_mb(self):
        return (self.peak - self.start) / 2**20


def _connect_as(uid, path):
    """Try to connect to a Unix socket as user ``uid`` (in a forked child); what happened, by name."""
    pid = os.fork()
    if pid == 0:                                                # the child: only system calls, then _exit
        code = 1
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(5)
            s.connect(path)
            code = 0
        except PermissionError:
            code = 13
        except BaseException:  # noqa: BLE001 - reported as "other"
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return {0: "connected", 13: "PermissionError"}.get(os.waitstatus_to_exitcode(status), "other")


# -- 1. every way in checks the key ---------------------------------------------------------------
def test_replicas_are_reachable_by_the_front_end_only(built_image, cluster):
    svc = _deploy(built_image, cluster, "svc-sock", auth_enabled=True)
    rep = _replica(svc)
    assert [c for c in rep.net_connections("inet") if c.status == psutil.CONN_LISTEN] == []   # no TCP port at all
    sock = rep.cmdline()[rep.cmdline().index("--socket") + 1]
    folder = os.path.dirname(sock)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    status = (cluster.run_dir / cluster_files.STATUS_FILE)
    assert "port" not in status.read_text() and sock not in status.read_text()
    # another user on the host cannot reach the replica's socket (root can; so can the front end)
    if os.getuid() != 0:
        pytest.skip("needs root to try the socket as another user")
    assert _connect_as(65534, sock) == "PermissionError"
    assert _connect_as(0, sock) == "connected"                  # the same socket, as its owner
    _still_serves(svc)


def test_secret_files_are_private_from_birth(built_image, cluster, tmp_path):
    from accel_lib import Workspace
    old = os.umask(0)                         # even with a umask that would let everyone read
    try:
        ws = Workspace.create("private", path=tmp_path / "w")
    finally:
        os.umask(old)
    assert stat.S_IMODE(ws.path.stat().st_mode) == 0o700
    assert stat.S_IMODE((ws.path / "state.sqlite").stat().st_mode) == 0o600
    svc = _deploy(built_image, cluster, "svc-files", auth_enabled=True)
    for f in (cluster_files.SPEC_FILE, cluster_files.STATUS_FILE, cluster_files.ENDPOINTS_FILE):
        assert stat.S_IMODE((cluster.run_dir / f).stat().st_mode) == 0o600, f
    assert stat.S_IMODE(cluster.run_dir.stat().st_mode) == 0o700
    assert svc.get_keys()[0] in (cluster.run_dir / cluster_files.SPEC_FILE).read_text()
    out = svc.kubernetes_manifests(tmp_path / "k8s")
    secrets = [p for p in out if "Secret" in p.read_text()]
    assert secrets and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in secrets)


# -- 2. checks before work -------------------------------------------------------------------------
def test_a_huge_call_without_key_is_refused_before_it_is_read(built_image, cluster):
    svc = _deploy(built_image, cluster, "svc-huge", auth_enabled=True)
    body = b"\0" * (200 << 20)
    with PeakRss(_frontend(cluster)) as rss:
        t0 = time.monotonic()
        code, details = _call(svc, body)
        took = time.monotonic() - t0
    assert code == "UNAUTHENTICATED", (code, details)
    assert rss.grew_mb < 100, f"the front end grew {rss.grew_mb:.0f} MB for a call it refused"
    assert took < 1.0, took
    code, details = _call(svc, body, key=svc.get_keys()[0])      # with the key: over the 64 MB limit
    assert code == "RESOURCE_EXHAUSTED", (code, details)
    _still_serves(svc)


def test_the_listener_limit_follows_the_largest_service_limit(built_image, cluster):
    small = _deploy(built_image, cluster, "svc-1mb", max_message_mb=1)
    code, details = _call(small, b"\0" * (5 << 20))
    assert code == "RESOURCE_EXHAUSTED" and "5242" in details, details        # gRPC's own limit: 1 MB
    big = _deploy(built_image, cluster, "svc-8mb", max_message_mb=8)
    code, details = _call(small, b"\0" * (5 << 20))                             # read now, then our check
    assert code == "RESOURCE_EXHAUSTED" and "max_message_mb=1" in details, details
    assert _call(big, _predict_bytes([samples.sample_images(1, seed=2)[0]]))[0] == "OK"
    _still_serves(small)


def _raw_http(port, head: bytes, chunks=(), wait=15.0):
    """Send ``head`` and then ``chunks`` on a raw connection without ending the body; the reply's first line."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(head)
        try:
            for c in chunks:
                s.sendall(c)
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.settimeout(wait)
        try:
            return s.recv(4096).split(b"\r\n", 1)[0].decode()
        except (ConnectionResetError, socket.timeout) as e:
            return type(e).__name__


def test_a_chunked_body_is_capped_while_it_is_read(built_image, cluster):
    svc = _deploy(built_image, cluster, "svc-chunk", max_message_mb=1, auth_enabled=True)
    port = cluster.endpoints().rest_port
    head = (f"POST /v1/models/{svc.name}:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            f"Authorization: Bearer {svc.get_keys()[0]}\r\n\r\n").encode()
    piece = b"x" * 65536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    t0 = time.monotonic()
    first = _raw_http(port, head, [chunk] * 24)            # 1.5 MB and the body never ends
    assert first == "HTTP/1.1 413 Request Entity Too Large", first
    assert time.monotonic() - t0 < 5
    first = _raw_http(port, head.replace(svc.get_keys()[0].encode(), b"wrong"), [chunk])
    assert first.startswith("HTTP/1.1 401"), first                 # the key, before any of the body
    _still_serves(svc)


def test_rest_json_of_one_service_does_not_hold_up_another(built_image, cluster):
    heavy = _deploy(built_image, cluster, "svc-json", max_message_mb=32)
    other = _deploy(built_image, cluster, "svc-calm")
    rest = other.rest_uri.rsplit(":", 1)[0]
    body = b'{"instances": [' + b",".join([b"{}"] * 2_000_000) + b"]}"        # 2 million empty rows, 6 MB
    answer = {}

    def attack():
        t0 = time.monotonic()
        r = requests.post(heavy.rest_uri, data=body, timeout=120)
        answer.update(status=r.status_code, text=r.text, took=time.monotonic() - t0)
    t = threading.Thread(target=attack)
    t.start()
    waits = []
    while t.is_alive():
        t0 = time.monotonic()
        assert requests.get(rest, timeout=30).status_code == 200
        waits.append(time.monotonic() - t0)
    t.join()
    assert answer["status"] == 400 and "at most 64" in answer["text"], answer
    assert len(waits) >= 3 and max(waits) < max(0.25, answer["took"] / 3), (max(waits), answer["took"])
    for deep in (b"[" * 100_000, b'{"instances": ' + b"[" * 100_000, b"\xff\xfe{", b'{"instances": [{"b64": 1}]}'):
        r = requests.post(heavy.rest_uri, data=deep, timeout=60)
        assert r.status_code == 400, (deep[:20], r.status_code, r.text)
    wide = b'{"instances": [' + b",".join([b"[]"] * 7_000_000) + b"]}"      # 21 MB that json.loads takes to ~530 MB
    with contextlib.ExitStack() as stack:
        parsers = [stack.enter_context(PeakRss(p)) for p in _frontend(cluster).children()]
        t0 = time.monotonic()
        r = requests.post(heavy.rest_uri, data=wide, timeout=60)
        took = time.monotonic() - t0
    assert r.status_code == 413 and "max_request_mb=256" in r.json()["error"], (r.status_code, r.text[:300])
    most = 3 * len(wide) / 2**20                        # the body crosses to a parsing process; parsed, ~530 MB
    assert parsers and max(p.grew_mb for p in parsers) < most and took < 5, ([p.grew_mb for p in parsers], took)
    _still_serves(heavy)


def test_a_replica_refuses_work_past_its_budget_before_allocating(built_image, cluster):
    svc = _deploy(built_image, cluster, "svc-budget", auth_enabled=True, max_request_mb=64)
    key = svc.get_keys()[0]
    splat = tensorflow_pb2.TensorProto(dtype=1, float_val=[1.0])                # 49 bytes that fill out to 2^26
    for d in (16, 2048, 2048, 1):
        splat.tensor_shape.dim.add(size=d)
    tiny = b"\x08\x07" + b"\x42\x00" * 15_000_000                              # 15 million empty strings, 29 MB
    wrap = tensorflow_pb2.TensorProto(dtype=1, float_val=[1.0])                 # a shape whose product passes 2^64
    for d in (2**40, 2**40, 1, 3):                                              # [N, H, W, 3], as an input must be
        wrap.tensor_shape.dim.add(size=d)
    big_png = _png(6000, 6000)                                                  # 36 MP, under the 40 MP cap
    cases = [("splat", _predict_bytes(tensor=splat), "max_request_mb=64"),
             ("strings", _ld(b"\x12", _ld(b"\x0a", b"images") + _ld(b"\x12", tiny)), "max_images=64"),
             ("wrap-around", _predict_bytes(tensor=wrap), "max_request_mb=64"),
             ("36 MP x 4", _predict_bytes([big_png] * 4), "max_request_mb")]
    rep = _replica(svc)
    for what, body, limit in cases:
        with PeakRss(rep) as rss:
            t0 = time.monotonic()
            code, details = _call(svc, body, key)
            took = time.monotonic() - t0
        assert code == "RESOURCE_EXHAUSTED" and limit in details, (what, code, details)
        most = 4 * len(body) / 2**20 if what == "strings" else 200     # received whole, never decoded (~460 MB)
        assert rss.grew_mb < most and took < 2.0, (what, rss.grew_mb, took)
    named = _ld(b"\x0a", _ld(b"\x0a", svc.name.encode())) + cases[1][1]     # no route header: named in model_spec
    with PeakRss(_frontend(cluster)) as front, PeakRss(rep) as rss:
        with grpc.insecure_channel(svc.scoring_uri.split("://")[-1], options=BIG) as ch:
            with pytest.raises(grpc.RpcError) as e:
                ch.unary_unary(PREDICT)(named, timeout=60, metadata=[("authorization", f"Bearer {key}")])
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_images=64" in e.value.details()
    assert front.grew_mb < 4 * len(named) / 2**20 and rss.grew_mb < 4 * len(named) / 2**20, (front.grew_mb,
                                                                                               rss.grew_mb)
    doubles = tensorflow_pb2.TensorProto(dtype=2, double_val=[1.0])        # DT_DOUBLE, 49 bytes, fills to 59 MB
    for d in (7, 1024, 1024, 1):
        doubles.tensor_shape.dim.add(size=d)
    with PeakRss(rep) as rss:
        code, details = _call(svc, _predict_bytes(tensor=doubles), key)
    assert code == "INVALID_ARGUMENT" and "got DT_DOUBLE" in details, (code, details)
    assert rss.grew_mb < 20, rss.grew_mb                  # refused on the wire, before one value is filled out
    _still_serves(svc)
    assert svc.restart_count == 0


def test_health_answers_while_scoring_is_busy(built_image, cluster):
    svc = _deploy(built_image, cluster, "svc-busy", auth_enabled=True, num_replicas=1)
    key = svc.get_keys()[0]
    heavy = _predict_bytes([_png(5000, 5000)])                       # allowed: one 25 MP picture, ~0.5 s of CPU
    stop = time.monotonic() + 6
    hammer = [threading.Thread(target=lambda: [_call(svc, heavy, key) for _ in iter(
        lambda: time.monotonic() < stop, False)]) for _ in range(4)]
    for h in hammer:
        h.start()
    data = samples.sample_images(1, seed=4)[0]
    errors = []
    with client_from_service(svc, retry_seconds=0) as c:
        while time.monotonic() < stop:
            try:
                c.score_numpy_arrays({"images": [data]}, outputs=SOFTMAX, timeout=30)
            except Exception as e:  # noqa: BLE001 - every failure counts
                errors.append(repr(e)[:200])
    for h in hammer:
        h.join(60)
    assert errors == [], errors[:3]
    assert svc.restart_count == 0 and [r.state for r in svc.replica_status()] == ["Healthy"]


# -- 3. connections --------------------------------------------------------------------------------
def test_half_sent_requests_are_dropped_and_the_connection_count_is_capped(built_image, cluster):
    svc = _deploy(built_image, cluster, "svc-slow")
    port = cluster.endpoints().rest_port
    socks = []
    for _ in range(ingress.MAX_CONNECTIONS + 20):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /v1/models/svc-slow HTTP/1.1\r\nHost: x\r\n")      # the headers never end
        socks.append(s)
    closed = 0
    for s in socks[-20:]:                                                  # past the cap: closed at once
        s.settimeout(5)
        try:
            closed += s.recv(1) == b""
        except ConnectionResetError:
            closed += 1
    assert closed == 20
    deadline = time.monotonic() + ingress.HEADER_SECONDS + 10
    for s in socks[:ingress.MAX_CONNECTIONS]:                             # the rest: after the header timeout
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            assert s.recv(1) == b""
        except ConnectionResetError:
            pass
    assert time.monotonic() < deadline
    for s in socks:
        s.close()
    assert requests.get(svc.rest_uri.rsplit(":", 1)[0], timeout=30).status_code == 200
    _still_serves(svc)


# -- 4. a supervisor that cannot die ---------------------------------------------------------------
def _wait(what, check, seconds):
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out after {seconds} s waiting for {what}"
        time.sleep(0.1)


def _assert_no_flood(log_file, most=5):
    """No line of the log (its timestamp aside) is there more than ``most`` times."""
    import collections
    lines = collections.Counter(line[20:120] for line in log_file.read_text(errors="replace").splitlines())
    top = lines.most_common(1)
    assert not top or top[0][1] <= most, f"{log_file.name} repeats itself: {top[0][1]} x {top[0][0]!r}"


def test_out_of_file_handles_the_cluster_recovers(built_image, monkeypatch):
    from accel_lib import AksCompute, ComputeTarget
    monkeypatch.setenv("ACCEL_LIB_NOFILE", "160")              # the cluster process gets few handles
    ws = built_image.workspace
    target = ComputeTarget.create(ws, "aks-fd", AksCompute.provisioning_configuration(agent_count=1))
    try:
        svc = _deploy(built_image, target, "svc-fd")
        fe = _frontend(target)
        port = target.endpoints().rest_port
        hogs = []
        for _ in range(400):                                   # idle connections until it has no handle left
            try:
                hogs.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                break
        _wait("the front end to run out of handles", lambda: fe.num_fds() >= 150, 20)
        first = _replica(svc).pid
        psutil.Process(first).kill()                           # a restart needs handles it does not have
        time.sleep(3)
        for s in hogs:
            s.close()
        _wait("the replica to come back", lambda: svc.replica_status()[0].pid not in (0, first)
              and svc.replica_status()[0].state == "Healthy", 60)
        _still_serves(svc)
        _assert_no_flood(target.run_dir / cluster_files.LOG_FILE)
    finally:
        for s in Webservice.list(ws):
            if s.compute_name == "aks-fd":
                s.delete()
        target.delete()


def test_a_status_file_that_cannot_be_written_and_a_hung_replica(built_image, cluster):
    svc = _deploy(built_image, cluster, "svc-fault")
    status = cluster.run_dir / cluster_files.STATUS_FILE
    first = _replica(svc).pid
    status.unlink()
    status.mkdir()                                             # every status write now fails
    try:
        psutil.Process(first).kill()
        fe = _frontend(cluster)
        _wait("a new replica", lambda: any(c.pid != first and "fpga.replica.server" in " ".join(c.cmdline())
                                           for c in fe.children()), 30)
        _wait("it to serve", lambda: _call(svc, _predict_bytes([samples.sample_images(1, seed=5)[0]]))[0] == "OK",
              60)
    finally:
        status.rmdir()
    _wait("status.json again", lambda: status.is_file() and svc.restart_count == 1, 30)
    second = _replica(svc)
    second.suspend()                                           # hung: it answers nothing, health included
    _wait("the liveness kill and restart", lambda: svc.restart_count == 2 and svc.state == "Healthy",
          supervisor.LIVENESS_FAILURES * (supervisor.PROBE_HEALTHY_EVERY + supervisor.PROBE_TIMEOUT) + 30)
    assert not second.is_running() or second.status() == psutil.STATUS_ZOMBIE
    _still_serves(svc)
    _assert_no_flood(cluster.run_dir / cluster_files.LOG_FILE)     # once per interval, not a flood


def test_error_log_says_each_error_once_per_interval(capsys):
    log = supervisor.ErrorLog(every=60)
    for _ in range(1000):
        log("writing the status", OSError(24, "Too many open files"))
    log("probing", ValueError("other"))
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "Too many open files" in out[0] and "other" in out[1]


# -- 5. secrets and defaults -----------------------------------------------------------------------
def test_keys_are_compared_in_constant_time(monkeypatch):
    import hmac

    from accel_lib.fpga.replica import keys
    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    assert keys.ok("Bearer k1", ["k1", "k2"]) and len(compared) == 2      # every key, whatever matched
    assert keys.ok("Bearer k2", ["k1", "k2"])
    assert not keys.ok("Bearer k3", ["k1", "k2"]) and not keys.ok("k1", ["k1"])
    assert not keys.ok("Bearer ", ["k1"]) and not keys.ok("", [""])


def test_not_found_says_no_more_than_the_caller_knows(built_image, cluster):
    svc = _deploy(built_image, cluster, "svc-secret-name", auth_enabled=True)
    code, details = _call(type("S", (), {"name": "ghost", "scoring_uri": svc.scoring_uri})(), b"")
    assert code == "NOT_FOUND" and "svc-secret-name" not in details, details
    r = requests.get(svc.rest_uri.rsplit("/v1/", 1)[0] + "/v1/models/ghost", timeout=30)
    assert r.status_code == 404 and "svc-secret-name" not in r.text


def test_tensor_shapes_cannot_wrap_around():
    from accel_lib.fpga.replica import tensors
    t = tensorflow_pb2.TensorProto(dtype=1, float_val=[1.0])
    for d in (2**32, 2**32):
        t.tensor_shape.dim.add(size=d)                          # 2^64: 0 in int64 arithmetic
    with pytest.raises(tensors.TensorTooLarge, match="18,446,744,073,709,551,616 values"):
        tensors.from_proto(t)


def test_the_dockerfile_runs_as_a_user(built_image):
    text = (built_image.context / "Dockerfile").read_text()
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0") and text.index("USER") < text.index("CMD")


def test_model_names_and_links(ws, tmp_path):
    from accel_lib import Model, UserError
    f = tmp_path / "m.bin"
    f.write_bytes(b"weights")
    with pytest.raises(UserError, match="names are"):
        Model.register(ws, f, "good\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"a")
    (folder / "inside").symlink_to(folder / "a.bin")            # a link within the folder is fine
    secret = tmp_path / "secret.txt"
    secret.write_text("do not copy me")
    (folder / "leak").symlink_to(secret)
    with pytest.raises(UserError, match="outside the model folder"):
        Model.register(ws, folder, "linked")
    (folder / "leak").unlink()
    (folder / "up").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(UserError, match="outside the model folder"):
        Model.register(ws, folder, "linked")
    assert Model.list(ws) == []                                 # nothing registered, no blob left
    assert not any(p.is_file() for p in (ws.path / "blobs").rglob("*"))
    (folder / "up").unlink()
    m = Model.register(ws, folder, "linked")
    assert sorted(m.files) == ["a.bin", "inside"]


def test_from_config_skips_a_config_planted_by_another_user(tmp_path, capsys):
    from accel_lib import UserError, Workspace
    mine = Workspace.create("mine", path=tmp_path / "top" / "ws")
    evil = Workspace.create("evil", path=tmp_path / "evil")
    planted = evil.write_config(tmp_path / "top")               # a config in a folder above, pointing elsewhere
    os.chown(planted, 65534, 65534) if os.getuid() == 0 else pytest.skip("needs root to own a file as another user")
    below = tmp_path / "top" / "project"
    below.mkdir()
    with pytest.raises(UserError, match="no workspace config.json"):
        Workspace.from_config(below)
    assert "another user owns" in capsys.readouterr().err
    os.chown(planted, os.getuid(), os.getgid())
    mine.write_config(tmp_path / "top")
    ws = Workspace.from_config(below)
    assert ws.path == mine.path and ws.config_path == planted
    assert f"using {planted}" in capsys.readouterr().err


# -- interrupted work ----------------------------------------------------------------------------
_KILLED = """
import os, shutil, signal, sys
from pathlib import Path
from accel_lib import AccelContainerImage, Image, Model, Workspace
ws = Workspace(Path(sys.argv[1]))
if sys.argv[2] == "register":
    real = shutil.copyfile
    def copyfile(src, dst, **kw):
        if Path(src).name == "c.bin":                     # a.bin and b.bin stored; c.bin half-copied, then killed
            with open(src, "rb") as f, open(dst, "wb") as g:
                g.write(f.read(1000))
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst, **kw)
    shutil.copyfile = copyfile
    Model.register(ws, sys.argv[3], "interrupted")
else:
    name, version = sys.argv[3].split(":")
    Image.create("killed-image", [Model(ws, name, int(version))], AccelContainerImage.image_configuration(), ws)
"""


def test_a_killed_register_or_image_build_leaves_no_debris(converted, tmp_path):
    from accel_lib import Image, Model, Workspace
    _, _, op = converted
    ws = Workspace.create("killed", path=tmp_path / "ws")
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("a.bin", "b.bin", "c.bin"):
        (folder / name).write_bytes(os.urandom(1 << 20))
    before = {p for p in (ws.path / "blobs").rglob("*") if p.is_file()}
    # a half-copied blob as a killed copy leaves it (its pid is the dead process's, in the file name)
    r = subprocess.run([sys.executable, "-c", _KILLED, str(ws.path), "register", str(folder)], timeout=120)
    assert r.returncode == -9
    left = [p for p in (ws.path / "blobs").rglob("*") if p.is_file()]
    assert len(left) > len(before)                                 # debris, before the next open
    ws = Workspace(ws.path)
    assert {p for p in (ws.path / "blobs").rglob("*") if p.is_file()} == before
    assert Model.list(ws, name="interrupted") == [] and not list((ws.path / "pending").glob("*"))
    m = Model.register(ws, folder, "interrupted")                 # and it works the second time
    assert m.version == 1

    src = op.result
    src_ws = src.workspace
    p = subprocess.Popen([sys.executable, "-c", _KILLED, str(src_ws.path), "image", src.id])
    try:                                                          # killed while it builds (its note is there)
        _wait("the build to start", lambda: list((src_ws.path / "pending").glob("image-*.json")), 120)
        p.kill()
    finally:
        p.kill()
        assert p.wait(30) == -9
    assert Image(src_ws, "killed-image").creation_state == "Running"        # as the kill left it
    img = Image(Workspace(src_ws.path), "killed-image")
    try:
        assert img.creation_state == "Failed" and "interrupted" in (img.context / "build.log").read_text()
    finally:
        img.delete()


def test_from_config_judges_a_planted_link_by_its_own_owner(tmp_path, capsys):
    """A link owned by another user, pointing at the victim's own config, must not make its folder a workspace."""
    from accel_lib import UserError, Workspace
    if os.getuid() != 0:
        pytest.skip("needs root to own a link as another user")
    victim = Workspace.create("victim", path=tmp_path / "victim")
    attacker = tmp_path / "shared" / "attacker"
    attacker.mkdir(parents=True)
    link = attacker / "config.json"
    link.symlink_to(victim.path / "config.json")
    os.lchown(link, 65534, 65534)                               # the link is the other user's; its target is yours
    with pytest.raises(UserError, match="no workspace config.json"):
        Workspace.from_config(attacker)
    assert "another user owns" in capsys.readouterr().err
    assert Workspace.from_config(victim.path).path == victim.path    # your own config still works


def test_connections_that_never_start_tls_count_against_the_cap(built_image):
    from accel_lib import AksCompute, ComputeTarget
    ws = built_image.workspace
    cfg = AksCompute.provisioning_configuration(agent_count=1).enable_ssl(leaf_domain_label="cap")
    target = ComputeTarget.create(ws, "aks-tls-cap", cfg)
    socks = []
    try:
        svc = _deploy(built_image, target, "svc-tls-cap")
        port = target.endpoints().rest_port
        for _ in range(ingress.MAX_CONNECTIONS + 20):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))    # no ClientHello, ever
        closed = 0
        for s in socks[-20:]:                                                # past the cap: closed at once
            s.settimeout(5)
            try:
                closed += s.recv(1) == b""
            except ConnectionResetError:
                closed += 1
        assert closed == 20
        for s in socks:
            s.close()
        socks = []
        deadline = time.monotonic() + ingress.HEADER_SECONDS + 10           # the held ones time out, then it serves
        while True:
            try:
                r = requests.get(svc.rest_uri.rsplit(":", 1)[0], verify=str(target.ssl_certificate_file), timeout=5)
                break
            except requests.exceptions.ConnectionError:
                assert time.monotonic() < deadline, "the REST listener did not take connections again"
                time.sleep(0.2)
        assert r.status_code == 200
        log = (target.run_dir / cluster_files.LOG_FILE).read_text(errors="replace")
        assert log.count("connections are open (TLS handshakes included)") == 1      # said once, not per refusal
    finally:
        for s in socks:
            s.close()
        for s in [s for s in Webservice.list(ws) if s.compute_name == target.name]:
            s.delete()
        target.delete()
