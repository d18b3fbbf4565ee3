"""The trained weights the project ships (07's SsdSmall, 09's SmallResnet): they load by default, give the held-out
result their card records, and a retrain from the recipe's seed lands within the recipe's measured spread."""
import numpy as np
import pytest

from accel_lib import UserError, samples
from accel_lib.models import recipes, shipped
from accel_lib.models.small import SmallResnet
from accel_lib.models.ssd import QuantizedSsdSmall, SsdSmall


def test_every_recipe_has_its_file_and_card():
    for name, recipe in recipes.RECIPES.items():
        assert recipes.path(name).is_file(), f"remake it: python -m accel_lib.models.shipped make {name}"
        card = recipes.card(name)
        assert card["recipe"]["seed"] == recipe.seed and card["recipe"]["epochs"] == recipe.epochs, name
        assert card["remake"].endswith(f"make {name}")
    with pytest.raises(UserError, match="no shipped weights 'nope'; known: smallresnet-patterns"):
        recipes.path("nope")


def _held_out_matches_card(model_graph, name, pictures):
    """The card's metric, measured again here: fp32 on another CPU may flip a borderline picture or two."""
    got, card = shipped.held_out(model_graph), recipes.card(name)["held_out"]
    assert abs(got - card) <= 2 / pictures, (name, got, card)
    return got


def test_smallresnet_loads_its_shipped_weights_by_default(tmp_path):
    m = SmallResnet(tmp_path, image_size=40)
    m.featurizer
    assert m.weights_source == "shipped:smallresnet-patterns.h5"
    r = recipes.RECIPES["smallresnet-patterns"]
    assert _held_out_matches_card(m, r.name, 10 * r.test_count) >= 0.9
    with pytest.raises(UserError, match="SmallResnet has no ImageNet weights"):
        SmallResnet(tmp_path, weights="imagenet").featurizer


def test_ssd_small_loads_its_shipped_weights_and_heads_for_other_classes_are_left_to_train(tmp_path):
    m = QuantizedSsdSmall(tmp_path, class_names=("disc", "square", "triangle"))
    m.featurizer
    assert m.weights_source == "shipped:ssd_small-scenes.h5"
    r = recipes.RECIPES["ssd_small-scenes"]
    assert _held_out_matches_card(m, r.name, 50) >= 0.7
    other = SsdSmall(tmp_path, class_names=("cat", "dog"))
    other.featurizer
    a = m.featurizer.get_layer("block4_conv").get_weights()[0]
    np.testing.assert_array_equal(other.featurizer.get_layer("block4_conv").get_weights()[0], a)   # the backbone
    assert other.get_default_classifier().get_layer("block4_conv_cls").get_weights()[0].shape[-1] == 4 * 3
    rnd = SsdSmall(tmp_path, weights="random", class_names=("disc", "square", "triangle"))
    rnd.featurizer
    assert rnd.weights_source.startswith("random(")


@pytest.mark.parametrize("name", [n for n, r in recipes.RECIPES.items() if not r.steps])
def test_a_retrain_from_the_recipe_lands_within_its_spread(name, tmp_path):
    model_graph, metric = shipped.train(name, tmp_path)
    card, spread = recipes.card(name)["held_out"], recipes.RECIPES[name].spread
    assert abs(metric - card) <= spread, f"{name}: retrained {metric:.3f}, shipped {card:.3f} (spread {spread})"
    out = tmp_path / "again.h5"
    shipped.write_h5(model_graph, out)
    again = type(model_graph)(tmp_path, weights=str(out), **(
        {"class_names": model_graph.class_names[1:]} if name.startswith("ssd") else {}))
    again.featurizer
    assert shipped.held_out(again) == pytest.approx(metric, abs=1e-9)      # what is written is what was trained


@pytest.mark.parametrize("name", [n for n, r in recipes.RECIPES.items() if r.steps])
def test_a_distillation_recipe_starts_as_its_card_says_and_its_weights_give_the_cards_agreement(name, tmp_path):
    """The whole recipe takes its 15 minutes in ``make bench``'s stead: here its first steps from the seed reach the
    card's mean loss within the spread measured over seeds, and the shipped weights give the card's agreement."""
    from accel_lib.models import squeezenet
    r, card = recipes.RECIPES[name], recipes.card(name)
    assert card["held_out"] == card["curve"][-1][1] and card["curve"][-1][0] == r.steps
    assert set(card["pictures"]) == set(samples.DISTILLATION_PICTURES)
    assert not set(card["pictures"]) & set(samples.PHOTOS)
    model_graph, metric = shipped.train(name, tmp_path, stop_after=r.check_steps, show=False)
    got = model_graph.training_record["check_loss"]
    assert metric is None and abs(got - card["check_loss"]) <= r.check_spread, (got, card["check_loss"])
    m = squeezenet.QuantizedSqueezenet11(tmp_path)
    m.featurizer
    assert m.weights_source == f"shipped:{name}.h5" and m.default_numeric_format == r.numeric_format
    top1, top5 = shipped.agreement(m, r.numeric_format)
    assert abs(top1 - card["held_out"]) <= 3 / r.test_count and abs(top5 - card["top5"]) <= 3 / r.test_count
