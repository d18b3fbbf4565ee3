"""What format-aware fine-tuning buys, for notebook 09: each narrow format's score before and after, as a table,
one plot and sentences made from the numbers."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class BeforeAfter:
    """One format at one block size on one network: its score before fine-tuning (measured on its package) and after
    (``score_after``'s: the Keras twin, which the tests hold equal to the package, or the package itself)."""
    network: str
    label: str
    format: str
    block: int
    bits: float
    before: float
    after: float


def before_after(network, results, score_after, only="all", show=True) -> list[BeforeAfter]:
    """For each narrow FormatResult in ``results`` (the first is fp32), or those that ``only`` names (comma-separated:
    a format name means its default block, a label such as ``"ms-fp9 /16"`` that block), ``score_after(fmt)`` with
    ``fmt`` the Format or MxFormat; one BeforeAfter each, with a progress bar."""
    from . import progress
    from .fpga.device import formats
    names = None if only == "all" else {n.strip() for n in only.split(",") if n.strip()}
    unknown = sorted(n for n in names or () if n.split(" /")[0] not in formats.NAMES)
    if unknown:
        raise ValueError(f"unknown format(s) {unknown}; choose from {list(formats.NAMES)} or 'all'")

    def chosen(r):
        return names is None or r.label in names or (r.format in names and r.block == _default_block(r.format))
    narrow = [r for r in results if r.format != "fp32" and chosen(r)]
    bar = progress.bar(total=len(narrow), desc=f"{network}: after fine-tuning", unit="format", show=show)
    out = []
    for r in narrow:
        before = r.accuracy if r.accuracy is not None else r.top1_agreement
        out.append(BeforeAfter(network, r.label, r.format, r.block, r.bits, before,
                               score_after(formats.get(r.format, r.block))))
        bar.update(1)
    bar.close()
    return out


def print_before_after(rows, what):
    """A table: network, format, bits per value, before, after, and what fine-tuning bought (points)."""
    print(f"{'network':<13}{'format':<16}{'bits/value':>11}{'before':>9}{'after':>9}{'bought':>9}   ({what})")
    for r in rows:
        print(f"{r.network:<13}{r.label:<16}{r.bits:>11.2f}{r.before:>9.1%}{r.after:>9.1%}"
              f"{100 * (r.after - r.before):>+8.1f}")


def before_after_plot(groups):
    """One panel per network (``groups``: {title: (rows, fp32 score, y label)}): scores before (hollow) and after
    (filled) fine-tuning against bits per value; colour per format, line style and marker per block size."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from .notebook import format_style, style_legend
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4.6), squeeze=False)
    entries = {}
    for ax, (title, (rows, base, ylabel)) in zip(axes[0], groups.items()):
        for r in rows:
            colour, line, marker = format_style(r.format, r.block)
            ax.annotate("", (r.bits, 100 * r.after), (r.bits, 100 * r.before),
                        arrowprops=dict(arrowstyle="->", color=colour, ls=line, lw=1.4))
            ax.scatter(r.bits, 100 * r.before, s=50, marker=marker, facecolors="none", edgecolors=colour, zorder=3)
            ax.scatter(r.bits, 100 * r.after, s=50, marker=marker, color=colour, zorder=3)
            entries.setdefault(r.label, (r.label, r.format, r.block))
        ax.axhline(100 * base, color="black", lw=0.8, ls=":")
        ticks = sorted({round(r.bits, 2) for r in rows})
        ax.set_xticks(ticks, [f"{t:.2f}" for t in ticks])
        if any(b - a < 0.2 for a, b in zip(ticks, ticks[1:])):
            ax.tick_params(axis="x", labelrotation=60)           # close values: slanted, so they do not overlap
        ax.set_xlim(min(ticks) - 0.5, max(ticks) + 0.5)
        ax.set_xlabel("bits per value")
        ax.set_ylabel(ylabel)
        ax.set_ylim(-2, 102)
        ax.set_title(f"{title}: before (hollow), after (filled); measured", fontsize=10)
        ax.grid(alpha=0.3)
    style_legend(fig, list(entries.values()), [Line2D([], [], color="black", lw=0.8, ls=":", label="fp32")])
    fig.tight_layout()
    return fig


def _default_block(name):
    from .fpga.device import formats
    return formats.get(name).block


def findings(rows, base, what, goals=()) -> list[str]:
    """Sentences from the numbers: what fine-tuning bought per format (with its bits per value), the largest gain,
    and each goal ``(label, points)`` met or missed against the fp32 score ``base``."""
    lines = []
    for r in rows:
        gain = 100 * (r.after - r.before)
        lines.append(f"{r.network} {r.label} ({r.bits:.2f} bits a value): {what} {r.before:.1%} -> {r.after:.1%}, "
                     f"{gain:+.1f} points; now {100 * (base - r.after):.1f} points from fp32.")
    if rows:
        best = max(rows, key=lambda r: r.after - r.before)
        lines.append(f"Fine-tuning bought the most in {best.label}: {100 * (best.after - best.before):.1f} points.")
    by_label = {r.label: r for r in rows}
    for label, points in goals:
        r = by_label.get(label)
        if r is not None:
            gap = 100 * (base - r.after)
            lines.append(f"Goal for {r.network} {label}, within {points:g} point{'' if points == 1 else 's'} of fp32: "
                         + ("met" if gap <= points else "NOT met") + f" ({gap:.1f} points from fp32).")
    return lines
