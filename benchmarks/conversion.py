"""Conversion's memory and time (part of `make bench`; alone: python benchmarks/conversion.py).

ResNet-50 and ResNet-152 at 224 px and SSD-VGG at 300 px, seeded random weights, converted to their Quantized
default (ms-fp9) by the workspace converter as a notebook converts them. Measured: the peak RSS of the conversion's
whole process tree (the worker and its step processes, summed, sampled every 0.1 s: what has to fit in Binder's
2 GB beside the kernel), each step's process peak and seconds (from the conversion's own log), the wall time, and
what the device check judged. ``--zoo``: every Quantized class of the zoo at its own size instead.
Written to build/bench/conversion.md and conversion.json.
"""
from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

GOALS_GB = {"QuantizedResnet50": 1.5, "QuantizedResnet152": 2.5, "QuantizedSsdVgg": 2.0}   # issue 14's bars


def _tree_peak(pid, stop, out):
    import psutil
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while not stop.wait(0.1):
        total = 0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        out["peak"] = max(out.get("peak", 0), total)


def convert_one(model_class, log=print) -> dict:
    """Save, register and convert one zoo model; its measurements."""
    from accel_lib import AccelOnnxConverter, Model, Workspace, models
    from accel_lib.conversion import runner
    d = Path(tempfile.mkdtemp(prefix="accel-bench-convert-"))
    ws = Workspace.create("bench-convert", path=d / "ws")
    graph = getattr(models, model_class)(d / "m", weights="random")
    info = graph.save(d / "m" / "saved")
    src = Model.register(ws, info.path, model_class.lower())
    log(f"converting {model_class} ({runner.weights_bytes(info.path) / 2**20:.0f} MB of weights) ...")
    t0 = time.monotonic()
    op = AccelOnnxConverter.convert_tf_model(ws, src, info.input_tensors, info.output_tensors)
    stop, out = threading.Event(), {}
    sampler = threading.Thread(target=_tree_peak, args=(op._proc.pid, stop, out), daemon=True)
    sampler.start()
    ok = op.wait_for_completion(timeout=1800)
    stop.set()
    sampler.join()
    if not ok:
        raise RuntimeError(f"{model_class} did not convert:\n{op.get_log()[-3000:]}")
    took = time.monotonic() - t0
    per_step = []
    for line in op.log_lines(" done in "):
        name, rest = line.strip().split(" done in ", 1)
        seconds = float(rest.split(" s", 1)[0])
        gb = float(rest.split("peak memory ", 1)[1].split(" GB", 1)[0]) if "peak memory" in rest else None
        per_step.append({"step": name, "seconds": seconds, "peak_gb": gb})
    check = op.result.manifest.device_check
    net = op.result.timing["network"]
    return {"modeled_ms": round(1000 * net["latency_s"], 3), "modeled_ips": round(net["throughput_ips"], 1),
            "preset": op.result.timing["preset"], "cpu_ms": cpu_device_ms(op.result),"model": model_class, "weights_mb": round(runner.weights_bytes(info.path) / 2**20),
            "seconds": round(took, 1), "peak_tree_gb": round(out.get("peak", 0) / 2**30, 2),
            "goal_gb": GOALS_GB.get(model_class), "steps": per_step, "format": op.result.manifest.numeric_format,
            "input": op.result.manifest.stage("preprocess").params["output_height"],
            "device_check": None if check is None else {
                "layers": check.layers, "bound_used": check.bound_used, "boundary_fraction": check.boundary_fraction,
                "free_run_max_rel_diff": check.max_rel_diff}}


def cpu_device_ms(model, runs=7):
    """This CPU's time for the converted model's device stage at batch 1: the median of ``runs`` (measured)."""
    import statistics
    import tempfile

    import numpy as np

    from accel_lib.fpga.device.package import AcceleratorPackage
    pkg = AcceleratorPackage(model.download(tempfile.mkdtemp(prefix="accel-bench-pkg-"), exist_ok=True))
    x = np.zeros((1, *pkg.manifest.device.params["input_shape"][1:]), np.float32)
    times = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        pkg.featurize(x)
        if i:
            times.append(1000 * (time.perf_counter() - t0))
    return round(statistics.median(times), 1)


def run(model_classes=tuple(GOALS_GB), log=print) -> list:
    """Convert each model in turn (one at a time: the peak is each conversion's own)."""
    return [convert_one(m, log) for m in model_classes]


def report(rows, machine) -> str:
    """The markdown table."""
    lines = [f"Conversion, random weights, to each model's default format at its own input size ({machine})", "",
             "| model | format, px | weights MB | wall s | peak GB (process tree) | goal GB | largest step (GB) | device "
             "check: layers, bound used, run free | device stage, batch 1: CPU ms (measured) | FPGA ms, images/s "
             "(modeled) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        big = max((s for s in r["steps"] if s["peak_gb"] is not None), key=lambda s: s["peak_gb"], default=None)
        largest = f"{big['step']} ({big['peak_gb']:.2f})" if big else "-"
        c = r.get("device_check")
        judged = f"{c['layers']}, {c['bound_used']:.2g}, {c['free_run_max_rel_diff']:.2g}" if c else "-"
        lines.append(f"| {r['model']} | {r.get('format', '-')}, {r.get('input', '-')} | {r['weights_mb']} | "
                     f"{r['seconds']:.0f} | {r['peak_tree_gb']:.2f} | {r['goal_gb'] or '-'} | {largest} | {judged} | "
                     f"{r.get('cpu_ms', '-')} | {r.get('modeled_ms', '-')}, {r.get('modeled_ips', '-')} |")
    lines.append("")
    lines.append("Each step runs in a process of its own (accel_lib/conversion/runner.py); the tree's peak is the "
                 "worker plus the step running, sampled every 0.1 s. FPGA: the package's timing report on "
                 f"{rows[0].get('preset', '-') if rows else '-'} (modeled).")
    return "\n".join(lines)


def main():
    import argparse
    import os

    from accel_lib.machine import describe
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="build/bench")
    p.add_argument("models", nargs="*", default=list(GOALS_GB))
    p.add_argument("--zoo", action="store_true", help="every Quantized class of the zoo (the ones with a device)")
    args = p.parse_args()
    os.environ.setdefault("ACCEL_LIB_OFFLINE", "1")
    if args.zoo:
        from accel_lib.models import ZOO
        args.models = [c.__name__ for c in ZOO if c.__name__.startswith("Quantized")]
    rows = run(args.models)
    text = report(rows, describe())
    print(text)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "conversion.json").write_text(json.dumps({"machine": describe(), "conversions": rows}, indent=2))
    Path(args.out, "conversion.md").write_text(text + "\n")
    over = [r for r in rows if r["goal_gb"] and r["peak_tree_gb"] > r["goal_gb"]]
    for r in over:
        print(f"over the goal: {r['model']} peaked at {r['peak_tree_gb']:.2f} GB (goal {r['goal_gb']} GB)")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
