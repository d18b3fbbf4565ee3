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
    for y, (_, _, p) in enumerate(rows):          # the value beside each bar: a tiny one is still read
        ax_bar.text(min(p, 0.85) + 0.01, y, f"{p:.3f}", va="center", fontsize=9)
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
        self._data = None           # and its bytes

    STATIC_TEXT = "[an upload widget: live in Jupyter, where it scores a JPEG or PNG you pick]"

    def _repr_mimebundle_(self, **kwargs):
        """The widget where a front end draws widgets; in a static viewer, a line that says what it is."""
        data = self.widget._repr_mimebundle_(**kwargs)
        data["text/plain"] = self.STATIC_TEXT
        return data

    def show(self):
        """Show the last result as a cell output of its own: a static viewer (GitHub, nbviewer) shows that too."""
        import matplotlib.pyplot as plt
        from IPython.display import display
        if self.last is None:
            raise ValueError("nothing was scored yet: pick a picture (or call on_upload) first.")
        name, top = self.last
        if top is None:
            print(f"{name}: could not be scored (the widget says why).")
            return
        for _, label, confidence in top:
            print(f"{label}: {confidence:.3f}")
        fig = top_k_chart(self._data, top, f"{name}: top {self.k}", self.note)
        display(fig)
        plt.close(fig)

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
        self.last, self._data = (name, top), data
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
    from .fpga.device import formats
    f = formats.get(numeric_format, block)
    return 32.0 if f is None else f.bits_per_value


def format_table():
    """Print each device format's bit layout: element, shared exponent or scale, block, bits per value."""
    from .fpga.device import formats
    print(f"{'format':<12}{'element':>22}{'shared per block':>22}{'block':>7}{'bits/value':>12}")
    for name, f in formats.FORMATS.items():
        print(f"{name:<12}{f'sign + {f.mantissa_bits} bits':>22}{f'{f.exponent_bits}-bit exponent':>22}"
              f"{f.block:>7}{f.bits_per_value:>12.2f}")
    for name, f in formats.MX_FORMATS.items():
        e = f.element
        element = "int8 (steps of 2^-6)" if not e.ebits else f"E{e.ebits}M{e.mbits} float"
        print(f"{name:<12}{element:>22}{'8-bit scale (E8M0)':>22}{f.block:>7}{f.bits_per_value:>12.2f}")
    print(f"{'fp32':<12}{'IEEE single':>22}{'-':>22}{'-':>7}{32:>12.2f}")


def worked_example(values, numeric_format="ms-fp9", block=None):
    """Quantize one block of ``values`` step by step (shared exponent, step, integer mantissas) and print it;
    returns the quantized values (equal to ``formats.quantize``)."""
    from .fpga.device import formats
    f = formats.get(numeric_format, block or len(values))
    x = np.asarray(values, np.float32)
    if isinstance(f, formats.MxFormat):
        return _worked_mx(x, f)
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


def _worked_mx(x, f):
    """worked_example for an OCP MX format: the shared scale, then each element at its own exponent."""
    from .fpga.device import formats
    q, shared = formats.mx_encode(x, f)
    s = int(shared.ravel()[0])
    y = formats.quantize(x, f)
    e = f.element
    print(f"{f.describe()}\nmax |x| = {float(np.abs(x).max()):.6g} -> shared scale 2^S with S = floor(log2 max) - "
          f"{e.emax} = {s} (the element's largest exponent is {e.emax}); each v = x / 2^S is rounded to the nearest "
          f"{e.name} value (ties to even), at most {e.max_norm:g}")
    print(f"{'x':>12}{'v = x/2^S':>14}{'element':>10}{'value':>14}{'error':>12}")
    for xi, qi, yi in zip(x, q.ravel(), y):
        print(f"{xi:>12.6g}{float(np.ldexp(xi, -s)):>14.6g}{qi:>10.4g}{yi:>14.6g}{yi - xi:>12.3g}")
    return y


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
    """One numeric format tried on a model: bits per value, its answers on the images (measured), its report, and
    how those answers compare with the first variant's (fp32): accuracy where labels are known, else agreement."""
    format: str
    block: typing.Optional[int]
    bits: float
    probs: typing.Any           # class probabilities [N, C] of the package, run in-process
    report: typing.Any          # fpga.device.manifest.QuantizationReport, None for fp32
    model: typing.Any           # the converted Model
    accuracy: typing.Optional[float] = None      # top-1 against the labels, if given
    top1_agreement: float = 1.0                  # the same top-1 class as fp32
    top5_agreement: float = 1.0                  # fp32's top-1 class among this format's top 5
    logit_sqnr_db: float = float("inf")          # of the logits (log-probabilities, centred per image) vs fp32

    @property
    def label(self) -> str:
        return self.format + (f" /{self.block}" if self.block else "")


FORMAT_COLOURS = {"fp32": "black", "ms-fp8": "tab:red", "ms-fp9": "tab:blue", "msfp12": "tab:orange",
                  "msfp16": "tab:green", "mxfp8-e4m3": "tab:purple", "mxfp8-e5m2": "tab:pink",
                  "mxfp6-e3m2": "tab:brown", "mxfp6-e2m3": "tab:olive", "mxfp4": "tab:cyan", "mxint8": "gold"}
# the line style and marker of a block size, the same in every plot and for every format (colour: the format)
BLOCK_STYLES = {None: ("-", "o"), 16: (":", "s"), 32: ("--", "^"), 128: ("-", "o")}
OTHER_BLOCK = ("-.", "D")


def _logits(probs):
    """Logits up to a constant per image, from probabilities: log p, centred (floored at float32's tiniest)."""
    z = np.log(np.maximum(np.asarray(probs, np.float64), np.finfo(np.float32).tiny))
    return z - z.mean(-1, keepdims=True)


def compare_formats(ws, source, saved, variants, images, labels=None, work_dir=None,
                    reference=None) -> list[FormatResult]:
    """Convert registered model ``source`` (saved as ``saved``) into each (format, block) of ``variants`` and score
    every package on ``images`` in-process; one FormatResult per variant, in order. Each is compared with the fp32
    result: ``reference`` (from an earlier call, to split the work between cells), else the first variant's."""
    import tempfile

    from .conversion import AccelOnnxConverter
    from .fpga.device import formats
    from .fpga.device.package import AcceleratorPackage
    from .report import load_report
    if reference is None and variants[0][0] != "fp32":
        raise ValueError("the first variant must be fp32 (or give the fp32 result as reference): the others are "
                         "compared with it")
    work_dir = work_dir or tempfile.mkdtemp()
    out = []
    for fmt, block in variants:
        op = AccelOnnxConverter.convert_tf_model(ws, source, saved.input_tensors, saved.output_tensors,
                                                 numeric_format=fmt, block_size=block)
        if not op.wait_for_completion():
            raise RuntimeError(f"the {fmt} conversion failed: {op.error}")
        converted = op.result
        pkg = AcceleratorPackage(converted.download(f"{work_dir}/{converted.version}", exist_ok=True))
        name = pkg.default_outputs[0]
        probs = np.concatenate([pkg.run(images[i:i + 32], [name])[name] for i in range(0, len(images), 32)])
        del pkg
        f = formats.get(fmt, block)
        r = FormatResult(format=fmt, block=f.block if f else None, bits=bits_per_value(fmt, block), probs=probs,
                         report=load_report(converted), model=converted)
        if labels is not None:
            r.accuracy = float((probs.argmax(-1) == np.asarray(labels)).mean())
        base = reference if reference is not None else (out[0] if out else None)
        if base is not None:
            ref = base.probs
            top1 = ref.argmax(-1)
            r.top1_agreement = float((probs.argmax(-1) == top1).mean())
            top5 = np.argsort(-probs, -1, kind="stable")[:, :5]
            r.top5_agreement = float((top5 == top1[:, None]).any(-1).mean())
            zr, zq = _logits(ref), _logits(probs)
            noise = float(((zq - zr) ** 2).sum())
            r.logit_sqnr_db = float("inf") if noise == 0 else float(10 * np.log10((zr ** 2).sum() / noise))
        out.append(r)
    return out


def print_format_results(results):
    """A table of FormatResults: format, block, bits per value, accuracy (if measured) or agreement with fp32,
    and SQNR."""
    labelled = results[0].accuracy is not None
    head = f"{'held-out accuracy':>19}" if labelled else f"{'top-1 agree':>13}{'in top 5':>13}{'logit SQNR':>12}"
    print(f"{'format':<12}{'block':>6}{'bits/value':>12}{head}{'feature SQNR':>14}")
    for r in results:
        sqnr = f"{r.report.feature_sqnr_db:.1f} dB" if r.report else "-"
        if labelled:
            cols = f"{r.accuracy:>19.1%}"
        else:
            logit = "-" if r.format == "fp32" else f"{r.logit_sqnr_db:.1f} dB"
            cols = f"{r.top1_agreement:>13.1%}{r.top5_agreement:>13.1%}{logit:>12}"
        print(f"{r.format:<12}{str(r.block or '-'):>6}{r.bits:>12.2f}{cols}{sqnr:>14}")


def format_style(fmt, block):
    """(colour, line style, marker) of a format at a block size: one colour per format, one style per block size."""
    line, marker = BLOCK_STYLES.get(block, OTHER_BLOCK)
    return FORMAT_COLOURS.get(fmt, "tab:gray"), line, marker


def style_legend(fig, entries, extra=()):
    """One legend for the whole figure, outside the panels (right): ``entries`` [(label, format, block)], then
    ``extra`` matplotlib handles."""
    from matplotlib.lines import Line2D
    handles = []
    for label, fmt, block in entries:
        colour, line, marker = format_style(fmt, block)
        handles.append(Line2D([], [], color=colour, ls=line, marker=marker, ms=6, lw=1.6, label=label))
    handles += list(extra)
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)


def format_cost_plots(results, random_report=None):
    """Accuracy (or top-1 agreement with fp32) against bits per value, and SQNR per layer, for each FormatResult
    (and the report of a random-weights twin); colour per format, line style per block size, one legend."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    labelled = results[0].accuracy is not None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.4))
    for r in results:
        colour, _, marker = format_style(r.format, r.block)
        y = r.accuracy if labelled else r.top1_agreement
        ax1.scatter(r.bits, 100 * y, s=55, color=colour, marker=marker, zorder=3)
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("bits per value (log scale)")
    ax1.set_ylabel("held-out accuracy, %" if labelled else "top-1 agreement with fp32, %")
    ax1.set_title("Accuracy against storage per value (measured)" if labelled
                  else "Agreement with fp32 against storage per value (measured)")
    ax1.set_ylim(-2, 102)
    ax1.grid(alpha=0.3)
    drawn, labels = [], {}             # a series equal to one already drawn is not drawn over it: its label says so
    for r in results:
        if not r.report:
            continue
        series = [x.output_sqnr_db for x in r.report.layers]
        twin = next((d for d in drawn if d[1] == series), None)
        if twin is not None:                  # its point stays on the left; its line would hide under the twin's
            labels[r.label] = f"{r.label} (SQNR line: the same as {twin[0].label})"
            continue
        colour, line, marker = format_style(r.format, r.block)
        ax2.plot(series, ls=line, marker=marker, ms=3, lw=1.4, color=colour)
        drawn.append((r, series))
        labels[r.label] = r.label
    extra = []
    if random_report:
        ax2.plot([x.output_sqnr_db for x in random_report.layers], "-.", color="gray", lw=1.2)
        extra.append(Line2D([], [], color="gray", ls="-.", label="ms-fp9, random weights (SQNR only)"))
    ax2.set_xlabel("layer (Conv / MatMul, in graph order)")
    ax2.set_ylabel("layer output SQNR vs fp32, dB")
    ax2.set_title("Error per layer (measured)")
    ax2.grid(alpha=0.3)
    style_legend(fig, [(labels.get(r.label, r.label), r.format, r.block) for r in results], extra)
    fig.tight_layout()
    return fig


def format_findings(results, random_report=None) -> list[str]:
    """What the measured FormatResults say, as sentences made from their numbers (printed by the notebook, so that
    the words follow the run): each format's loss against fp32, what the block size changed, trained vs random."""
    labelled = results[0].accuracy is not None
    what = "held-out accuracy" if labelled else "top-1 agreement with fp32"
    score = (lambda r: r.accuracy) if labelled else (lambda r: r.top1_agreement)
    base = score(results[0])
    lines = []
    for r in results[1:]:
        d = 100 * (score(r) - base)
        verdict = "the same as fp32" if abs(d) < 0.05 else f"{abs(d):.1f} points {'below' if d < 0 else 'above'} fp32"
        lines.append(f"{r.label}: {what} {score(r):.1%}, {verdict}.")
    by_block = {}
    for r in results[1:]:
        by_block.setdefault(r.format, []).append(r)
    for fmt, rs in by_block.items():
        if len(rs) < 2:
            continue
        rs = sorted(rs, key=lambda r: r.block)
        vals = [score(r) for r in rs]
        trend = ("the block size made no difference here" if max(vals) - min(vals) < 1e-9 else
                 "larger blocks cost more here" if all(a >= b for a, b in zip(vals, vals[1:])) else
                 "smaller blocks cost more here" if all(a <= b for a, b in zip(vals, vals[1:])) else
                 "no steady trend with the block size here")
        lines.append(f"{fmt} at blocks {', '.join(str(r.block) for r in rs)}: "
                     f"{', '.join(f'{v:.1%}' for v in vals)}: {trend}.")
    lines += _family_findings(results[1:], score, what, base)
    lines += _exponent_findings(results[1:])
    if random_report is not None:
        trained = next((r.report for r in results if r.format == "ms-fp9" and r.block == 128 and r.report), None)
        if trained is not None:
            d = trained.feature_sqnr_db - random_report.feature_sqnr_db
            lines.append(f"ms-fp9 feature SQNR: trained {trained.feature_sqnr_db:.1f} dB, random weights "
                         f"{random_report.feature_sqnr_db:.1f} dB: "
                         + ("about the same" if abs(d) < 1.0 else f"{abs(d):.1f} dB {'higher' if d > 0 else 'lower'}"
                            " for the trained network") + ".")
    return lines


def _exponent_findings(results) -> list[str]:
    """Two block formats alike but for the shared exponent's width (MSFP12 and ms-fp9 at block 16): whether their
    outputs differ, which says whether any block needed an exponent outside the narrower range."""
    from .fpga.device import formats
    bfp = [(r, formats.get(r.format, r.block)) for r in results if r.format in formats.FORMATS]
    lines = []
    for i, (a, fa) in enumerate(bfp):
        for b, fb in bfp[i + 1:]:
            if (fa.mantissa_bits, fa.block) != (fb.mantissa_bits, fb.block) or fa.exponent_bits == fb.exponent_bits:
                continue
            (wide, fw), (narrow, fn) = sorted([(a, fa), (b, fb)], key=lambda x: -x[1].exponent_bits)
            differ = int(np.sum(np.any(wide.probs != narrow.probs, axis=-1)))
            head = (f"{wide.label} and {narrow.label} share {fw.mantissa_bits} mantissa bits and blocks of {fw.block}; "
                    f"only the shared exponent differs ({fw.exponent_bits} bits against {fn.exponent_bits})")
            if differ == 0:
                lines.append(f"{head}. Their outputs are identical on all {len(wide.probs)} pictures: the "
                             f"{fn.exponent_bits}-bit range (2^{fn.emin} to 2^{fn.emax}) never bound in a way that "
                             f"changed an output, so {narrow.label} saves {wide.bits - narrow.bits:.2f} bits per value "
                             "at no cost here.")
            else:
                lines.append(f"{head}. Their outputs differ on {differ} of {len(wide.probs)} pictures: some block's "
                             f"exponent fell outside the {fn.exponent_bits}-bit range (2^{fn.emin} to 2^{fn.emax}).")
    return lines


def _family_findings(results, score, what, base) -> list[str]:
    """Brainwave's and MSFP's formats against the OCP MX ones, from the measured results: each MX format beside
    the other family's format nearest in bits per value, and the fewest bits within a point of fp32."""
    from .fpga.device import formats
    mx = [r for r in results if r.format in formats.MX_FORMATS and r.block == formats.MX_FORMATS[r.format].block]
    bfp = [r for r in results if r.format in formats.FORMATS and r.block == formats.FORMATS[r.format].block]
    lines = []
    for r in mx:
        if bfp:
            o = min(bfp, key=lambda b: (abs(b.bits - r.bits), b.bits))
            d = 100 * (score(r) - score(o))
            verdict = ("the same" if abs(d) < 0.05 else f"{abs(d):.1f} points {'higher' if d > 0 else 'lower'} "
                       f"for {r.format}")
            lines.append(f"{r.format} ({r.bits:.2f} bits a value) beside {o.format} ({o.bits:.2f}): {what} "
                         f"{score(r):.1%} and {score(o):.1%}, {verdict}.")
    close = [r for r in results if score(r) >= base - 0.01]
    if close:
        best = min(close, key=lambda r: (r.bits, -score(r)))
        lines.append(f"The fewest bits a value within a point of fp32 here: {best.label} at {best.bits:.2f} bits "
                     f"({what} {score(best):.1%}).")
    else:
        lines.append("No format came within a point of fp32 here.")
    return lines


def confusion_matrix(truth, predicted, classes):
    """A figure: how many pictures of each true class (rows) were predicted as each class (columns)."""
    import matplotlib.pyplot as plt
    n = len(classes)
    counts = np.zeros((n, n), int)
    np.add.at(counts, (np.asarray(truth), np.asarray(predicted)), 1)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.2, 1.1 * n + 1.2))
    ax.imshow(counts, cmap="Blues", vmin=0)
    for (r, c), v in np.ndenumerate(counts):
        ax.text(c, r, str(v), ha="center", va="center", color="white" if v > counts.max() / 2 else "black")
    ax.set_xticks(range(n), classes)
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true class")
    ax.set_title(f"held-out pictures: {np.trace(counts)} of {counts.sum()} right")
    fig.tight_layout()
    return fig
