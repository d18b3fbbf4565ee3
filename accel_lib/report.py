"""The quantization report of a converted model, as a table and plots (hls4ml-profiling style)."""
from __future__ import annotations

from .errors import UserError


def load_report(converted_model):
    """The typed report a narrow-format conversion wrote (``fpga.device.manifest.QuantizationReport``; None for fp32
    packages)."""
    from .fpga.device import manifest
    name = converted_model.manifest.report
    if not name:
        return None
    try:
        return manifest.loads(manifest.QuantizationReport, converted_model.read_file(name).decode(),
                              f"{converted_model.id}/{name}")
    except manifest.ManifestError as e:
        raise UserError(str(e)) from None


def show_report(converted_model, plot=True):
    """Print the summary and per-layer SQNR; with plot, draw error per layer and value ranges. Returns the report."""
    rep = load_report(converted_model)
    if rep is None:
        print(f"{converted_model.id} runs in fp32 on the device: nothing is quantized, no report.")
        return None
    tag = " [RANDOM WEIGHTS: these numbers say nothing of a trained model]" if rep.random_weights else ""
    print(f"{rep.numeric_format} vs fp32 on {rep.images} generated images (measured){tag}")
    print(f"  top-1 agreement {rep.top1_agreement:.0%}, top-5 overlap {rep.top5_overlap:.0%}, "
          f"feature SQNR {rep.feature_sqnr_db:.1f} dB")
    print(f"  (an SQNR of {rep.feature_sqnr_db:.1f} dB: the device's error carries "
          f"{10 ** (-rep.feature_sqnr_db / 10):.2g} of the features' power; the agreement counts {rep.images} images, "
          "so one image is " f"{1 / max(rep.images, 1):.0%} of it: notebook 09 measures on more)")
    rows = rep.layers
    show = rows if len(rows) <= 12 else rows[:6] + [None] + rows[-5:]
    print(f"  {'layer':<28}{'channels':>9}{'weight SQNR':>13}{'output SQNR':>13}")
    for r in show:
        if r is None:
            print(f"  {'...':<28}")
            continue
        print(f"  {r.name[:27]:<28}{r.channels:>9}{r.weight_sqnr_db:>11.1f}dB{r.output_sqnr_db:>11.1f}dB")
    if plot:
        _plot(rep, tag)
    return rep


def _plot(rep, tag):
    import matplotlib.pyplot as plt
    rows = rep.layers
    idx = list(range(len(rows)))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    ax1.plot(idx, [r.weight_sqnr_db for r in rows], "o-", ms=3, label="weights")
    ax1.plot(idx, [r.output_sqnr_db for r in rows], "s-", ms=3, label="layer output (error accumulates)")
    ax1.set_ylabel("SQNR vs fp32 (dB)")
    ax1.set_title(f"{rep.numeric_format}: error per layer{tag}")
    ax1.legend()
    ax1.grid(alpha=0.3)
    for key, colour, shift, label in (("weights_fp32_log2", "tab:blue", -0.18, "fp32 weights"),
                                      ("weights_device_log2", "tab:orange", 0.18, f"{rep.numeric_format} weights")):
        stats = [getattr(r, key) for r in rows]
        xs = [i + shift for i, s in enumerate(stats) if s]
        ss = [s for s in stats if s]
        ax2.vlines(xs, [s[0] for s in ss], [s[4] for s in ss], colors=colour, lw=0.8)
        ax2.vlines(xs, [s[1] for s in ss], [s[3] for s in ss], colors=colour, lw=4, label=label)
        ax2.plot(xs, [s[2] for s in ss], "_", color="k", ms=6)
    ax2.set_ylabel("log2 |value| (min, quartiles, max)")
    ax2.set_xlabel("layer (Conv / MatMul, in graph order)")
    ax2.set_title("float vs device weight distributions (values under the block's range flush to zero)")
    ax2.legend(loc="lower left")
    ax2.grid(alpha=0.3)
    plt.tight_layout()
    plt.show()
