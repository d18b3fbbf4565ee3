"""A peer measured beside us: MLServer (Seldon's Open Inference Protocol server, 1.7.1) serving the same accelerator
package through an MLServer custom runtime of ours (``mlserver/runtime.py``, which calls AcceleratorPackage), and
our cluster's front end with one replica, over the Open Inference Protocol (gRPC with tritonclient, REST with
base64 JSON on both) and our TF Serving API. Same package, one replica against one MLServer inference worker, the
same ONNX Runtime threads, both on loopback; the contenders interleaved in one run (latency: one call of each per
round; throughput: each in turn at 1, 8 and 16 clients, two rounds in alternating order, the better kept).

MLServer lives in an environment of its own (``.venv-mlserver``, from ``mlserver/requirements.txt``), as a peer
server on another machine would; it is made on first use (network: the package registry).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-mlserver"
HERE = Path(__file__).resolve().parent
CLIENTS = (1, 8, 16)


def ensure_mlserver(log=print) -> Path:
    """The ``mlserver`` command of the peer's own environment, made from the pinned requirements if missing."""
    exe = VENV / "bin" / "mlserver"
    stamp = VENV / ".installed"
    reqs = HERE / "mlserver" / "requirements.txt"
    if exe.exists() and stamp.is_file() and stamp.read_text() == reqs.read_text():
        return exe
    log("making MLServer's environment (.venv-mlserver, once) ...")
    if not (VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
    subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "-r", str(reqs)], check=True,
                   timeout=1800)
    stamp.write_text(reqs.read_text())
    return exe


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlserver(package_dir, context_dir, threads, folder, log=print):
    """Start MLServer on loopback serving the package as model "r50"; returns (process, http port, grpc port)."""
    import requests
    exe = ensure_mlserver(log)
    folder = Path(folder)
    model = folder / "r50"
    model.mkdir(parents=True)
    shutil.copyfile(HERE / "mlserver" / "runtime.py", model / "runtime.py")
    http, grpc_port, metrics = _free_port(), _free_port(), _free_port()
    (folder / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": http, "grpc_port": grpc_port, "metrics_port": metrics,
        "parallel_workers": 1, "debug": False, "metrics_endpoint": None, "grpc_max_message_length": 64 << 20}))
    (model / "model-settings.json").write_text(json.dumps({
        "name": "r50", "implementation": "runtime.AcceleratorRuntime",
        "parameters": {"uri": str(package_dir), "extra": {"threads": threads}}}))
    env = {**os.environ, "PYTHONPATH": str(context_dir), "PYTHONUNBUFFERED": "1"}
    out = open(folder / "mlserver.log", "ab")
    proc = subprocess.Popen([str(exe), "start", str(folder)], cwd=folder, env=env, stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"MLServer exited ({proc.returncode}); see {folder / 'mlserver.log'}")
        try:
            if requests.get(f"http://127.0.0.1:{http}/v2/models/r50/ready", timeout=2).status_code == 200:
                return proc, http, grpc_port
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"MLServer did not get ready in 180 s; see {folder / 'mlserver.log'}")
        time.sleep(0.5)


def stop(proc):
    """Stop MLServer and its workers (its whole session)."""
    import signal
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


def run(image_size=224, numeric_format="ms-fp9", rounds=40, seconds=4.0, log=print):
    """Convert, deploy (ours and MLServer) and measure; returns the result rows (a dict)."""
    import numpy as np
    import requests
    import tritonclient.grpc as tgrpc

    from accel_lib import AksWebservice, Webservice, client_from_service, samples
    from accel_lib.client import triton_client
    from accel_lib.fpga.cluster import specs
    from serving import _pcts, _throughput, setup

    ws, img, target, d = setup("peers", image_size, numeric_format, 1, log)
    threads = specs.threads_per_replica(os.cpu_count() or 1, 1, 6)
    ml = None
    out = {"image_size": image_size, "numeric_format": numeric_format, "threads": threads}
    try:
        svc = Webservice.deploy_from_image(ws, "r50-svc", img, AksWebservice.deploy_configuration(
            num_replicas=1, flash_seconds=0.0, runtime="process"), target)
        svc.wait_for_deployment()
        ml, ml_http, ml_grpc = start_mlserver(img.context / "package", img.context, threads, d / "mlserver", log)
        data = samples.encode(samples.synthetic_image(1, image_size + 76, image_size + 176))
        name = img.models[0].manifest.outputs[0]
        ours_grpc, head = triton_client(svc, "grpc")
        peer_grpc = tgrpc.InferenceServerClient(f"127.0.0.1:{ml_grpc}")
        tf_client = client_from_service(svc)

        def infer(client, model, headers):
            x = tgrpc.InferInput("images", [1], "BYTES")
            x.set_data_from_numpy(np.array([data], dtype=object))
            return client.infer(model, [x], outputs=[tgrpc.InferRequestedOutput(name)], headers=headers)

        body = {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES",
                            "parameters": {"content_type": "base64"}, "data": [base64.b64encode(data).decode()]}],
                "outputs": [{"name": name}]}
        session = requests.Session()
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=32))
        key = {"Authorization": f"Bearer {svc.get_keys()[0]}"}
        tf_body = {"instances": [{"b64": base64.b64encode(data).decode()}]}
        paths = {
            "ours, OIP gRPC": lambda: infer(ours_grpc, svc.name, head),
            "MLServer, OIP gRPC": lambda: infer(peer_grpc, "r50", {}),
            "ours, OIP REST": lambda: session.post(svc.v2_uri + "/infer", json=body, headers=key,
                                                   timeout=60).raise_for_status(),
            "MLServer, OIP REST": lambda: session.post(f"http://127.0.0.1:{ml_http}/v2/models/r50/infer", json=body,
                                                       timeout=60).raise_for_status(),
            "ours, TF Serving gRPC": lambda: tf_client.score_numpy_arrays({"images": [data]}, outputs=name),
            "ours, TF Serving REST": lambda: session.post(svc.rest_uri, json=tf_body, headers=key,
                                                          timeout=60).raise_for_status(),
        }
        a = infer(ours_grpc, svc.name, head).as_numpy(name)
        b = infer(peer_grpc, "r50", {}).as_numpy(name)
        out["same_answer"] = bool(np.array_equal(a, b))          # the same package: the same numbers
        for call in paths.values():
            for _ in range(3):
                call()
        times = {k: [] for k in paths}
        for i in range(rounds):
            order = list(paths.items()) if i % 2 == 0 else list(reversed(paths.items()))
            for k, call in order:
                t = time.perf_counter()
                call()
                times[k].append(1000 * (time.perf_counter() - t))
        out["latency_ms"] = {k: dict(zip(("p50", "p90"), _pcts(v))) for k, v in times.items()}
        out["throughput_rps"] = {k: {} for k in paths}
        for clients in CLIENTS:
            for r in range(2):
                order = list(paths.items()) if r == 0 else list(reversed(paths.items()))
                for k, call in order:
                    rps = round(_throughput(call, clients, seconds), 1)
                    out["throughput_rps"][k][clients] = max(rps, out["throughput_rps"][k].get(clients, 0))
        ours_grpc.close()
        peer_grpc.close()
        tf_client.close()
    finally:
        if ml is not None:
            stop(ml)
        for s in Webservice.list(ws):
            s.delete()
        target.delete()
    return out


def report(r, machine):
    """The peer results as a markdown table, with who is ahead and by how much."""
    lat, thr = r["latency_ms"], r["throughput_rps"]
    lines = [f"Peers: ResNet-50 {r['image_size']} px, {r['numeric_format']}, batch 1, one replica / one MLServer "
             f"worker, {r['threads']} ONNX Runtime thread(s) each ({machine})", "",
             "| server, protocol | p50 ms | p90 ms | req/s, 1 client | 8 clients | 16 clients |",
             "|---|---|---|---|---|---|"]
    for k in lat:
        t = thr[k]
        lines.append(f"| {k} | {lat[k]['p50']:.1f} | {lat[k]['p90']:.1f} | {t[1]:.1f} | {t[8]:.1f} | {t[16]:.1f} |")
    lines.append("")
    for proto in ("gRPC", "REST"):
        ours, peer = f"ours, OIP {proto}", f"MLServer, OIP {proto}"
        p50 = lat[ours]["p50"] / lat[peer]["p50"]
        rps = thr[ours][16] / thr[peer][16]
        lines.append(f"- OIP {proto}: our p50 / MLServer's {p50:.2f} ({'ours' if p50 <= 1 else 'MLServer'} ahead by "
                     f"{abs(1 - p50) * 100:.0f}%); our 16-client throughput / MLServer's {rps:.2f} "
                     f"({'ours' if rps >= 1 else 'MLServer'} ahead by {abs(rps - 1) * 100:.0f}%)")
    lines.append(f"- the same package, the same answer on both servers: {r['same_answer']}")
    return "\n".join(lines)
