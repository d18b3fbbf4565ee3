"""The device stage in a narrow format: the same block floating point as formats.quantize, as ONNX operators.

``apply_format`` rewrites a float32 ONNX graph for the device: the weights of every Conv / MatMul / Gemm are
quantized once (with formats.quantize) and their activations are quantized at run time by a small subgraph inserted
before the operator. The subgraph does exactly the steps formats.py specifies (tests check it bit for bit).

The model records its quantizers (metadata ``accel_lib.quantizers``), so ``session`` can swap each subgraph for the
fused compiled operator (``kernel``) when it is built: the same numbers in one pass over memory instead of seven.
The saved model stays plain ONNX that any runtime can run.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import formats

DOMAIN_NOTE = "accel_lib device format"
QUANTIZERS_KEY = "accel_lib.quantizers"   # metadata: JSON list; each subgraph's nodes: "<output>" or "<output>/..."
MATRIX_OPS = ("Conv", "MatMul", "Gemm")    # what the device computes in its format (its quantized layers)


def _const(inits, name, value, dtype=np.float32):
    from onnx import numpy_helper
    inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
    return name


def quantizer_nodes(x, y, axis, channels, rank, fmt, prefix, nonnegative=False):
    """(nodes, initializers) that compute y = quantize(x, fmt, axis) for a rank-``rank`` tensor whose ``axis``
    has ``channels`` entries. ``nonnegative``: x is known >= 0 (or NaN), so |x| and sign(x) are skipped."""
    from onnx import TensorProto
    from onnx import helper as h
    n, inits = [], []
    axis = axis % rank
    b = fmt.block
    nb = -(-channels // b) if channels > b else 1
    b = b if channels > b else channels
    pad = nb * b - channels
    P = prefix

    def node(op, ins, outs=None, **kw):
        outs = outs or [f"{P}/{op}_{len(n)}"]
        n.append(h.make_node(op, ins, outs, name=outs[0], **kw))
        return outs[0]

    c = lambda name, v, dt=np.float32: _const(inits, f"{P}/{name}", v, dt)  # noqa: E731
    src = x
    if pad:
        pads = [0] * (2 * rank)
        pads[rank + axis] = pad
        src = node("Pad", [x, c("pads", pads, np.int64)], mode="constant")
    blocked = node("Reshape", [src, c("bshape", [0] * axis + [nb, b, -1], np.int64)])
    red = c("raxis", [axis + 1], np.int64)
    a = blocked if nonnegative else node("Abs", [blocked])
    m = node("ReduceMax", [a], axes=[axis + 1], keepdims=1)      # opset 17: axes is an attribute
    s = node("ReduceSum", [a, red], keepdims=1)
    bad = node("Or", [node("IsNaN", [s]), node("IsInf", [m])])
    one, two = c("one", 1.0), c("two", 2.0)

    def floor_log2(v, tag):
        """floor(log2 v) for v > 0, exactly: Log's estimate, corrected by one either way against 2**e."""
        e0 = node("Floor", [node("Mul", [node("Log", [v]), c(f"inv_ln2{tag}", 1.0 / np.log(2.0))])])
        p = node("Pow", [two, e0])
        up = node("Cast", [node("GreaterOrEqual", [v, node("Mul", [p, two])])], to=TensorProto.FLOAT)
        down = node("Cast", [node("Less", [v, p])], to=TensorProto.FLOAT)
        return node("Sub", [node("Add", [e0, up]), down])
    m1 = node("Where", [bad, one, m])
    if isinstance(fmt, formats.MxFormat):
        q = _mx_element_nodes(node, c, floor_log2, blocked, m1, bad, fmt)
    else:
        e = node("Clip", [floor_log2(m1, ""), c("emin", float(fmt.emin)), c("emax", float(fmt.emax))])
        step = node("Pow", [two, node("Add", [e, c("shift", float(1 - fmt.mantissa_bits))])])
        step = node("Where", [bad, c("nan", np.nan), step])
        k = node("Floor", [node("Add", [node("Div", [a, step]), c("half", 0.5)])])
        k = node("Min", [k, c("kmax", float(fmt.kmax))])
        q = node("Mul", [k, step])
        if not nonnegative:
            # sign back on; 0 - (+0) is +0, so a zero result stays +0.0 (an optimizer may drop "+ 0.0", not this)
            q = node("Where", [node("Less", [blocked, c("zero", 0.0)]), node("Sub", [c("zero2", 0.0), q]), q])
    if pad:
        full = node("Reshape", [q, node("Shape", [src])])
        node("Slice", [full, c("starts", [0], np.int64), c("ends", [channels], np.int64),
                       c("axes", [axis], np.int64)], [y])
    else:
        node("Reshape", [q, node("Shape", [x])], [y])
    return n, inits


def _mx_element_nodes(node, c, floor_log2, blocked, m1, bad, fmt):
    """formats.quantize_mx's steps 2-5 on the blocked tensor (NaN where ``bad``): the shared scale 2**S, each
    element rounded half to even (ONNX's Round) at its own exponent's step, saturated, scaled back."""
    e = fmt.element
    shared = node("Clip", [node("Sub", [floor_log2(m1, ""), c("emax", float(e.emax))]),
                           c("smin", float(formats.SCALE_MIN)), c("smax", float(formats.SCALE_MAX))])
    scale = node("Where", [bad, c("nan", np.nan), node("Pow", [c("two_s", 2.0), shared])])
    v = node("Div", [blocked, scale])
    if e.ebits:      # a zero's Log is -inf: floor_log2 gives -inf or NaN there, and Max(NaN, emin) is not emin
        av = node("Abs", [v])
        safe = node("Where", [node("Equal", [av, c("zero", 0.0)]), c("one_v", 1.0), av])
        p = node("Max", [floor_log2(safe, "_v"), c("emin", float(e.emin))])
        step = node("Pow", [c("two_p", 2.0), node("Sub", [p, c("mbits", float(e.mbits))])])
    else:
        step = c("step", 2.0 ** (e.emin - e.mbits))
    q = node("Mul", [node("Round", [node("Div", [v, step])]), step])
    q = node("Clip", [q, c("lo", -e.max_norm), c("hi", e.max_norm)])
    if not e.ebits:      # an integer's zero has no sign: 0 - (-q) is q, and +0.0 for either zero
        q = node("Sub", [c("zero_i", 0.0), node("Neg", [q])])
    return node("Mul", [q, scale])


_KEEPS_SIGN = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Reshape", "Transpose", "Flatten",
               "Squeeze", "Unsqueeze", "Identity", "Concat"}


def nonnegative_tensors(graph):
    """Names of tensors that are >= 0 by construction: Relu outputs, and pools/reshapes/concats of them."""
    out = set()
    for node in graph.node:
        if node.op_type == "Relu":
            out.update(node.output)
        elif node.op_type in _KEEPS_SIGN:
            data = node.input if node.op_type == "Concat" else node.input[:1]
            if data and all(i in out for i in data):
                out.update(node.output)
    return out


def apply_format(model, fmt):
    """A copy of ``model`` (float32 ONNX) with ``fmt`` applied to every Conv/MatMul/Gemm; returns (model, layers)."""
    import copy

    from onnx import numpy_helper, shape_inference
    if isinstance(fmt, str):
        fmt = formats.get(fmt)
    model = copy.deepcopy(model)
    if fmt is None:
        return model, []
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    inferred = shape_inference.infer_shapes(model)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in
             [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    new_nodes, layers, done, quantizers = [], [], {}, []
    nonneg = nonnegative_tensors(g)
    for node in g.node:
        if node.op_type not in MATRIX_OPS:
            new_nodes.append(node)
            continue
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Conv":
            w = numpy_helper.to_array(inits[node.input[1]]) if node.input[1] in inits else None
            if w is None:
                raise ValueError(f"Conv {node.name} has no constant weights; the device needs them at conversion.")
            group = attrs["group"].i if "group" in attrs else 1
            x_axis, x_rank, channels, w_axis = 1, w.ndim, w.shape[1] * group, 1
        else:
            b_name = node.input[1]
            if b_name not in inits:
                raise ValueError(f"{node.op_type} {node.name} has no constant weights.")
            w = numpy_helper.to_array(inits[b_name])
            trans_a = node.op_type == "Gemm" and "transA" in attrs and attrs["transA"].i
            trans_b = node.op_type == "Gemm" and "transB" in attrs and attrs["transB"].i
            x_rank = ranks.get(node.input[0], 2)
            x_axis = (x_rank - 2) if trans_a else (x_rank - 1)
            w_axis = w.ndim - 1 if trans_b else w.ndim - 2
            channels = w.shape[w_axis]
        wq = formats.quantize(w, fmt, axis=w_axis)
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(wq, node.input[1]))
        key = (node.input[0], x_axis)
        if key not in done:          # an activation feeding two layers (a shortcut) is quantized once
            qname = f"{node.input[0]}/{fmt.name}/{len(done)}"
            qn, qi = quantizer_nodes(node.input[0], qname, x_axis, channels, x_rank, fmt, qname,
                                     nonnegative=node.input[0] in nonneg)
            new_nodes.extend(qn)
            g.initializer.extend(qi)
            done[key] = qname
            quantizers.append(_entry(node.input[0], qname, x_axis, fmt, channels))
        qname = done[key]
        node.input[0] = qname
        new_nodes.append(node)
        layers.append({"name": node.name or node.output[0], "op": node.op_type, "input": qname,
                       "channels": int(channels), "weight": node.input[1]})
    del g.node[:]
    g.node.extend(new_nodes)
    model.doc_string = f"{DOMAIN_NOTE}: {fmt.describe()}"
    _record(model, quantizers)
    return model, layers


def _entry(x, y, axis, fmt, channels):
    """One quantizer's record: y = quantize(x, fmt, axis); its subgraph's nodes are named y or "y/..."."""
    return {"input": x, "output": y, "axis": int(axis), "format": fmt.name, "block": fmt.block,
            "channels": int(channels)}


def _record(model, quantizers):
    import json
    entry = model.metadata_props.add()
    entry.key, entry.value = QUANTIZERS_KEY, json.dumps(quantizers)


def quantizers(model):
    """The quantizer subgraphs ``apply_format`` recorded in ``model`` (an empty list for older models)."""
    import json
    for entry in model.metadata_props:
        if entry.key == QUANTIZERS_KEY:
            return json.loads(entry.value)
    return []


class Layers:
    """The device graph's quantized layers, indexed once, to cut out and run apart from the graph."""

    def __init__(self, model):
        g = model.graph
        self.model = model
        self.entries = {q["output"]: q for q in quantizers(model)}
        self.node = {n.output[0]: n for n in g.node if n.op_type in MATRIX_OPS}
        self.members = {}                      # quantizer output -> its subgraph's nodes
        for n in g.node:
            p = _owner(n.name, self.entries)
            if p is not None:
                self.members.setdefault(p, []).append(n)
        self.inits = {i.name: i for i in g.initializer}

    def entry(self, layer_output) -> dict:
        """The record of the quantizer in front of the layer whose output is ``layer_output``."""
        return self.entries[self.node[layer_output].input[0]]

    def model_of(self, layer_outputs, ranks) -> "onnx.ModelProto":  # noqa: F821
        """A model of the layers ``layer_outputs`` alone: its inputs are their quantizers' inputs (of the given
        ranks), its outputs each quantizer's output and each layer's output."""
        from onnx import TensorProto
        from onnx import helper as h
        nodes, inputs, outputs, entries, seen, given = [], [], [], [], set(), set()
        for out, rank in zip(layer_outputs, ranks):
            e = self.entry(out)
            if e["output"] not in seen:
                seen.add(e["output"])
                nodes += self.members[e["output"]]
                entries.append(e)
                if e["input"] not in given:        # one input may feed two quantizers (other axes)
                    given.add(e["input"])
                    dims = [f"x{len(inputs)}_{i}" for i in range(rank)]
                    inputs.append(h.make_tensor_value_info(e["input"], TensorProto.FLOAT, dims))
                outputs.append(h.make_tensor_value_info(e["output"], TensorProto.FLOAT, None))
            nodes.append(self.node[out])
            outputs.append(h.make_tensor_value_info(out, TensorProto.FLOAT, None))
        used = {i for n in nodes for i in n.input}
        graph = h.make_graph(nodes, "layers", inputs, outputs, [self.inits[u] for u in sorted(used & set(self.inits))])
        model = h.make_model(graph, opset_imports=list(self.model.opset_import), ir_version=self.model.ir_version)
        _record(model, entries)
        return model


def _owner(name, recorded):
    """The quantizer (a key of ``recorded``) whose subgraph the node or initializer ``name`` belongs to: the longest
    recorded prefix of "<input>/<format>/<i>/..."; None for anything else."""
    head = name.split("/") if name else []
    for cut in range(len(head), 0, -1):
        p = "/".join(head[:cut])
        if p in recorded:
            return p
    return None


def fuse(model, inplace=False):
    """``model`` (a copy unless ``inplace``) with each recorded quantizer subgraph replaced by one fused ``kernel``
    node."""
    import copy

    from . import kernel
    if not inplace:
        model = copy.deepcopy(model)
    g = model.graph
    todo = {q["output"]: q for q in quantizers(model)}
    if not todo:
        return model

    nodes, placed = [], set()
    for node in g.node:
        p = _owner(node.name, todo)
        if p is None:
            nodes.append(node)
        elif p not in placed:
            q = todo[p]
            fmt = formats.get(q["format"], q["block"])
            nodes.append(kernel.make_node(q["input"], q["output"], q["axis"], fmt, p))
            placed.add(p)
    if placed != set(todo):
        raise ValueError(f"quantizers recorded but not found in the graph: {sorted(set(todo) - placed)}")
    del g.node[:]
    g.node.extend(nodes)
    keep = [i for i in g.initializer if _owner(i.name, todo) is None]
    del g.initializer[:]
    g.initializer.extend(keep)
    from onnx import helper
    model.opset_import.append(helper.make_opsetid(kernel.DOMAIN, 1))
    return model


def fused_path(path) -> Path:
    """Where a device graph's fused form is kept beside it (``prepare``): device.onnx -> device.fused.onnx."""
    return Path(path).with_suffix(".fused.onnx")


def prepare(path) -> bool:
    """Write the device graph at ``path`` in its fused form beside it, once (an image's build does), so that a
    replica loads it by path, not fusing at each start. False (nothing written) without the built kernel or
    without quantizers."""
    import onnx

    from . import kernel as kern
    if not kern.available():
        return False
    model = onnx.load(str(path))
    if not quantizers(model):
        return False
    onnx.save(fuse(model, inplace=True), str(fused_path(path)))
    return True


def _prepared(model):
    """The fused form ``prepare`` wrote for the device graph file ``model``, if it is there and not older."""
    if isinstance(model, (str, Path)):
        fused = fused_path(model)
        if fused.is_file() and fused.stat().st_mtime >= Path(model).stat().st_mtime:
            return fused
    return None


def session(model, options=None, kernel=None, inplace=False):
    """An ONNX Runtime CPU session for a device graph (a ModelProto or a path), with the fused quantizer when
    ``kernel`` allows it (None: $ACCEL_LIB_DEVICE_KERNEL, 'auto' by default; 'fused'; 'onnx'). ``inplace``: the
    caller hands the ModelProto over, and it is fused in place instead of copied."""
    import onnx
    import onnxruntime as ort

    from . import kernel as kern
    if options is None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
    owned = inplace or not isinstance(model, onnx.ModelProto)
    if kern.use_fused(kernel):
        ready = _prepared(model)
        if ready is not None:              # fused when the image was built: loaded by path, nothing to rewrite
            kern.register(options)
            return ort.InferenceSession(str(ready), options, providers=["CPUExecutionProvider"])
        if not isinstance(model, onnx.ModelProto):
            model = onnx.load(str(model))
        if quantizers(model):
            model = fuse(model, inplace=owned)
            kern.register(options)
    if not isinstance(model, onnx.ModelProto):
        return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    source = model.SerializeToString()
    if owned:
        del model
    sess = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    del source
    release_freed_memory()
    return sess


def release_freed_memory():
    """Give the graph bytes Python just freed back to the OS (glibc keeps them otherwise): replicas stay small."""
    import ctypes
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def quantizer_model(shape, axis, fmt, nonnegative=False):
    """A standalone ONNX model computing quantize(x, fmt, axis) for float32 x of ``shape`` (for tests, benchmarks)."""
    from onnx import TensorProto
    from onnx import helper as h
    if isinstance(fmt, str):
        fmt = formats.get(fmt)
    rank = len(shape)
    nodes, inits = quantizer_nodes("x", "y", axis, shape[axis % rank], rank, fmt, "y", nonnegative)
    dims = ["n" if i == 0 else d for i, d in enumerate(shape)]
    graph = h.make_graph(nodes, "quantizer", [h.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, dims)], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    _record(model, [_entry("x", "y", axis % rank, fmt, shape[axis % rank])])
    return model
