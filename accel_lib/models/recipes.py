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


RECIPES = {r.name: r for r in (
    # SmallResnet's held-out accuracy over five seeds: 94-98%
    Recipe("smallresnet-patterns", "SmallResnet", seed=0, train_count=300, test_count=40, epochs=10,
           metric="held-out accuracy (fp32)", spread=0.05),
    Recipe("ssd_small-scenes", "SsdSmall", seed=0, train_count=256, test_count=32, epochs=10,
           metric="held-out mAP@0.5 (fp32)", spread=0.08),
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
    """The recipe of ``model_graph``'s network (its Quantized twin shares it), or None."""
    family = type(model_graph).__name__.replace("Quantized", "")
    return next((r for r in RECIPES.values() if r.model == family), None)
