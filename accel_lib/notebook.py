"""Helpers the notebooks call, so that their cells hold no logic: the top-k table, the chart, the upload widget."""
from __future__ import annotations

import dataclasses
import io
import typing

import numpy as np


def top_k(probs, labels, k=5):
    """The ``k`` most likely classes as (index, label, probability), best first."""
    probs = np.asarray(probs).reshape(-1)
    if len(labels) != probs.size:
        raise ValueError(f"{probs.size} scores but {len(labels)} labels: score with the model's classifier output.")
    order = np.argsort(-probs, kind="stable")[:k]
    return [(int(i), labels[i], float(probs[i])) for i in order]


def top_k_chart(image, top, title="top 5", note=""):
    """A figure: the picture (a path or encoded bytes) beside a bar chart of its top-k classes."""
    import matplotlib.pyplot as plt
    from PIL import Image
    src = io.BytesIO(image) if isinstance(image, (bytes, bytearray, memoryview)) else image
    fig, (ax_img, ax_bar) = plt.subplots(1, 2, figsize=(11, 3.5), gridspec_kw={"width_ratios": [1, 1.4]})
    with Image.open(src) as im:
        ax_img.imshow(im.convert("RGB"))
    ax_img.set_axis_off()
    rows = list(top)[::-1]
    ax_bar.barh([label.split(",")[0] for _, label, _ in rows], [p for _, _, p in rows])
    ax_bar.set_xlabel("confidence")
    ax_bar.set_xlim(0, 1)
    ax_bar.set_title(title + (f"  ({note})" if note else ""))
    fig.tight_layout()
    return fig


class UploadScorer:
    """Pick a JPEG or PNG, see it with its top-k as a bar chart. ``score(bytes) -> probabilities`` does the work
    (a deployed service's client, or an in-process package); ``widget`` is what a notebook displays.

    The result is put into the Output widget by the kernel (its ``outputs``), never through the widget's capture
    context (``with output:``, which ``clear_output`` uses too). Under nbclient (papermill, nbval) a capture makes the
    client send the widget's new state on the shell channel while it waits there for the cell's reply, and that
    reply can then go unnoticed until the cell's timeout, or for ever without one (nbclient #312)."""

    def __init__(self, score, labels, k=5, note=""):
        import ipywidgets as w
        self.score, self.labels, self.k, self.note = score, labels, k, note
        self.upload = w.FileUpload(accept=".jpg,.jpeg,.png", multiple=False, description="Pick an image")
        self.output = w.Output()
        self.upload.observe(self._changed, names="value")
        self.widget = w.VBox([self.upload, self.output])
        self.last = None            # (file name, top-k rows) of the last image scored

    def _changed(self, change):
        for item in change["new"] or ():
            self.on_upload(bytes(item["content"]), item.get("name", "image"))

    def on_upload(self, data: bytes, name="image"):
        """Score one uploaded file and show it; a file that is not an image shows the reason instead."""
        import matplotlib.pyplot as plt
        try:
            top = top_k(self.score(data), self.labels, self.k)
        except Exception as e:  # noqa: BLE001 - the reason is shown to the user, the widget stays usable
            self.last = (name, None)
            why = e.details() if hasattr(e, "details") else str(e)      # a gRPC error carries its reason there
            self.output.outputs = ({"output_type": "stream", "name": "stdout",
                                    "text": f"{name}: could not be scored: {why}\n"},)
            return None
        fig = top_k_chart(data, top, f"{name}: top {self.k}", self.note)
        self.output.outputs = (figure_output(fig),)
        plt.close(fig)
        self.last = (name, top)
        return top


def figure_output(fig) -> dict:
    """A matplotlib figure as a ``display_data`` output (PNG), for an Output widget's ``outputs``."""
    import base64
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": base64.b64encode(buf.getvalue()).decode(), "text/plain": repr(fig)}}


def bits_per_value(numeric_format, block=None):
    """Storage per value: sign + mantissa bits, plus the shared exponent spread over its block (32 for fp32)."""
    from .fpga import formats
    f = formats.get(numeric_format, block)
    return 32.0 if f is None else 1 + f.mantissa_bits + f.exponent_bits / f.block


def format_table():
    """Print each device format's bit layout: element bits, shared exponent, block, bits per value."""
    from .fpga import formats
    print(f"{'format':<8}{'element':>20}{'shared exponent':>17}{'block':>7}{'bits/value':>12}")
    for name, f in formats.FORMATS.items():
        print(f"{name:<8}{f'sign + {f.mantissa_bits} bits':>20}{f'{f.exponent_bits} bits':>17}{f.block:>7}"
              f"{bits_per_value(name):>12.2f}")
    print(f"{'fp32':<8}{'IEEE single':>20}{'-':>17}{'-':>7}{32:>12.2f}")


def worked_example(values, numeric_format="ms-fp9", block=None):
    """Quantize one block of ``values`` step by step (shared exponent, step, integer mantissas) and print it;
    returns the quantized values (equal to ``formats.quantize``)."""
    from .fpga import formats
    f = formats.get(numeric_format, block or len(values))
    x = np.asarray(values, np.float32)
    m = float(np.abs(x).max())
    e = int(np.clip(np.floor(np.log2(m)), f.emin, f.emax)) if m > 0 else f.emin
    step = 2.0 ** (e - f.mantissa_bits + 1)
    k = np.minimum(np.floor(np.abs(x) / step + 0.5), f.kmax) * np.sign(x)
    q = formats.quantize(x, f)
    print(f"{f.describe()}\nmax |x| = {m:.6g} -> shared exponent E = floor(log2 max) = {e}; "
          f"step = 2^(E - {f.mantissa_bits} + 1) = {step:g}; mantissas are integers 0..{f.kmax}")
    print(f"{'x':>12}{'k = round(|x|/step)':>22}{'value k*step':>14}{'error':>12}")
    for xi, ki, qi in zip(x, k, q):
        print(f"{xi:>12.6g}{int(ki):>22d}{qi:>14.6g}{qi - xi:>12.3g}")
    return q


def picture_grid(images, titles, columns=10):
    """A row (or rows) of encoded pictures with their titles."""
    import matplotlib.pyplot as plt
    from PIL import Image
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, data, title in zip(axes.flat, images, titles):
        with Image.open(io.BytesIO(data)) as im:
            ax.imshow(im.convert("RGB"))
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


@dataclasses.dataclass
class FormatResult:
    """One numeric format tried on a model: its bits per value, held-out accuracy (measured) and report."""
    format: str
    block: typing.Optional[int]
    bits: float
    accuracy: float
    report: typing.Any          # fpga.manifest.QuantizationReport, None for fp32
    model: typing.Any           # the converted Model

    @property
    def label(self) -> str:
        return self.format + (f" /{self.block}" if self.block else "")


def compare_formats(ws, source, saved, variants, images, labels, work_dir) -> list[FormatResult]:
    """Convert registered model ``source`` (saved as ``saved``) into each (format, block) of ``variants`` and score
    every package on the labelled held-out ``images`` in-process; one FormatResult per variant, in order."""
    from .conversion import AccelOnnxConverter
    from .fpga import formats
    from .report import held_out_accuracy, load_report
    out = []
    for fmt, block in variants:
        op = AccelOnnxConverter.convert_tf_model(ws, source, saved.input_tensors, saved.output_tensors,
                                                 numeric_format=fmt, block_size=block)
        if not op.wait_for_completion():
            raise RuntimeError(f"the {fmt} conversion failed: {op.error}")
        converted = op.result
        f = formats.get(fmt, block)
        out.append(FormatResult(format=fmt, block=f.block if f else None, bits=bits_per_value(fmt, block),
                                accuracy=held_out_accuracy(converted, images, labels,
                                                           f"{work_dir}/{converted.version}"),
                                report=load_report(converted), model=converted))
    return out


def print_format_results(results):
    """A table of FormatResults: format, block, bits per value, held-out accuracy, feature SQNR."""
    print(f"{'format':<8}{'block':>6}{'bits/value':>12}{'held-out accuracy':>19}{'feature SQNR':>14}")
    for r in results:
        sqnr = f"{r.report.feature_sqnr_db:.1f} dB" if r.report else "-"
        print(f"{r.format:<8}{str(r.block or '-'):>6}{r.bits:>12.2f}{r.accuracy:>19.1%}{sqnr:>14}")


def format_cost_plots(results, random_report=None):
    """Held-out accuracy against bits per value, and SQNR per layer for each FormatResult (and the report of a
    random-weights twin)."""
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.2))
    for r in results:
        ax1.scatter(r.bits, 100 * r.accuracy, s=40)
        ax1.annotate(r.label, (r.bits, 100 * r.accuracy), textcoords="offset points", xytext=(5, -10), fontsize=8)
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("bits per value (log scale)")
    ax1.set_ylabel("held-out accuracy, % (measured)")
    ax1.set_title("Accuracy against storage per value")
    ax1.grid(alpha=0.3)
    for r in results:
        if r.report:
            ax2.plot([x.output_sqnr_db for x in r.report.layers], "o-", ms=3, label=r.label)
    if random_report:
        ax2.plot([x.output_sqnr_db for x in random_report.layers], "k--", label="ms-fp9, random weights")
    ax2.set_xlabel("layer (Conv / MatMul, in graph order)")
    ax2.set_ylabel("layer output SQNR vs fp32, dB")
    ax2.set_title("Error per layer (measured)")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return fig
