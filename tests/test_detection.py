"""Detection measured offline: VOC-style mAP on hand-made cases, SSD's anchor matching, the generated scenes, and
SSD's training on them (the detector learns; bad input is refused with what to fix)."""
import numpy as np
import pytest

from accel_lib import UserError, samples
from helpers import save_keras_h5
from accel_lib.models import SsdSmall, SsdVgg, detection, ssd

A, B = (0.1, 0.1, 0.4, 0.4), (0.5, 0.5, 0.9, 0.8)


def _dets(*rows):
    """(class, score, box) rows -> one image's (classes, scores, boxes), as postprocess gives them."""
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros((0, 4), np.float32)
    c, s, b = zip(*rows)
    return np.asarray(c), np.asarray(s, np.float32), np.asarray(b, np.float32)


def _truth(*rows):
    c, b = zip(*rows)
    return np.asarray(b, np.float32), np.asarray(c)


def test_a_perfect_detector_scores_one_on_every_class():
    truths = [_truth((1, A), (2, B)), _truth((3, A))]
    per_class, mean = ssd.average_precision([_dets((1, .9, A), (2, .8, B)), _dets((3, .7, A))], truths, 4)
    assert per_class == {1: 1.0, 2: 1.0, 3: 1.0} and mean == 1.0


def test_a_box_shifted_below_the_iou_threshold_scores_nothing():
    shifted = (0.1, 0.25, 0.4, 0.55)                     # half the width off: IoU 1/3
    assert ssd.iou(np.asarray(A), np.asarray([shifted]))[0] == pytest.approx(1 / 3)
    assert ssd.average_precision([_dets((1, .9, shifted))], [_truth((1, A))], 2) == ({1: 0.0}, 0.0)
    nudged = (0.1, 0.12, 0.4, 0.42)                      # IoU 0.875: found
    assert ssd.average_precision([_dets((1, .9, nudged))], [_truth((1, A))], 2)[1] == 1.0
    assert ssd.average_precision([_dets((1, .9, shifted))], [_truth((1, A))], 2, iou_threshold=0.3)[1] == 1.0


def test_duplicates_count_as_false_positives():
    # A found, A found again (scored above B), B found: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    dets = [_dets((1, .9, A), (1, .8, A), (1, .7, B))]
    per_class, _ = ssd.average_precision(dets, [_truth((1, A), (1, B))], 2)
    assert per_class[1] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # the duplicate scored last costs nothing: full recall was reached before it
    assert ssd.average_precision([_dets((1, .9, A), (1, .7, B), (1, .6, A))], [_truth((1, A), (1, B))], 2)[1] == 1


def test_the_wrong_class_and_missed_objects_lower_the_score():
    assert ssd.average_precision([_dets((2, .9, A))], [_truth((1, A))], 3) == ({1: 0.0}, 0.0)  # class 2: no truth
    assert ssd.average_precision([_dets((1, .9, A))], [_truth((1, A), (1, B))], 2)[1] == 0.5   # half the recall
    assert ssd.average_precision([_dets()], [_truth((1, A))], 2)[1] == 0.0
    with pytest.raises(UserError, match="2 images of detections but 1"):
        ssd.average_precision([_dets(), _dets()], [_truth((1, A))], 2)


def test_matching_gives_every_box_an_anchor_and_offsets_that_decode_to_it():
    anchors = ssd.anchor_boxes()
    a = anchors[5000]                                    # a box that is exactly one anchor, and a small one
    exact = (a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2)
    tiny = (0.5, 0.5, 0.53, 0.52)                        # overlaps no anchor by 0.5: still claims its best one
    classes, offsets = ssd.match_anchors([exact, tiny], [2, 3])
    assert classes[5000] == 2 and np.abs(offsets[5000]).max() < 1e-4
    assert (classes == 3).sum() == 1 and set(np.unique(classes)) == {0, 2, 3}
    pos = classes > 0
    decoded = ssd.decode_boxes(offsets[None], anchors)[0][pos]
    want = np.where((classes[pos] == 2)[:, None], np.asarray(exact, np.float32), np.asarray(tiny, np.float32))
    np.testing.assert_allclose(decoded, want, atol=1e-5)
    assert not offsets[~pos].any()
    empty_classes, empty_offsets = ssd.match_anchors(np.zeros((0, 4)), [])
    assert not empty_classes.any() and not empty_offsets.any()


def test_scenes_are_seeded_and_their_boxes_are_the_objects_extent():
    img, boxes, labels = samples.scene(5, 240, 320)
    again = samples.scene(5, 240, 320)
    assert np.array_equal(img, again[0]) and np.array_equal(boxes, again[1])
    assert img.shape == (240, 320, 3) and 2 <= len(boxes) <= 5 and set(labels) <= {1, 2, 3}
    assert ((boxes >= 0) & (boxes <= 1)).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    for seed in range(20):                               # one object: its box holds exactly its pixels' extent
        img, (box,), (label,) = samples.scene(seed, 200, 240, objects=(1, 1), sizes=(0.3, 0.5))
        y0, x0, y1, x1 = np.round(box * (200, 240, 200, 240)).astype(int)
        assert 0 <= y0 < y1 <= 200 and 0 <= x0 < x1 <= 240
        colour = np.median(img[y0:y1, x0:x1].reshape(-1, 3), 0) if label == 2 else None
        if colour is not None:                           # a square fills its box: the same colour, edge to edge
            inside = np.abs(img[y0:y1, x0:x1].astype(int) - colour).max(-1) < 40
            assert inside[[0, -1]].mean() > 0.9 and inside[:, [0, -1]].mean() > 0.9
            outside = np.abs(img[[max(y0 - 1, 0), min(y1, 199)], x0:x1].astype(int) - colour).max(-1) < 40
            assert outside.mean() < 0.5 or y0 == 0 or y1 == 200
    images, truths = samples.labelled_scenes(6, seed=3)
    assert len(images) == len(truths) == 6 and all(len(b) == len(c) for b, c in truths)
    with pytest.raises(ValueError, match="unknown object"):
        samples.scene(0, classes=("hexagon",))


def test_class_names_set_the_heads_and_bad_ones_are_refused(tmp_path):
    m = SsdSmall(tmp_path, weights="random", class_names=("disc", "square"))
    assert m.num_classes == 3 and m.class_names == ("background", "disc", "square") and m.labels is None
    shapes = [s for _, _, _, s, _ in m.output_specs()]
    assert shapes[0] == [-1, 38, 38, 4, 3] and shapes[6] == [-1, 38, 38, 4, 4]
    assert SsdVgg(tmp_path, weights="random").num_classes == 21
    for bad in ((), ("disc", "disc"), ("background", "disc")):
        with pytest.raises(UserError, match="class_names"):
            SsdSmall(tmp_path, weights="random", class_names=bad)


def test_training_on_scenes_lowers_the_loss_and_refuses_classes_the_heads_lack(tmp_path):
    images, truths = samples.labelled_scenes(8, seed=4)
    m = SsdSmall(tmp_path, weights="random", class_names=samples.SCENE_CLASSES)
    losses = detection.train(m, images, truths, epochs=3, flip=False)
    assert len(losses) == 3 and losses[-1] < losses[0] and np.isfinite(losses).all()
    assert m.weights_source.startswith("trained(8 scenes")
    outputs = m.get_default_classifier()(m.featurizer(_prep(images[:2])))
    dets = ssd.postprocess([np.asarray(o) for o in outputs], select_threshold=0.05)
    assert len(dets) == 2 and all(set(c) <= {1, 2, 3} for c, _, _ in dets)
    two = SsdSmall(tmp_path, weights="random", class_names=("disc", "square"))
    with pytest.raises(UserError, match="classes must be 1..2"):
        detection.train(two, images, truths, epochs=1)
    with pytest.raises(UserError, match="one \\(boxes, classes\\) per image"):
        detection.train(m, images, truths[:3], epochs=1)


def _prep(images):
    from accel_lib.fpga.device.host import preprocess
    return preprocess(images, order="RGB", output_height=300, output_width=300, preserve_aspect_ratio=False)


def test_a_pascal_voc_folder_reads_back_what_was_written(tmp_path):
    images, truths = samples.labelled_scenes(4, seed=6)
    folder = samples.write_voc_folder(tmp_path / "voc", images, truths, samples.SCENE_CLASSES)
    got_images, got_truths, names = samples.voc_folder(folder, samples.SCENE_CLASSES)
    assert names == samples.SCENE_CLASSES and got_images == images
    for (boxes, classes), (got_boxes, got_classes) in zip(truths, got_truths):
        assert np.array_equal(classes, got_classes)
        np.testing.assert_allclose(got_boxes, boxes, atol=1 / 240)          # pixel rounding, at most half a pixel
    assert set(samples.voc_folder(folder)[2]) <= set(samples.SCENE_CLASSES)  # names found, sorted
    with pytest.raises(ValueError, match="not in class_names"):
        samples.voc_folder(folder, ("disc",))
    (tmp_path / "voc" / "Annotations" / "000000.xml").write_text("<annotation><size></size></annotation>")
    with pytest.raises(ValueError, match="not a Pascal VOC annotation"):
        samples.voc_folder(folder)
    with pytest.raises(ValueError, match="no Annotations"):
        samples.voc_folder(tmp_path)


def test_a_weights_file_for_other_classes_gives_its_backbone_and_fresh_heads(tmp_path):
    voc = SsdSmall(tmp_path, weights="random", seed=3)               # 21 classes, as a VOC weights file has
    path = tmp_path / "voc.h5"
    save_keras_h5([*voc.featurizer.layers, *voc.get_default_classifier().layers], path)
    mine = SsdSmall(tmp_path, weights=str(path), class_names=samples.SCENE_CLASSES)
    x = _prep(samples.labelled_scenes(1, seed=8)[0])
    for a, b in zip(mine.featurizer(x), voc.featurizer(x)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert mine.get_default_classifier().get_layer("block4_conv_cls").kernel.shape[-1] == 4 * 4
    same = SsdSmall(tmp_path, weights=str(path))                     # the file's own classes: its heads too
    np.testing.assert_array_equal(same.get_default_classifier().get_layer("block4_conv_cls").get_weights()[0],
                                  voc.get_default_classifier().get_layer("block4_conv_cls").get_weights()[0])
