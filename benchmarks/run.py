"""Benchmarks (`make bench`): batch-1 latency of the device stage in fp32 and in each narrow format, conversion's
memory and time (conversion.py), the device check on ResNet-152 at 224 px (device_check.py), what each fine-tuning
method buys (finetune.py), serving (in-process vs
the service over gRPC and REST; see serving.py), a peer server beside ours (MLServer over the Open Inference
Protocol; see peers.py), then detection training (notebook 07's time and held-out mAP, fp32 beside the device
format; see detection.py).
Tables and JSON go to build/bench/.

Measured on this machine's CPU with ONNX Runtime: the simulator's cost, not an FPGA's latency (not modelled here).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from accel_lib.machine import describe


def device_graph(image_size):
    """A ResNet-50 featurizer (seeded random weights) converted to ONNX, as the converter does."""
    from accel_lib.conversion import fp32_featurizer
    from accel_lib.models import Resnet50
    d = tempfile.mkdtemp(prefix="accel-bench-")
    info = Resnet50(d, weights="random", image_size=image_size).save(os.path.join(d, "m"))
    return fp32_featurizer(info.path)


def interleaved_ms(contenders, x, runs, warmup=5):
    """{label: [ms, ...]} with one run of each contender in turn, ``runs`` times (after ``warmup`` rounds)."""
    feeds = {label: {sess.get_inputs()[0].name: x} for label, sess in contenders.items()}
    times = {label: [] for label in contenders}
    for i in range(warmup + runs):
        for label, sess in contenders.items():
            t0 = time.perf_counter()
            sess.run(None, feeds[label])
            if i >= warmup:
                times[label].append(1000 * (time.perf_counter() - t0))
    return times


def _quiet_options():
    """Session options whose threads sleep between runs: interleaved sessions must not spin against each other."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def _p90(v):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(0.9 * (len(v) - 1))))]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--runs", type=int, default=60)
    p.add_argument("--out", default="build/bench", help="where the table and JSON go")
    p.add_argument("--skip-serving", action="store_true", help="no serving measurements")
    p.add_argument("--skip-conversion", action="store_true", help="no conversion measurements (memory and time)")
    p.add_argument("--skip-peers", action="store_true", help="no MLServer beside our front end")
    p.add_argument("--only-peers", action="store_true", help="only MLServer beside our front end")
    p.add_argument("--skip-detection", action="store_true", help="no detection training")
    p.add_argument("--skip-device-check", action="store_true", help="no device check on ResNet-152 at 224 px")
    p.add_argument("--skip-finetune", action="store_true", help="no fine-tuning methods (about 25 minutes)")
    args = p.parse_args()
    if args.only_peers:
        import peers
        machine = describe()
        r = peers.run(image_size=args.image_size)
        print(peers.report(r, machine))
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "peers.json"), "w") as f:
            json.dump({"machine": machine, "peers": r}, f, indent=2)
        return 0
    from accel_lib import samples
    from accel_lib.fpga.device import formats, graph, kernel, timing
    fp32 = device_graph(args.image_size)
    x = samples.sample_batch(1, args.image_size, "BGR")
    fused = kernel.use_fused("auto")
    contenders, info = {}, {}
    for name in formats.NAMES:   # one run, side by side: fp32, every format, and ms-fp9 with the pure-ONNX quantizer
        model, layers = graph.apply_format(fp32, name)
        choices = [("fused kernel" if fused else "ONNX ops", "auto")] if name != "fp32" else [("-", "onnx")]
        if name == "ms-fp9" and fused:
            choices.append(("ONNX ops", "onnx"))
        for quantizer, choice in choices:
            label = f"{name} ({quantizer})" if name != "fp32" else name
            contenders[label] = graph.session(model, _quiet_options(), kernel=choice)
            info[label] = {"format": name, "quantizer": quantizer, "layers": len(layers)}
    times = interleaved_ms(contenders, x, args.runs)
    base = statistics.median(times["fp32"])
    machine = describe()
    spec = timing.preset(timing.DEFAULT_PRESET)
    side = args.image_size * args.image_size
    modeled = {name: timing.analyze(fp32, spec, name, input_bytes=4 * 3 * side, output_bytes=4 * 2048,
                                    input_shape=[1, args.image_size, args.image_size, 3])["network"]
               for name in formats.NAMES}
    lines = [f"Device stage, ResNet-50 featurizer, batch 1, {args.image_size}x{args.image_size}, {args.runs} runs "
             f"of each, interleaved ({machine}); beside it the FPGA's own time, modeled on {spec.name} "
             f"({spec.fpga})", "",
             "| format | quantizer | p50 ms (measured, CPU) | p90 ms | x fp32 (p50) | quantized layers | "
             "ms at batch 1 (modeled, FPGA) | images/s (modeled, FPGA) |", "|---|---|---|---|---|---|---|---|"]
    rows = []
    for label, v in times.items():
        r = {"label": label, **info[label], "p50_ms": round(statistics.median(v), 2), "p90_ms": round(_p90(v), 2),
             "min_ms": round(min(v), 2)}
        r["ratio"] = round(statistics.median(v) / base, 2)
        net = modeled[r["format"]]
        r["modeled_ms"], r["modeled_ips"] = round(1000 * net["latency_s"], 3), round(net["throughput_ips"], 1)
        rows.append(r)
        lines.append(f"| {r['format']} | {r['quantizer']} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | "
                     f"{r['ratio']:.2f} | {r['layers']} | {r['modeled_ms']:.2f} | {r['modeled_ips']:.0f} |")
    lines.append("\nMeasured: the simulator's cost on this host's CPU. Modeled: what the FPGA itself would take "
                 "(fpga/device/timing.py; its assumptions are in its presets). The two quantizers give identical "
                 "quantized values, bit for bit (tests/test_kernel.py).")
    results = {"machine": machine, "device_stage": rows}
    import fpga_npu
    results["fpga_npu"] = fpga_npu.compare()
    lines += ["", "The timing model against intel/fpga-npu's RTL simulation (modeled; `python benchmarks/fpga_npu.py`)",
              "", fpga_npu.table(results["fpga_npu"])]
    print("\n".join(lines), flush=True)
    if not args.skip_conversion:
        import conversion
        results["conversion"] = conversion.run()
        table = conversion.report(results["conversion"], machine)
        print("\n" + table, flush=True)
        lines += ["", table]
    if not args.skip_device_check:
        import device_check
        results["device_check"] = device_check.run()
        table = device_check.report(results["device_check"], machine)
        print("\n" + table, flush=True)
        lines += ["", table]
    if not args.skip_finetune:
        import finetune
        small, sq, where = finetune.smallresnet(), finetune.squeezenet(), finetune.domains()
        results["finetune"] = {"smallresnet": small, "squeezenet": sq, "domains": where}
        table = finetune.report(small, sq, machine, where)
        print("\n" + table, flush=True)
        lines += ["", table]
    if not args.skip_serving:
        import serving
        results["serving"] = serving.run(image_size=args.image_size)
        table = serving.report(results["serving"], machine)
        print("\n" + table)
        lines += ["", table]
    if not args.skip_peers:
        import peers
        results["peers"] = peers.run(image_size=args.image_size)
        table = peers.report(results["peers"], machine)
        print("\n" + table)
        lines += ["", table]
    if not args.skip_detection:
        import detection
        results["detection"] = detection.run()
        table = detection.report(results["detection"], machine)
        print("\n" + table)
        lines += ["", table]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    import serving
    pngs = serving.plots(results, args.out)
    print(f"\nwritten: {args.out}/results.md, {args.out}/results.json, " + ", ".join(p.name for p in pngs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
