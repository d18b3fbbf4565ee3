"""Where the device stage's time goes: ONNX Runtime's own profile of the ResNet-50 featurizer, per operator type, in
fp32 and in each format asked for (`python benchmarks/profile.py ms-fp9 mxfp4`), the sessions' runs interleaved.
Milliseconds per image at batch 1, the mean over the runs; the table names the machine.
"""
import argparse
import collections
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))


def op_times(models, runs, x, warmup=3):
    """{label: {op type: ms per run}} from ONNX Runtime's profile of each (model, kernel) in ``models``, their runs
    interleaved (one of each in turn), the warm-up runs left out."""
    from run import _quiet_options

    from accel_lib.fpga.device import graph
    sessions = {}
    for label, (model, kernel) in models.items():
        opts = _quiet_options()
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="accel-profile-"), "ort")
        sessions[label] = graph.session(model, opts, kernel=kernel)
    feeds = {label: {s.get_inputs()[0].name: x} for label, s in sessions.items()}
    for _ in range(warmup + runs):
        for label, sess in sessions.items():
            sess.run(None, feeds[label])
    out = {}
    for label, sess in sessions.items():
        events = json.load(open(sess.end_profiling()))
        starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
        total = collections.Counter()
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= starts[warmup]:
                total[e["args"].get("op_name")] += e["dur"]
        out[label] = {op: us / runs / 1000 for op, us in total.items()}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("formats", nargs="*", default=["ms-fp9"])
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--image-size", type=int, default=224)
    args = p.parse_args()
    from run import device_graph

    from accel_lib import samples
    from accel_lib.fpga.device import graph
    from accel_lib.machine import describe
    fp32 = device_graph(args.image_size)
    x = samples.sample_batch(1, args.image_size, "BGR")
    models = {"fp32": (fp32, "onnx"), **{name: (graph.apply_format(fp32, name)[0], "auto") for name in args.formats}}
    columns = op_times(models, args.runs, x)
    ops = sorted({op for c in columns.values() for op in c}, key=lambda op: -max(c.get(op, 0) for c in columns.values()))
    print(f"Device stage by operator type, ms per image (ONNX Runtime's profile, mean of {args.runs} runs of each, "
          f"interleaved, batch 1, "
          f"{args.image_size} px; {describe()})\n")
    print("| operator | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for op in ops:
        if max(c.get(op, 0) for c in columns.values()) >= 0.05:
            print(f"| {op} | " + " | ".join(f"{c.get(op, 0):.2f}" for c in columns.values()) + " |")
    print("| all | " + " | ".join(f"{sum(c.values()):.1f}" for c in columns.values()) + " |")


if __name__ == "__main__":
    main()
