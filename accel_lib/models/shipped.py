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


def train(name, model_base_path):
    """Train the recipe's network from its seed on its generated data, as the notebook does; returns (the model,
    its held-out metric)."""
    from .. import samples
    r = RECIPES[name]
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


def held_out(model_graph) -> float:
    """The recipe's held-out metric of ``model_graph`` in TensorFlow (fp32), on the recipe's generated data."""
    import numpy as np

    from .. import samples
    from ..fpga.device.host import preprocess
    r = recipe_of(model_graph)
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
            "tensorflow": tf.__version__, "remake": f"python -m accel_lib.models.shipped make {name}"}
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
