"""Benchmarks (`make bench`): batch-1 latency of the device stage in fp32 and in each narrow format.

Measured on this machine's CPU with ONNX Runtime: the simulator's cost, not an FPGA's latency (not modelled here).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time


def device_graph(image_size):
    """A ResNet-50 featurizer (seeded random weights) converted to ONNX, as the converter does."""
    from accel_lib.conversion.worker import convert_stage, load_saved_model
    from accel_lib.models import Resnet50
    d = tempfile.mkdtemp(prefix="accel-bench-")
    info = Resnet50(d, weights="random", image_size=image_size).save(os.path.join(d, "m"))
    return convert_stage(load_saved_model(info.path), info.metadata, "featurize")


def p50_ms(sess, x, runs, warmup=5):
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times), min(times)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    import onnxruntime as ort

    from accel_lib import samples
    from accel_lib.fpga import device, formats
    fp32 = device_graph(args.image_size)
    x = samples.sample_batch(1, args.image_size, "BGR")
    rows = []
    for name in formats.NAMES:   # one run, side by side: fp32 first, then every format
        model, layers = device.apply_format(fp32, name)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        med, best = p50_ms(sess, x, args.runs)
        rows.append({"format": name, "p50_ms": round(med, 2), "min_ms": round(best, 2), "layers": len(layers)})
    base = rows[0]["p50_ms"]
    print(f"\nDevice stage, ResNet-50 featurizer, batch 1, {args.image_size}x{args.image_size}, {args.runs} runs "
          f"(measured on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, ONNX Runtime "
          f"{ort.__version__})")
    print(f"{'format':<10}{'p50 ms':>10}{'min ms':>10}{'x fp32':>9}{'quantized layers':>18}")
    for r in rows:
        r["ratio"] = round(r["p50_ms"] / base, 2)
        print(f"{r['format']:<10}{r['p50_ms']:>10.1f}{r['min_ms']:>10.1f}{r['ratio']:>9.2f}{r['layers']:>18}")
    print("The FPGA's own latency is not modelled: these are the simulator's costs on the host CPU.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
