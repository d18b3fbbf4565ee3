"""Transfer learning's pieces: generated labelled data, the held-out split, a folder of your own, the head."""
import numpy as np
import pytest

from accel_lib import UserError, samples
from accel_lib.models import transfer


def test_generated_labelled_images_are_seeded_balanced_and_decodable():
    from accel_lib.fpga.device import host
    images, labels = samples.labelled_images(("day", "night"), per_class=5, seed=1)
    again, _ = samples.labelled_images(("day", "night"), per_class=5, seed=1)
    assert images == again and list(labels) == [0, 1] * 5
    x = host.preprocess(images, output_height=32, output_width=32)
    day, night = x[labels == 0].mean(), x[labels == 1].mean()
    assert day > night + 50                          # what the classes are: bright skies and dark ones
    with pytest.raises(ValueError, match="unknown kind"):
        samples.shape_image("clouds")


def test_split_holds_out_per_class():
    images = [bytes([i]) for i in range(30)]
    labels = np.array([0] * 10 + [1] * 20)
    tr, trl, te, tel = transfer.split(images, labels, test_per_class=4)
    assert len(te) == 8 and sorted(tel) == [0] * 4 + [1] * 4 and len(tr) == 22
    assert not set(tr) & set(te)
    with pytest.raises(UserError, match="class 0 has 10 images"):
        transfer.split(images, labels, test_per_class=10)


def test_a_folder_with_one_subfolder_per_class(tmp_path):
    for name, kind in (("cats", "discs"), ("dogs", "stripes")):
        (tmp_path / name).mkdir()
        for i in range(3):
            (tmp_path / name / f"{i}.jpg").write_bytes(samples.encode(samples.shape_image(kind, i, 64, 80)))
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    images, labels, classes = samples.image_folder(tmp_path)
    assert classes == ["cats", "dogs"] and list(labels) == [0, 0, 0, 1, 1, 1] and len(images) == 6
    with pytest.raises(ValueError, match="one subfolder per class"):
        samples.image_folder(tmp_path / "cats")


def test_the_head_learns_separable_features_and_refuses_bad_labels():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 40)
    feats = rng.standard_normal((80, 64)).astype(np.float32) + labels[:, None] * 1.5
    head = transfer.train_head(feats[:60], labels[:60], 2, epochs=40)
    assert [l.name for l in head.layers if l.weights][-2:] == ["dense_1024", "predictions"]
    assert np.mean(head.predict(feats[60:], verbose=0).argmax(1) == labels[60:]) >= 0.9
    with pytest.raises(UserError, match="labels must be 0..1"):
        transfer.train_head(feats, labels + 1, 2)
