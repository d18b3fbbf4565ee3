import numpy as np
import pytest

from accel_lib import UserError, samples
from accel_lib.models import QuantizedResnet50, Resnet50, read_metadata
from helpers import save_keras_h5


def test_random_weights_are_seeded_and_announced(tmp_path, capsys):
    x = samples.sample_batch(2, 64, "BGR", seed=3)
    a = Resnet50(tmp_path, weights="random", image_size=64)
    b = Resnet50(tmp_path, weights="random", image_size=64)
    fa, fb = a.import_graph_def(x).numpy(), b.import_graph_def(x).numpy()
    np.testing.assert_array_equal(fa, fb)
    assert fa.shape == (2, 2048) and np.isfinite(fa).all() and fa.std() > 0
    probs = a.get_default_classifier(a.import_graph_def(x)).numpy()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert a.weights_source == "random(seed=0)"


def test_auto_offline_falls_back_to_random_loudly(tmp_path, capsys):
    m = QuantizedResnet50(tmp_path, weights="auto", image_size=64)
    m.restore_weights()
    out = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in out and "mean nothing" in out
    assert m.weights_source.startswith("random") and m.default_numeric_format == "ms-fp9"


def test_imagenet_offline_without_cache_says_what_to_do(tmp_path):
    with pytest.raises(UserError, match="ACCEL_LIB_OFFLINE"):
        Resnet50(tmp_path, weights="imagenet", image_size=64).restore_weights()


def test_weights_file_round_trip(tmp_path):
    src = Resnet50(tmp_path, weights="random", image_size=64, seed=5)
    src.restore_weights()
    path = tmp_path / "w.weights.h5"
    save_keras_h5([*src.featurizer.layers, *src.get_default_classifier().layers], path)
    dst = Resnet50(tmp_path, weights=str(path), image_size=64)
    x = samples.sample_batch(2, 64, "BGR")
    np.testing.assert_allclose(dst.import_graph_def(x).numpy(), src.import_graph_def(x).numpy(), atol=1e-5)
    assert dst.weights_source == "file:w.weights.h5"


def test_bad_weights_argument(tmp_path):
    with pytest.raises(UserError, match="'auto', 'imagenet', 'random'"):
        Resnet50(tmp_path, weights="nonexistent.h5")


def test_saved_model_signatures_and_metadata(small_model):
    import tensorflow as tf
    graph, info = small_model
    meta = read_metadata(info.path)
    assert info.input_tensors == "images"
    assert info.output_tensors == "classifier/resnet_v1_50/predictions/Softmax:0"
    assert meta.preprocessing["output_height"] == 64 and meta.weights == "random(seed=0)"
    loaded = tf.saved_model.load(info.path)
    assert set(loaded.signatures) == {"serving_default", "featurize", "heads"}
    imgs = samples.sample_images(3)
    out = loaded.signatures["serving_default"](images=tf.constant(imgs))["output_alias"].numpy()
    assert out.shape == (3, 1000)
    from accel_lib.models.utils import preprocess_array
    x = preprocess_array(tf.constant(imgs), order="BGR", output_height=64, output_width=64)
    expect = graph.get_default_classifier(graph.import_graph_def(x)).numpy()
    np.testing.assert_allclose(out, expect, atol=1e-4)
