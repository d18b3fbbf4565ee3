"""The reference device: onnx's numpy evaluator running the fp32 device graph, with formats.quantize (the
specification) applied to the weights and input of every Conv / MatMul / Gemm. Slow, simple, independent of the
in-graph quantizer that ONNX Runtime runs."""
from __future__ import annotations

import numpy as np

from . import formats


def reference_device(fp32_model, fmt):
    """A callable x -> {output name: array} computing the device stage with numpy only."""
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.ops.op_conv import Conv as _Conv
    from onnx.reference.ops.op_gemm import Gemm_7 as _Gemm
    from onnx.reference.ops.op_matmul import MatMul as _MatMul
    if isinstance(fmt, str):
        fmt = formats.get(fmt)
    q = (lambda a, axis: a) if fmt is None else (lambda a, axis: formats.quantize(a, fmt, axis))  # noqa: E731

    class Conv(_Conv):
        def _run(self, X, W, B=None, **kw):
            return super()._run(q(X, 1), q(W, 1), B, **kw)

    class MatMul(_MatMul):
        def _run(self, a, b):
            return super()._run(q(a, -1), q(b, -2))

    class Gemm(_Gemm):
        op_type = "Gemm"

        def _run(self, a, b, c=None, alpha=None, beta=None, transA=None, transB=None):
            ta = transA if transA is not None else self.transA
            tb = transB if transB is not None else self.transB
            return super()._run(q(a, 0 if ta else -1), q(b, -1 if tb else 0), c, alpha=alpha, beta=beta,
                                transA=ta, transB=tb)

    ev = ReferenceEvaluator(fp32_model, new_ops=[Conv, MatMul, Gemm])
    name = fp32_model.graph.input[0].name

    outputs = [o.name for o in fp32_model.graph.output]

    def run(x):
        return dict(zip(outputs, ev.run(None, {name: np.asarray(x, np.float32)})))
    return run
