"""Serving benchmark: the package in-process (the floor) against the deployed service over gRPC and REST.

One run, contenders interleaved: batch-1 latency (p50, p90), throughput with 1, 8 and 16 clients, cold start
(deploy -> first good Predict, flash time 0), RSS per replica, and how long a killed replica takes to serve again.
Everything here is measured on this machine's CPU; nothing is an FPGA's latency.
"""
from __future__ import annotations

import base64
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path


def _pcts(ms):
    ms = sorted(ms)
    return round(statistics.median(ms), 2), round(ms[int(0.9 * (len(ms) - 1))], 2)


def _throughput(call, clients, seconds):
    """Requests per second from ``clients`` threads calling ``call`` for ``seconds``."""
    stop = time.monotonic() + seconds
    counts = [0] * clients

    def work(i):
        while time.monotonic() < stop:
            call()
            counts[i] += 1
    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - t0)


def setup(name, image_size, numeric_format, nodes, log=print):
    """A workspace with ResNet-50 (random weights) converted to ``numeric_format``, its image and a cluster of
    ``nodes`` nodes: (workspace, image, cluster, folder)."""
    from accel_lib import (AccelContainerImage, AccelOnnxConverter, AksCompute, ComputeTarget, Image, Model,
                           Workspace)
    from accel_lib.models import Resnet50
    d = Path(tempfile.mkdtemp(prefix=f"accel-bench-{name}-"))
    ws = Workspace.create(name, path=d / "ws")
    log(f"{name}: converting ResNet-50 at {image_size} px to {numeric_format} (random weights) ...")
    info = Resnet50(d / "m", weights="random", image_size=image_size).save(d / "m" / "r50")
    src = Model.register(ws, info.path, "r50")
    op = AccelOnnxConverter.convert_tf_model(ws, src, "images", "output_alias", numeric_format=numeric_format)
    assert op.wait_for_completion(timeout=1800), op.get_log()
    img = Image.create("r50-image", [op.result], AccelContainerImage.image_configuration(), ws)
    target = ComputeTarget.create(ws, name, AksCompute.provisioning_configuration(agent_count=nodes))
    return ws, img, target, d


def start_and_recovery(ws, img, target, data, trials=7, log=print):
    """Cold start (deploy -> the first good Predict) and recovery (SIGKILL of the replica -> the next good
    Predict), each as a client polling as a user would sees it: one keyed replica as a process, flash 0 s, the
    two interleaved in each of ``trials`` rounds. Returns their samples (s) and p50/p90."""
    import psutil

    from accel_lib import AksWebservice, Webservice, client_from_service
    cold, back = [], []
    for i in range(trials):
        t0 = time.monotonic()
        svc = Webservice.deploy_from_image(ws, f"start-{i}", img, AksWebservice.deploy_configuration(
            flash_seconds=0.0, runtime="process", auth_enabled=True), target)
        with client_from_service(svc, retry_seconds=60) as client:
            client.score_numpy_arrays({"images": [data]})
            cold.append(time.monotonic() - t0)
            pid = svc.replica_status()[0].pid
            psutil.Process(pid).kill()
            t0 = time.monotonic()
            while True:                         # until the killed replica's successor answers
                client.score_numpy_arrays({"images": [data]})
                if any(r.pid != pid and r.state == "Healthy" for r in svc.replica_status()):
                    break
            back.append(time.monotonic() - t0)
        svc.delete()
        log(f"round {i + 1}/{trials}: cold start {cold[-1]:.2f} s, recovery {back[-1]:.2f} s")
    return {"cold_start_s": dict(zip(("p50", "p90"), _pcts(cold))), "recovery_s": dict(zip(("p50", "p90"), _pcts(back))),
            "cold_start_samples_s": [round(c, 3) for c in cold], "recovery_samples_s": [round(b, 3) for b in back]}


def run(image_size=224, numeric_format="ms-fp9", replicas=2, requests_each=60, seconds=5.0, log=print):
    """Build, convert, deploy and measure; returns the result rows (a dict)."""
    import psutil
    import requests

    from accel_lib import AksWebservice, Webservice, client_from_service, samples
    from accel_lib.fpga.device.package import AcceleratorPackage

    ws, img, target, d = setup("bench", image_size, numeric_format, replicas, log)
    out = {"image_size": image_size, "numeric_format": numeric_format, "replicas": replicas}
    try:
        data = samples.encode(samples.synthetic_image(1, image_size + 76, image_size + 176))
        from accel_lib.fpga.cluster import specs
        share = specs.threads_per_replica(os.cpu_count() or 1, replicas, 6)
        pkg = AcceleratorPackage(img.context / "package")                       # every core
        pkg_share = AcceleratorPackage(img.context / "package", threads=share)  # a replica's share of them
        name = pkg.default_outputs[0]

        out.update(start_and_recovery(ws, img, target, data, log=log))
        svc = Webservice.deploy_from_image(ws, "r50-svc", img, AksWebservice.deploy_configuration(
            num_replicas=replicas, flash_seconds=0.0, runtime="process"), target)
        client = client_from_service(svc, retry_seconds=60)
        svc.wait_for_deployment()
        out["rss_mb_per_replica"] = [round(psutil.Process(r.pid).memory_info().rss / 2**20)
                                     for r in svc.replica_status()]

        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
        stock_req = predict_pb2.PredictRequest()
        stock_req.inputs["images"].CopyFrom(tf.make_tensor_proto([data]))
        stock_req.output_filter.append(name)
        stock_channel = grpc.insecure_channel(svc.scoring_uri.split("://")[1])
        stock = prediction_service_pb2_grpc.PredictionServiceStub(stock_channel)
        key = svc.get_keys()[0]                              # keys are on, as by default on AKS
        route = [("x-ms-aml-grpc-service-route", f"/api/v1/service/{svc.name}"), ("authorization", f"Bearer {key}")]
        body = {"instances": [{"b64": base64.b64encode(data).decode()}]}
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {key}"
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=32))
        paths = {
            "in-process": lambda: pkg.run([data], [name]),
            f"in-process, {share} thread(s)": lambda: pkg_share.run([data], [name]),
            "gRPC": lambda: client.score_numpy_arrays({"images": [data]}, outputs=name),
            "REST": lambda: session.post(svc.rest_uri, json=body, timeout=60).raise_for_status(),
            "stock TF Serving stub": lambda: stock.Predict(stock_req, timeout=60, metadata=route),
        }
        for call in paths.values():            # warm up
            for _ in range(3):
                call()
        times = {k: [] for k in paths}
        for _ in range(requests_each):         # interleaved: one of each per round
            for k, call in paths.items():
                t = time.perf_counter()
                call()
                times[k].append(1000 * (time.perf_counter() - t))
        out["latency_ms"] = {k: dict(zip(("p50", "p90"), _pcts(v))) for k, v in times.items()}
        out["latency_samples_ms"] = {k: [round(t, 3) for t in v] for k, v in times.items()}
        out["throughput_rps"] = {k: {} for k in paths}
        for clients in (1, 8, 16):
            for k, call in paths.items():      # the contenders in turn at each client count
                out["throughput_rps"][k][clients] = round(_throughput(call, clients, seconds), 1)

        victim = svc.replica_status()[0]
        psutil.Process(victim.pid).kill()
        t0 = time.monotonic()
        while True:
            reps = svc.replica_status()
            if svc.restart_count >= 1 and all(r.state == "Healthy" and r.pid != victim.pid for r in reps):
                break
            time.sleep(0.02)
        out["killed_replica_healthy_again_s"] = round(time.monotonic() - t0, 2)
        client.close()
        stock_channel.close()
        svc.delete()
    finally:
        for s in Webservice.list(ws):
            s.delete()
        target.delete()
    return out


def plots(results, folder):
    """PNG plots: latency distribution per path, throughput against clients, the device stage per format."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    r = results.get("serving")
    if r:
        fig, ax = plt.subplots(figsize=(8, 4))
        names = list(r["latency_samples_ms"])
        ax.boxplot([r["latency_samples_ms"][k] for k in names], showfliers=True)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=15)
        ax.set_ylabel("batch-1 latency, ms (measured)")
        ax.set_title(f"ResNet-50 {r['image_size']} px, {r['numeric_format']}: latency per path")
        made.append(_save(fig, folder / "latency.png"))
        fig, ax = plt.subplots(figsize=(7, 4))
        for k, row in r["throughput_rps"].items():
            xs = sorted(int(c) for c in row)
            ax.plot(xs, [row[c] if c in row else row[str(c)] for c in xs], marker="o", label=k)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("requests / s (measured)")
        ax.set_title(f"Throughput, {r['replicas']} replicas")
        ax.legend()
        made.append(_save(fig, folder / "throughput.png"))
    rows = results.get("device_stage")
    if rows:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar([x.get("label", x["format"]).replace(" (", "\n(") for x in rows], [x["p50_ms"] for x in rows])
        ax.tick_params(axis="x", labelsize=8)
        ax.set_ylabel("device stage p50, ms (measured on the host CPU)")
        ax.set_title("The simulated device's cost per format")
        made.append(_save(fig, folder / "device_stage.png"))
    return made


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def report(r, machine):
    """The serving results as a markdown table."""
    lat, thr = r["latency_ms"], r["throughput_rps"]
    floor = lat["in-process"]["p50"]
    best = max(max(thr[k].values()) for k in thr if k.startswith("in-process"))
    lines = [f"Serving: ResNet-50 {r['image_size']} px, {r['numeric_format']}, {r['replicas']} replicas, batch 1 "
             f"({machine})", "",
             "| path | p50 ms | p90 ms | p50 / in-process | req/s, 1 client | 8 clients | 16 clients |",
             "|---|---|---|---|---|---|---|"]
    for k in lat:
        t = thr[k]
        lines.append(f"| {k} | {lat[k]['p50']:.1f} | {lat[k]['p90']:.1f} | {lat[k]['p50'] / floor:.2f} | "
                     f"{t[1]:.1f} | {t[8]:.1f} | {t[16]:.1f} |")
    share = next(k for k in lat if k.startswith("in-process, "))
    lines += ["", f"- gRPC p50 / in-process p50 with a replica's share of the cores ({share}): "
                  f"{lat['gRPC']['p50'] / lat[share]['p50']:.2f} (the front end's and gRPC's own cost)",
              f"- gRPC throughput with 16 clients / best in-process: {thr['gRPC'][16] / best:.2f}",
              f"- cold start (deploy -> first good Predict, one keyed replica as a process, flash 0 s, a client "
              f"polling as a user would): p50 {r['cold_start_s']['p50']:.2f} s, p90 {r['cold_start_s']['p90']:.2f} s "
              f"over {len(r['cold_start_samples_s'])} rounds",
              f"- recovery (SIGKILL of that replica -> the next good Predict, interleaved with the cold starts): "
              f"p50 {r['recovery_s']['p50']:.2f} s, p90 {r['recovery_s']['p90']:.2f} s",
              f"- RSS per replica: {', '.join(str(m) for m in r['rss_mb_per_replica'])} MB",
              f"- with {r['replicas']} replicas under no load, a killed one is Healthy again after "
              f"{r['killed_replica_healthy_again_s']:.2f} s (restart + package load; flash 0 s)"]
    return "\n".join(lines)
