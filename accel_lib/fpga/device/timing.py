"""The simulated FPGA's timing, modeled: how long its device stage would take on a Brainwave-style NPU.

One ``DeviceSpec`` (every field documented with its source) derives everything. Its matrix-vector unit (MVU) is
``tiles`` x ``engines`` dot-product engines of ``lanes`` multipliers (the native vector); the tiles split a
matrix's columns, the engines its rows, and each engine takes one native vector of one row a cycle. A layer runs
after the one before it (a single instruction stream, as in Brainwave and intel/fpga-npu), so the critical path is
the sum of the layers:

- a convolution or dense layer is matrix-vector work: ``ceil(rows/engines) * ceil(ceil(cols/lanes)/tiles)``
  cycles per vector (an output pixel, or a row of a batch), plus the MVU's pipeline fill once per layer
  (``tile_cycles`` is one tile's share, the hook the RTL tile is checked against);
- pooling on the multi-function units (``mfus``, one native vector a cycle each); an element-wise op right after a
  matrix op is chained into its output (no cycles of its own), as Brainwave's MFUs are; reshapes cost nothing;
- weights that do not fit the on-chip memory stream from DRAM on each batch, overlapped with the compute;
- the input and the features cross the host link.

Only the silicon is modeled; every figure this module gives is modeled, never measured, and says so.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from . import formats
from .graph import MATRIX_OPS

REPORT_FILE = "timing.json"                  # in the accelerator package
REPORT_FORMAT = "accel_lib.timing/1"
MULTIPLIER_BITS = 19                         # one of a DSP block's two 18x19 multipliers (Arria 10, Stratix 10)


@dataclass(frozen=True)
class DeviceSpec:
    """One device's timing assumptions. ``sources`` names where each figure comes from; what no source gives is
    said to be an assumption there."""
    name: str                     # the preset's name, which a package records and a cluster checks
    fpga: str                     # the part
    tiles: int                    # MVU tiles: each takes a share of a matrix's columns
    engines: int                  # dot-product engines per tile: rows computed at once
    lanes: int                    # multipliers per engine: the native vector, values of one row per cycle
    clock_mhz: float              # the NPU's clock
    native_format: str            # the format the published configuration (tiles x engines x lanes) is for
    dsps: int                     # DSP blocks of the part
    onchip_mb: float              # on-chip memory for weights (M20K), in MB
    dram_gbps: float              # off-chip memory bandwidth, GB/s
    link_gbps: float              # the host link's bandwidth (PCIe), GB/s
    link_latency_us: float        # one transfer's fixed cost on the host link (DMA set-up), µs
    round_trip: int               # cycles from a write-back through the MVU and the MFUs to the result's write-back
    mfu_round_trip: int           # the same through the MFUs alone
    start: int = 0                # cycles from start to the first instruction's issue
    mfus: int = 2                 # multi-function units, each one native vector a cycle
    batch: int = 1                # vectors one MVU instruction takes at once (a tensor block's dot products)
    cores: int = 1                # identical cores, each with its own batch
    min_rows: int = 0             # the compiler pads a matrix to at least this many rows
    chunk: int = 1                # row blocks per accumulator chunk (the drain's last chunk)
    sources: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def macs(self) -> int:
        """The MVU's multipliers in its native format."""
        return self.tiles * self.engines * self.lanes

    def peak_tops(self, fmt_name=None) -> float:
        """Peak arithmetic, 2 operations per multiply-accumulate, in tera-operations per second (modeled)."""
        return 2 * self.macs_in(fmt_name or self.native_format) * self.clock_mhz * 1e6 / 1e12

    def engines_in(self, fmt_name) -> int:
        """Engines per tile in ``fmt_name``: the published count scaled by how many of its products pack into a
        DSP block against the native format's (``macs_per_dsp``; modeled)."""
        ratio = macs_per_dsp(fmt_name) / macs_per_dsp(self.native_format)
        return max(1, int(self.engines * ratio))

    def macs_in(self, fmt_name) -> int:
        return self.tiles * self.engines_in(fmt_name) * self.lanes

    def to_dict(self) -> dict:
        return asdict(self)


def multiplier_width(fmt_name) -> int:
    """The bits of one element product's operands: a block format's magnitude bits, an MX float's mantissa with its
    hidden bit, an integer's bits (fp32: 24, its significand)."""
    if fmt_name == "fp32":
        return 24
    f = formats.get(fmt_name)
    if isinstance(f, formats.MxFormat):
        e = f.element
        return e.mbits + 1 if e.ebits else e.mbits + 1
    return f.mantissa_bits


def macs_per_dsp(fmt_name) -> int:
    """Products one DSP block computes a cycle in ``fmt_name`` (modeled): fp32 uses the block's hard floating point
    (1); narrower products share one operand (the input element, common to an engine's rows), so each of the
    block's two 18x19 multipliers packs ``floor(19 / (2 w))`` of them, each product 2w bits apart (at least 1)."""
    if fmt_name == "fp32":
        return 1
    w = multiplier_width(fmt_name)
    return 2 * max(1, MULTIPLIER_BITS // (2 * w))


def tile_cycles(rows, cols, lanes, engines, vectors=1, fill=0) -> int:
    """Cycles for one tile of ``engines`` x ``lanes`` to multiply a ``rows`` x ``cols`` matrix by ``vectors``
    vectors: each engine takes one native vector of one row a cycle, the rows in groups of ``engines``."""
    return vectors * math.ceil(rows / engines) * math.ceil(cols / lanes) + fill


def mvu_cycles(spec: DeviceSpec, rows, cols, vectors=1, fmt_name=None) -> int:
    """Steady cycles of the whole MVU for ``vectors`` matrix-vector products of a ``rows`` x ``cols`` matrix (no
    fill): the tiles split the column blocks, the engines the rows."""
    engines = spec.engines_in(fmt_name or spec.native_format)
    col_blocks = math.ceil(cols / spec.lanes)
    return vectors * math.ceil(rows / engines) * math.ceil(col_blocks / spec.tiles)


def weight_bytes(params, fmt_name) -> float:
    """Bytes ``params`` weights take on the device in ``fmt_name`` (the shared exponents included)."""
    bits = 32.0 if fmt_name == "fp32" else formats.get(fmt_name).bits_per_value
    return params * bits / 8


# -- the presets ------------------------------------------------------------------------------------
A10 = "Intel, Arria 10 Device Overview (683332), the GX 1150 column"
NPU = "intel/fpga-npu (Boutros et al., FPT 2020), rtl/npu.vh and compiler/compiler.py"
PIPELINE = ("intel/fpga-npu's RTL round trips (write-back -> MVU -> MFUs -> write-back), taken for any "
            "Brainwave-style pipeline: an assumption")
ARRIA10 = dict(
    tiles=6, engines=11, lanes=128, clock_mhz=300.0, native_format="ms-fp9", dsps=1518, onchip_mb=6.6,
    dram_gbps=34.0, link_gbps=7.9, link_latency_us=2.0, round_trip=132, mfu_round_trip=68, start=47, mfus=2)
ARRIA10_SOURCES = {
    "dsps": f"1,518 variable-precision DSP blocks, each two 18x19 multipliers: {A10}",
    "onchip_mb": f"2,713 M20K blocks, 53 Mb = 6.6 MB: {A10}",
    "lanes": "128: Brainwave's native vector, one 5-bit exponent per 128 values (Chung et al., IEEE Micro 2018)",
    "tiles, engines": "an assumption: 6 x 11 engines of 128 lanes (8,448 multipliers), which ms-fp9 fits in 93% "
                      "of the part's DSPs at 6 products a block (macs_per_dsp)",
    "clock_mhz": "an assumption: 300 MHz, intel/fpga-npu's clock on a newer part",
    "dram_gbps": "an assumption: two DDR4-2133 x64 channels, 34 GB/s (Azure does not publish its card's memory)",
    "link_gbps": "PCIe Gen3 x8, 7.9 GB/s a direction: Intel, Arria 10 Avalon-ST for PCIe user guide (683647)",
    "round_trip, mfu_round_trip, start": PIPELINE,
}
PRESETS = {
    "arria10-pb6": DeviceSpec(name="arria10-pb6", fpga="Intel Arria 10 GX 1150 (Azure Standard_PB6s: six vCPUs "
                              "and one Arria 10, Azure's documentation)", **ARRIA10, sources=ARRIA10_SOURCES),
    "arria10-edge": DeviceSpec(name="arria10-edge", fpga="Intel Arria 10 GX 1150 (Azure Data Box Edge: one Arria "
                               "10, Azure's documentation)", **ARRIA10, sources=ARRIA10_SOURCES),
    "brainwave-s10": DeviceSpec(
        name="brainwave-s10", fpga="Intel Stratix 10 GX 2800 (Brainwave, ISCA 2018)", tiles=6, engines=125,
        lanes=128, clock_mhz=250.0, native_format="ms-fp8", dsps=5760, onchip_mb=30.5, dram_gbps=34.0,
        link_gbps=7.9, link_latency_us=2.0, round_trip=132, mfu_round_trip=68, start=47, mfus=2, sources={
            "macs": "96,000 multiply-accumulators: Fowers et al., A Configurable Cloud-Scale DNN Processor for "
                    "Real-Time AI, ISCA 2018 (abstract); 6 x 125 engines of 128 lanes is an assumption that keeps "
                    "that count and the 128-value native vector",
            "clock_mhz": "an assumption: 250 MHz (96,000 x 2 x 250 MHz = 48 TFLOPS peak, beside the published "
                         "39.5 TFLOPS effective at batch 1, Chung et al., IEEE Micro 2018)",
            "dsps, onchip_mb": "5,760 DSP blocks and 244 Mb of M20K: Intel, Stratix 10 GX 2800 product table",
            "dram_gbps, link_gbps": "assumptions, as the Arria 10's",
            "round_trip, mfu_round_trip, start": PIPELINE}),
    "fpga-npu": DeviceSpec(
        name="fpga-npu", fpga="Intel Stratix 10 NX 2100 (intel/fpga-npu's target)", tiles=7, engines=40, lanes=40,
        clock_mhz=300.0, native_format="mxint8", dsps=3960, onchip_mb=30.0, dram_gbps=0.0, link_gbps=7.9,
        link_latency_us=2.0, round_trip=132, mfu_round_trip=68, start=47, mfus=2, batch=3, cores=2, min_rows=480,
        chunk=12, sources={
            "tiles, engines, lanes, clock_mhz": f"7 tiles x 40 engines x 40 lanes at 300 MHz: {NPU}",
            "native_format": "int8 elements with 32-bit accumulation (mxint8 is the nearest of our formats)",
            "batch, cores": "each tensor block computes 3 dot products (DOT_PER_DSP), two identical cores: "
                            f"a batch of 6 is 2 x 3 (compiler/npu_layers.py): {NPU}",
            "min_rows, chunk": "the compiler pads a matrix to 480 rows; accumulators of 12 row blocks "
                               "(NUM_ACCUM): intel/fpga-npu compiler/compiler.py, rtl/npu.vh",
            "round_trip, mfu_round_trip, start": "summed from the RTL's pipeline stages (loader 5, MVU 61: "
                "BRAM, tensor-block preload, DSP, per-tile adds, the 6-hop reduction chain, accumulator, output "
                "FIFO; eVRF 13, two MFUs 25 each, back to the loader 3; start 47: reset delay, scheduler and "
                "four FIFOs; each FIFO hop taken as 3 cycles): intel/fpga-npu rtl/mvu.sv, mvu_tile.sv, dpe.sv, "
                "evrf.sv, mfu.sv, ld.sv, npu.sv, fifo.sv",
            "dsps, onchip_mb, dram_gbps": "not used by its workloads (weights stay on chip)"}),
}
DEFAULT_PRESET = "arria10-pb6"


def fingerprint(spec: DeviceSpec) -> str:
    """What a package converted for ``spec`` needs of a device: its configuration (not its name, part label or
    sources), hashed, as an FPGA toolchain fingerprints a bitstream."""
    import hashlib
    import json
    config = {k: v for k, v in spec.to_dict().items() if k not in ("name", "fpga", "sources")}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def preset(name) -> DeviceSpec:
    """The preset called ``name``; ValueError naming the others."""
    if name not in PRESETS:
        raise ValueError(f"unknown device preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


# -- a device graph's layers ------------------------------------------------------------------------
ELEMENTWISE = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "Add", "Sub", "Mul", "Div", "BatchNormalization",
               "Max", "Min", "Neg", "Exp", "Softmax", "HardSigmoid", "Sqrt", "Pow"}
POOLS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "Resize"}


@dataclass
class Layer:
    """One layer of the device stage as the timing model sees it."""
    name: str
    op: str
    unit: str                     # "mvu", "mfu" or "none" (data movement, free)
    rows: int = 0                 # a matrix op: output channels (per group)
    cols: int = 0                 # its reduction length (per group)
    vectors: int = 0              # matrix-vector products per image (output pixels, times groups)
    values: int = 0               # an MFU op: values it reads per image
    params: int = 0               # weights


def _shapes(model, input_shape=None):
    """Every tensor's shape for one image: the input's ``input_shape`` if given, else its batch set to 1 (ONNX shape
    inference on the graph's structure: the weights enter as inputs of their shapes, so no value is copied)."""
    import onnx
    from onnx import helper as h

    from . import graph
    g = model.graph
    recorded = {q["output"]: q["input"] for q in graph.quantizers(model)}   # a quantizer keeps its input's shape
    nodes = []
    for n in g.node:
        if graph._owner(n.name, recorded) is not None:
            continue
        n2 = onnx.NodeProto()
        n2.CopyFrom(n)
        for i, x in enumerate(n2.input):
            n2.input[i] = recorded.get(x, x)
        nodes.append(n2)
    inits = {i.name for i in g.initializer}
    inputs = []
    for inp in g.input:
        if inp.name in inits:
            continue
        v = onnx.ValueInfoProto()
        v.CopyFrom(inp)
        dims = v.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if i == 0 or input_shape is not None:
                d.ClearField("dim_param")
                d.dim_value = 1 if input_shape is None else int(input_shape[i])
        inputs.append(v)
    inputs += [h.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in g.initializer]
    light = h.make_graph(nodes, g.name, inputs, list(g.output))
    m = h.make_model(light, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    m = onnx.shape_inference.infer_shapes(m)
    shapes = {}
    for v in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
        t = v.type.tensor_type
        if t.HasField("shape"):
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
    return shapes


def layers_of(model, input_shape=None) -> list[Layer]:
    """The device stage's layers in execution order, from an ONNX graph (a device graph's quantizers skipped: they
    are the MVU's input conversion, not work of their own); ``input_shape``: one image's, if the graph leaves it
    open."""
    from . import graph
    recorded = {q["output"]: q["input"] for q in graph.quantizers(model)}
    shapes = _shapes(model, input_shape)
    shapes.update({q: shapes[x] for q, x in recorded.items() if x in shapes})
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if graph._owner(n.name, recorded) is not None:
            continue
        y = shapes.get(n.output[0], [])
        size = math.prod(y) if y else 0
        if n.op_type in MATRIX_OPS and not y:
            raise ValueError(f"the output shape of {n.op_type} {n.name!r} is unknown: give input_shape (one "
                             "image's, as the graph's input takes it)")
        if n.op_type == "Conv":
            w = inits.get(n.input[1]) or shapes.get(n.input[1])
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            rows, cols = w[0] // group, math.prod(w[1:])
            pixels = math.prod(y[2:]) if len(y) > 2 else 1
            out.append(Layer(n.name or n.output[0], "Conv", "mvu", rows, cols, pixels * group,
                             params=math.prod(w)))
        elif n.op_type in ("MatMul", "Gemm"):
            b = inits.get(n.input[1]) or shapes.get(n.input[1])
            trans = n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute)
            k, rows = (b[1], b[0]) if trans else (b[-2], b[-1])
            a = shapes.get(n.input[0], [1, k])
            out.append(Layer(n.name or n.output[0], n.op_type, "mvu", rows, k, max(1, math.prod(a[:-1])),
                             params=math.prod(b)))
        elif n.op_type in POOLS:
            x = shapes.get(n.input[0], [])
            out.append(Layer(n.name or n.output[0], n.op_type, "mfu", values=math.prod(x) if x else size))
        elif n.op_type in ELEMENTWISE:
            out.append(Layer(n.name or n.output[0], n.op_type, "mfu", values=size))
        else:
            out.append(Layer(n.name or n.output[0], n.op_type, "none"))
    _chain(out, model)
    return out


def _chain(layers, model):
    """Mark an element-wise op that directly follows a matrix op's output (or another chained op) as chained."""
    producer = {}
    for n in model.graph.node:
        for o in n.output:
            producer[o] = n
    by_name = {layer.name: layer for layer in layers}
    chained = set()
    for n in model.graph.node:
        layer = by_name.get(n.name or n.output[0])
        if layer is None or layer.unit != "mfu" or n.op_type not in ELEMENTWISE:
            continue
        src = producer.get(n.input[0])
        if src is not None and (src.op_type in MATRIX_OPS or (src.name or src.output[0]) in chained):
            chained.add(layer.name)
            layer.unit = "chained"


# -- the report ---------------------------------------------------------------------------------------
def analyze(model, spec: DeviceSpec, fmt_name, input_bytes=None, output_bytes=None, input_shape=None) -> dict:
    """The timing report (JSON-ready, FINN-style) of the device stage ``model`` in ``fmt_name`` on ``spec``:
    every layer's cycles, the network's batch-1 latency, throughput, bottleneck and utilization. Modeled."""
    layers = layers_of(model, input_shape)
    capacity = spec.onchip_mb * 1e6
    used, rows = 0.0, []
    bytes_per_cycle = spec.dram_gbps * 1e9 / (spec.clock_mhz * 1e6)
    for layer in layers:
        entry = {"name": layer.name, "op": layer.op, "unit": layer.unit}
        if layer.unit == "mvu":
            wb = weight_bytes(layer.params, fmt_name)
            pinned = used + wb <= capacity
            used += wb if pinned else 0
            compute = mvu_cycles(spec, layer.rows, layer.cols, layer.vectors, fmt_name)
            entry.update(rows=layer.rows, cols=layer.cols, vectors=layer.vectors, macs=layer.rows * layer.cols *
                         layer.vectors, weight_bytes=round(wb), pinned=pinned, fill=spec.round_trip,
                         compute=compute,
                         weight_cycles=0 if pinned else math.ceil(wb / bytes_per_cycle))
        elif layer.unit == "mfu":
            entry.update(values=layer.values, fill=spec.mfu_round_trip,
                         compute=math.ceil(layer.values / (spec.lanes * spec.mfus)), weight_cycles=0)
        else:
            entry.update(fill=0, compute=0, weight_cycles=0)
        entry["cycles"] = entry["fill"] + max(entry["compute"], entry["weight_cycles"])     # at batch 1
        rows.append(entry)
    clock = spec.clock_mhz * 1e6
    in_b = input_bytes or 0
    out_b = output_bytes or 0
    link_s = 2 * spec.link_latency_us * 1e-6 + (in_b + out_b) / (spec.link_gbps * 1e9)
    per_image = sum(r["compute"] for r in rows)
    total = sum(r["cycles"] for r in rows)
    macs = sum(r.get("macs", 0) for r in rows)
    busy = [r for r in rows if r["cycles"]]
    worst = max(busy, key=lambda r: r["cycles"]) if busy else None
    net = {
        "cycles": total, "latency_s": total / clock + link_s, "device_s": total / clock, "link_s": link_s,
        "throughput_ips": clock / max(1, per_image),      # a large batch: fills and weight streaming amortized
        "macs": macs, "peak_tops": spec.peak_tops(fmt_name),
        "utilization": macs / (spec.macs_in(fmt_name) * total) if total else 0.0,
        "bottleneck": worst["name"] if worst else None, "bottleneck_share": worst["cycles"] / total if total else 0,
        "critical_path": "every layer in order (one instruction stream)",
        "weights_mb": round(sum(r.get("weight_bytes", 0) for r in rows) / 1e6, 3),
        "weights_pinned": all(r.get("pinned", True) for r in rows),
    }
    return {"format": REPORT_FORMAT, "modeled": True, "preset": spec.name, "numeric_format": fmt_name,
            "spec": spec.to_dict(), "input_bytes": in_b, "output_bytes": out_b, "network": net, "layers": rows}


def seconds(report: dict, batch: int = 1) -> float:
    """The modeled device time of ``batch`` images from a timing report: every layer's fill once, its compute per
    image, its weight streaming once per batch (overlapped with the compute), and the host link."""
    spec = report["spec"]
    clock = spec["clock_mhz"] * 1e6
    cycles = sum(r["fill"] + max(batch * r["compute"], r["weight_cycles"]) for r in report["layers"])
    link = 2 * spec["link_latency_us"] * 1e-6 + batch * (report["input_bytes"] + report["output_bytes"]) / (
        spec["link_gbps"] * 1e9)
    return cycles / clock + link
