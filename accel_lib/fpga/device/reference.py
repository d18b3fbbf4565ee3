"""The reference device: onnx's numpy evaluator running the fp32 device graph, with formats.quantize (the
specification) applied to the weights and input of every Conv / MatMul / Gemm. Slow, simple, independent of the
in-graph quantizer that ONNX Runtime runs."""
from __future__ import annotations

import numpy as np

from . import formats


def conv2d(x, w, b, strides, pads, dilations):
    """A 2-D convolution (NCHW, one group) as one matrix product per kernel tap: plain numpy, and fast for the
    dilated kernels (SSD's fc6) that onnx's reference Conv expands into large zero-filled kernels."""
    (sh, sw), (dh, dw) = strides, dilations
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    m, _, kh, kw = w.shape
    oh = (xp.shape[2] - (kh - 1) * dh - 1) // sh + 1
    ow = (xp.shape[3] - (kw - 1) * dw - 1) // sw + 1
    out = np.zeros((m, x.shape[0], oh, ow), np.float32)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
            out += np.tensordot(w[:, :, i, j], patch, axes=([1], [1]))
    out = out.transpose(1, 0, 2, 3)
    if b is not None:
        out = out + b.reshape(1, -1, 1, 1)
    return np.ascontiguousarray(out, dtype=np.float32)


def reference_device(fp32_model, fmt, on_layer=None):
    """A callable x -> {output name: array} computing the device stage with numpy only. ``on_layer(node, x, xq, y,
    magnitude, terms)``, if given, sees each quantized layer as the reference computes it: its input, that input
    quantized, its output, the same operator on absolute values (sum |w x| + |b|, what bounds any fp32 summation
    order's error) and the number of terms each output sums."""
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.ops.op_conv import Conv as _Conv
    from onnx.reference.ops.op_gemm import Gemm_7 as _Gemm
    from onnx.reference.ops.op_matmul import MatMul as _MatMul
    if isinstance(fmt, str):
        fmt = formats.get(fmt)
    q = (lambda a, axis: a) if fmt is None else (lambda a, axis: formats.quantize(a, fmt, axis))  # noqa: E731

    def seen(op, x, xq, y, again, terms):
        """Hand the layer to ``on_layer``, with ``again`` (the operator) run on absolute values."""
        if on_layer is not None:
            on_layer(op.onnx_node, x, xq, y, again(np.abs), terms)
        return (y,)

    class Conv(_Conv):
        def _run(self, X, W, B=None, auto_pad=None, dilations=None, group=None, kernel_shape=None, pads=None,
                 strides=None):
            Xq, W = q(X, 1), q(W, 1)
            auto_pad = auto_pad or getattr(self, "auto_pad", "NOTSET")
            group = group or getattr(self, "group", 1)
            strides = strides or getattr(self, "strides", None)
            dilations = dilations or getattr(self, "dilations", None)
            pads = pads or getattr(self, "pads", None)

            def conv(f):
                b = None if B is None else f(B)
                if Xq.ndim == 4 and group == 1 and auto_pad in ("NOTSET", b"NOTSET"):
                    return conv2d(f(Xq), f(W), b, strides or [1, 1], pads or [0, 0, 0, 0], dilations or [1, 1])
                return super(Conv, self)._run(f(Xq), f(W), b, auto_pad, dilations, group, kernel_shape, pads,
                                              strides)[0]
            return seen(self, X, Xq, conv(lambda a: a), conv, int(np.prod(W.shape[1:])))

    class MatMul(_MatMul):
        def _run(self, a, b):
            aq, bq = q(a, -1), q(b, -2)
            return seen(self, a, aq, super()._run(aq, bq)[0], lambda f: super(MatMul, self)._run(f(aq), f(bq))[0],
                        int(aq.shape[-1]))

    class Gemm(_Gemm):
        op_type = "Gemm"

        def _run(self, a, b, c=None, alpha=None, beta=None, transA=None, transB=None):
            ta = transA if transA is not None else self.transA
            tb = transB if transB is not None else self.transB
            aq, bq = q(a, 0 if ta else -1), q(b, -1 if tb else 0)
            alpha = self.alpha if alpha is None else alpha
            beta = self.beta if beta is None else beta

            def gemm(f):
                return super(Gemm, self)._run(f(aq), f(bq), None if c is None else f(c), alpha=abs(alpha),
                                              beta=abs(beta), transA=ta, transB=tb)[0]
            y = super()._run(aq, bq, c, alpha=alpha, beta=beta, transA=ta, transB=tb)[0]
            return seen(self, a, aq, y, gemm, int(aq.shape[0 if ta else -1]) + 1)

    ev = ReferenceEvaluator(fp32_model, new_ops=[Conv, MatMul, Gemm])
    name = fp32_model.graph.input[0].name

    outputs = [o.name for o in fp32_model.graph.output]

    def run(x):
        return dict(zip(outputs, ev.run(None, {name: np.asarray(x, np.float32)})))
    return run
