"""The device check on the article's ResNet-152 at 224 px (part of `make bench`; alone: python
benchmarks/device_check.py). Per format and quantizer (the fused kernel, the pure-ONNX subgraph: ONNX Runtime fuses
the graph around them differently, so they sum in different orders): the whole network run free against the numpy
reference device, the first layer whose quantized input differs there and by how many values, how many differ by
the last layer, and what the check judges: every quantized layer on the reference's own input. Seeded random
weights, one generated image. Written to build/bench/device_check.md and device_check.json.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

FORMATS = ("ms-fp9", "msfp12", "msfp16", "mxfp8-e4m3")
QUANTIZERS = ("fused", "onnx")


def featurizer(model_class="QuantizedResnet152", image_size=224):
    """(fp32 device graph, preprocessing) of a zoo model with seeded random weights, as the converter makes it."""
    from accel_lib import models
    from accel_lib.conversion import fp32_featurizer
    d = tempfile.mkdtemp(prefix="accel-bench-check-")
    info = getattr(models, model_class)(d, weights="random", image_size=image_size).save(Path(d) / "m")
    return fp32_featurizer(info.path), info.metadata.preprocessing


def free_run(device_model, x, kernel):
    """The device graph run free by ONNX Runtime: its outputs and every quantizer's output."""
    import onnx
    from onnx import helper

    from accel_lib.fpga.device import graph
    m = onnx.ModelProto()
    m.CopyFrom(device_model)
    for q in graph.quantizers(m):
        m.graph.output.append(helper.make_empty_tensor_value_info(q["output"]))
    sess = graph.session(m, kernel=kernel, inplace=True)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))


def measure(fp32, prep, fmt_name, log=print) -> list[dict]:
    import numpy as np

    from accel_lib.conversion import checks
    from accel_lib.fpga.device import graph, formats, host
    from accel_lib.fpga.device.reference import reference_device
    from accel_lib.samples import sample_images
    fmt = formats.get(fmt_name)
    dev, _ = graph.apply_format(fp32, fmt)
    x = host.preprocess(sample_images(1, seed=31), **prep)
    free = {k: free_run(dev, x, k) for k in QUANTIZERS}
    quantized_input = {n.output[0]: n.input[0] for n in dev.graph.node if n.op_type in graph.MATRIX_OPS}
    apart = {k: [] for k in QUANTIZERS}
    judge = checks._LayerJudge(dev, fmt)

    def both(node, x_in, xq, y, magnitude, terms):
        for k in QUANTIZERS:
            got = free[k][quantized_input[node.output[0]]]
            apart[k].append((node.name or node.output[0], int((got != xq).sum()), int(xq.size)))
        judge(node, x_in, xq, y, magnitude, terms)
    ref = reference_device(fp32, fmt, on_layer=both)(x)
    judge.flush()
    rows = []
    for k in QUANTIZERS:
        rel = max(float(np.abs(free[k][n] - ref[n]).max() / np.abs(ref[n]).max()) for n in ref)
        first = next((i for i, a in enumerate(apart[k]) if a[1]), None)
        rows.append({"format": fmt_name, "quantizer": k, "free_run_max_rel_diff": rel,
                     "first_layer_apart": first, "values_apart_there": apart[k][first][1] if first is not None else 0,
                     "values_there": apart[k][first][2] if first is not None else 0,
                     "last_layer_apart": apart[k][-1][1], "last_layer_values": apart[k][-1][2],
                     "layers": judge.layers, "bound_used": judge.used, "boundary_values": judge.boundary})
        log(f"{fmt_name:11s} {k:5s} free run {rel:.3g}; first layer apart: {first}")
    return rows


def report(rows, machine) -> str:
    lines = [f"### The device check on QuantizedResnet152 at 224 px (random weights, one image; {machine})", "",
             "| format | quantizer | run free: largest difference / largest feature | first layer (0-154) whose "
             "quantized input differs (values) | at the last layer | judged layer by layer (quantizer as built): "
             "layers, bound used |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        first = (f"{r['first_layer_apart']} ({r['values_apart_there']:,} of {r['values_there']:,})"
                 if r["first_layer_apart"] is not None else "none")
        lines.append(f"| {r['format']} | {r['quantizer']} | {r['free_run_max_rel_diff']:.2g} | {first} | "
                     f"{r['last_layer_apart']:,} of {r['last_layer_values']:,} | {r['layers']}, "
                     f"{r['bound_used']:.2g} |")
    return "\n".join(lines)


def run(formats=FORMATS, log=print) -> list[dict]:
    fp32, prep = featurizer()
    rows = []
    for f in formats:
        rows += measure(fp32, prep, f, log=log)
    return rows


def main():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from accel_lib.machine import describe
    out = Path("build/bench")
    out.mkdir(parents=True, exist_ok=True)
    rows = run()
    table = report(rows, describe())
    (out / "device_check.md").write_text(table + "\n")
    (out / "device_check.json").write_text(json.dumps({"machine": describe(), "rows": rows}, indent=1))
    print(table)


if __name__ == "__main__":
    main()
