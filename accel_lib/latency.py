"""Latency, as the article's first section argues it: the FPGA's modeled batch-1 time beside this CPU's measured
time for the same device stage at each batch size, and one request decomposed from the client to the FPGA."""
from __future__ import annotations

import statistics
import time

import numpy as np

MEASURED, MODELED = "measured", "modeled"


def _p90(values):
    return sorted(values)[max(0, int(round(0.9 * len(values))) - 1)]


def formats_table(package, preset, names):
    """The device stage of ``package`` (an AcceleratorPackage) on ``preset`` in each format of ``names``: its
    modeled batch-1 latency and throughput."""
    import onnx

    from .fpga.device import timing
    model = onnx.load(str(package.path / package.manifest.device.file))
    shape = [1, *package.manifest.device.params["input_shape"][1:]]
    spec = timing.preset(preset)
    rows = []
    for name in names:
        net = timing.analyze(model, spec, name, input_shape=shape)["network"]
        rows.append({"format": name, "ms": 1000 * net["device_s"], "images_per_s": net["throughput_ips"],
                     "utilization": net["utilization"], "bottleneck": net["bottleneck"]})
    print(f"The device stage on {spec.name} ({spec.fpga}), modeled, at batch 1:")
    print(f"{'format':<12} {'ms':>8} {'images/s':>10} {'MVU busy':>9}  bottleneck")
    for r in rows:
        print(f"{r['format']:<12} {r['ms']:>8.3f} {r['images_per_s']:>10.0f} {r['utilization']:>9.0%}  "
              f"{r['bottleneck']}")
    return rows


def layer_plot(report, top=12):
    """The layers that take the most cycles (modeled), the bottleneck marked; returns the figure."""
    import matplotlib.pyplot as plt
    layers = sorted((r for r in report["layers"] if r["cycles"]), key=lambda r: -r["cycles"])[:top]
    total = report["network"]["cycles"]
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(layers) + 1.2))
    names = [f"{r['op']} {r['name'][-28:]}" for r in layers]
    colors = ["tab:red" if r["name"] == report["network"]["bottleneck"] else "tab:blue" for r in layers]
    ax.barh(names[::-1], [100 * r["cycles"] / total for r in layers][::-1], color=colors[::-1])
    ax.set_xlabel("share of the device stage's cycles, % (modeled)")
    ax.set_title(f"{report['preset']}, {report['numeric_format']}: the {len(layers)} busiest layers "
                 f"(bottleneck in red)")
    fig.tight_layout()
    return fig


def cpu_batches(package, batches, runs, seed=0):
    """This CPU's time for the device stage at each batch size, the batch sizes interleaved in every round:
    [{batch, p50_ms, p90_ms, images_per_s}] (measured)."""
    rng = np.random.default_rng(seed)
    shape = package.manifest.device.params["input_shape"][1:]
    xs = {b: rng.uniform(-120, 120, (b, *shape)).astype(np.float32) for b in batches}
    times = {b: [] for b in batches}
    for i in range(runs + 2):
        for b in batches:
            t0 = time.perf_counter()
            package.featurize(xs[b])
            if i >= 2:                                   # two warm-up rounds
                times[b].append(1000 * (time.perf_counter() - t0))
    rows = [{"batch": b, "p50_ms": statistics.median(v), "p90_ms": _p90(v),
             "images_per_s": 1000 * b / statistics.median(v)} for b, v in times.items()]
    print(f"{'batch':>5} {'p50 ms':>8} {'p90 ms':>8} {'images/s':>9}   (measured, this CPU, {runs} runs each)")
    for r in rows:
        print(f"{r['batch']:>5} {r['p50_ms']:>8.1f} {r['p90_ms']:>8.1f} {r['images_per_s']:>9.0f}")
    return rows


def batching_plot(rows, report):
    """Latency and throughput against batch size: the CPU measured, the FPGA modeled; returns the figure."""
    import matplotlib.pyplot as plt

    from .fpga.device import timing
    batches = [r["batch"] for r in rows]
    fpga_ms = [1000 * timing.seconds(report, b) for b in batches]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(batches, [r["p50_ms"] for r in rows], "o-", label="this CPU, p50 (measured)")
    a.plot(batches, fpga_ms, "s--", label=f"FPGA {report['preset']} (modeled)")
    a.set(xscale="log", yscale="log", xlabel="batch size", ylabel="ms per batch", title="latency")
    b.plot(batches, [r["images_per_s"] for r in rows], "o-", label="this CPU (measured)")
    b.plot(batches, [bs / (ms / 1000) for bs, ms in zip(batches, fpga_ms)], "s--", label="FPGA (modeled)")
    b.set(xscale="log", yscale="log", xlabel="batch size", ylabel="images/s", title="throughput")
    for ax in (a, b):
        ax.set_xticks(batches, [str(x) for x in batches])
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def decompose(service, image, requests):
    """One request from the client to the FPGA and back, ``requests`` times, as Triton's perf_analyzer splits it:
    the client's whole call, the replica's own stages (measured, from its answer's trailing metadata) and the
    FPGA's time (modeled); returns ([(part, ms, how)], the call's ms, the call's ms with the FPGA in place)."""
    from .client import client_from_service
    whole, pre, dev, heads, modeled = [], [], [], [], []
    with client_from_service(service) as client:
        for i in range(requests + 2):
            t0 = time.perf_counter()
            client.score_numpy_arrays({"images": [image]})
            t1 = time.perf_counter()
            if i >= 2:                                   # two warm-up calls
                whole.append(t1 - t0)
                pre.append(client.replica_us["preprocess"] / 1e6)
                dev.append(client.replica_us["device"] / 1e6)
                heads.append(client.replica_us["heads"] / 1e6)
                modeled.append(client.modeled_device_us / 1e6)
    ms = {k: 1000 * statistics.median(v) for k, v in
          {"whole": whole, "pre": pre, "dev": dev, "heads": heads, "modeled": modeled}.items()}
    rest = max(0.0, ms["whole"] - ms["pre"] - ms["dev"] - ms["heads"])
    parts = [("client, front end and transport (routing, key, TLS, gRPC): the call less the replica's stages",
              rest, MEASURED),
             ("host preprocessing (decode, resize, crop)", ms["pre"], MEASURED),
             ("device stage on this CPU (what the simulator costs)", ms["dev"], MEASURED),
             ("device stage on the FPGA", ms["modeled"], MODELED),
             ("host heads (the classifier)", ms["heads"], MEASURED)]
    print(f"one request, p50 of {requests} (the client's whole call: {ms['whole']:.1f} ms, measured)")
    for part, v, how in parts:
        print(f"  {v:8.3f} ms  {how:<8}  {part}")
    with_fpga = rest + ms["pre"] + ms["modeled"] + ms["heads"]
    print(f"with the FPGA's device stage in place of this CPU's: {with_fpga:.1f} ms "
          f"(measured, with the device modeled)")
    return parts, ms["whole"], with_fpga


def rtl_layer(package, image, rows=16):
    """The first 1x1 convolution of ``package``'s device stage, for the middle pixel of ``image`` and its first
    ``rows`` output channels, through the Verilog tile under Verilator: its values beside the specification (bit
    for bit) and the device stage's own (within the sum-order bound), its cycles beside the timing model's."""
    import onnx
    from onnx import helper as h

    from .conversion import checks
    from .fpga.device import dot, formats, graph, rtl, timing
    model = onnx.load(str(package.path / package.manifest.device.file))
    fmt = formats.get(package.manifest.device.numeric_format, package.manifest.device.block_size)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and inits[n.input[1]].shape[2:] == (1, 1))
    source = {q["output"]: q["input"] for q in graph.quantizers(model)}.get(conv.input[0], conv.input[0])
    model.graph.output.extend([h.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                               for t in (source, conv.output[0])])
    x_in, y = graph.session(model).run([source, conv.output[0]],
                                       {model.graph.input[0].name: package.preprocess([image])})
    py, px = x_in.shape[2] // 2, x_in.shape[3] // 2
    w = inits[conv.input[1]][:rows, :, 0, 0]
    bias = inits[conv.input[2]][:rows] if len(conv.input) > 2 else np.zeros(rows, np.float32)
    x = x_in[0, :, py, px]
    got, cycles = rtl.matvec(w, x, fmt)
    spec = dot.matvec(w, x, fmt)
    device = y[0, :rows, py, px] - bias
    qw, qx = formats.quantize(w, fmt, axis=-1), formats.quantize(x, fmt, axis=-1)
    size = np.abs(qw.astype(np.float64)) @ np.abs(qx.astype(np.float64))
    blocks = -(-x.size // fmt.block)
    bound = (checks.gamma(x.size) + checks.gamma(blocks)) * size + (np.abs(bias) + size) * 2.0 ** -23
    modeled = timing.tile_cycles(rows, x.size, lanes=fmt.block, engines=1, fill=rtl.FILL)
    same = bool((got.view(np.uint32) == spec.view(np.uint32)).all())
    within = bool((np.abs(got.astype(np.float64) - device) <= bound).all())
    print(f"{conv.name}: {rows} of its output channels x {x.size} inputs, in {fmt.name} (blocks of {fmt.block}), "
          f"through bfp_dot_tile.v under Verilator")
    print(f"  equal to the specification (accel_lib.fpga.device.dot) bit for bit: {same}")
    print(f"  within the sum-order bound of the deployed device stage (ONNX Runtime): {within} (largest "
          f"difference {np.abs(got - device).max():.2g}, bound {bound.min():.2g} to {bound.max():.2g})")
    print(f"  cycles: {cycles} simulated, {modeled} from the timing model's tile_cycles, ratio {cycles / modeled:.2f}")
    return {"same": same, "within": within, "cycles": cycles, "modeled": modeled}
