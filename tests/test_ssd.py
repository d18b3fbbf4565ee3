"""SSD post-processing on the host: anchors, box decoding, suppression (pure numpy, no model needed)."""
import numpy as np
import pytest

from accel_lib import UserError
from accel_lib.models import ssd

A = (4, 6, 6, 6, 4, 4)
MAPS = (38, 19, 10, 5, 3, 1)


def test_anchor_boxes_follow_the_ssd300_layout():
    a = ssd.anchor_boxes(300)
    assert a.shape == (8732, 4) and a.dtype == np.float32
    assert ssd.anchors_per_location() == A
    assert sum(s * s * k for s, k in zip(MAPS, A)) == 8732
    c = 0.5 * 8 / 300                                       # first location of the 38x38 map
    np.testing.assert_allclose(a[0], [c, c, 21 / 300, 21 / 300], rtol=1e-6)
    np.testing.assert_allclose(a[1], [c, c, np.sqrt(21 * 45) / 300, np.sqrt(21 * 45) / 300], rtol=1e-6)
    np.testing.assert_allclose(a[2], [c, c, 21 / np.sqrt(2) / 300, 21 * np.sqrt(2) / 300], rtol=1e-6)
    np.testing.assert_allclose(a[3], [c, c, 21 * np.sqrt(2) / 300, 21 / np.sqrt(2) / 300], rtol=1e-6)
    np.testing.assert_allclose(a[4, :2], [c, 1.5 * 8 / 300], rtol=1e-6)     # next location: same row, next column
    start7 = 38 * 38 * 4                                    # the 19x19 map: six anchors, ratios 3 and 1/3 too
    np.testing.assert_allclose(a[start7 + 4], [8 / 300, 8 / 300, 45 / np.sqrt(3) / 300, 45 * np.sqrt(3) / 300],
                               rtol=1e-6)
    big = np.sqrt(261 * 315) / 300                          # the 1x1 map: one location at the centre
    np.testing.assert_allclose(a[-4:], [[0.5, 0.5, 261 / 300, 261 / 300], [0.5, 0.5, big, big],
                                        [0.5, 0.5, 261 / np.sqrt(2) / 300, 261 * np.sqrt(2) / 300],
                                        [0.5, 0.5, 261 * np.sqrt(2) / 300, 261 / np.sqrt(2) / 300]], rtol=1e-6)


def _by_hand(box, anchor):
    """Offsets (dx, dy, dw, dh) of a (ymin, xmin, ymax, xmax) box for one (cy, cx, h, w) anchor, SSD's formulas."""
    cy, cx, h, w = anchor
    bcy, bcx = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    bh, bw = box[2] - box[0], box[3] - box[1]
    return [(bcx - cx) / (w * 0.1), (bcy - cy) / (h * 0.1), np.log(bw / w) / 0.2, np.log(bh / h) / 0.2]


def _outputs(detections, n_images=1):
    """Twelve seed-ordered outputs: background everywhere, and (image, anchor, class, box) detections."""
    anchors = ssd.anchor_boxes()
    logits = np.zeros((n_images, 8732, 21), np.float32)
    logits[..., 0] = 8.0
    offsets = np.zeros((n_images, 8732, 4), np.float32)
    for img, anchor, cls, box, strength in detections:
        logits[img, anchor, 0] = 0.0
        logits[img, anchor, cls] = strength
        offsets[img, anchor] = _by_hand(box, anchors[anchor])
    cls_maps, loc_maps, start = [], [], 0
    for s, k in zip(MAPS, A):
        n = s * s * k
        cls_maps.append(logits[:, start:start + n].reshape(n_images, s, s, k, 21))
        loc_maps.append(offsets[:, start:start + n].reshape(n_images, s, s, k, 4))
        start += n
    return cls_maps + loc_maps


def test_hand_encoded_boxes_come_back_exactly():
    boxes = [(0.10, 0.20, 0.45, 0.60), (0.55, 0.05, 0.95, 0.40), (0.30, 0.65, 0.70, 0.98)]
    dets = [(0, 100, 15, boxes[0], 9.0), (0, 6000, 7, boxes[1], 8.0), (0, 8700, 12, boxes[2], 10.0)]
    [(classes, scores, got)] = ssd.postprocess(_outputs(dets))
    order = [2, 0, 1]                                       # best score first
    assert list(classes) == [dets[i][2] for i in order]
    assert np.all(np.diff(scores) <= 0) and scores.dtype == np.float32
    np.testing.assert_allclose(got, [boxes[i] for i in order], atol=2e-6)
    # decode_boxes is the inverse of encode_boxes on every anchor
    want = np.tile(np.asarray(boxes[0], np.float32), (8732, 1))
    np.testing.assert_allclose(ssd.decode_boxes(ssd.encode_boxes(want)), want, atol=2e-6)


def test_overlapping_duplicates_are_suppressed_and_distinct_objects_are_not():
    car = (0.20, 0.20, 0.60, 0.60)
    car_again = (0.22, 0.21, 0.61, 0.62)                   # IoU with car ~0.86
    far_car = (0.65, 0.65, 0.95, 0.95)
    dog_on_car = (0.21, 0.20, 0.60, 0.59)                  # same place, another class
    dets = [(0, 10, 7, car, 9.0), (0, 14, 7, car_again, 8.5), (0, 7000, 7, far_car, 8.0),
            (0, 18, 12, dog_on_car, 7.5), (1, 10, 7, car, 9.0)]
    (c0, s0, b0), (c1, s1, b1) = ssd.postprocess(_outputs(dets, n_images=2))
    assert list(c0) == [7, 7, 12]
    np.testing.assert_allclose(b0, [car, far_car, dog_on_car], atol=2e-6)
    assert list(c1) == [7] and len(b1) == 1                # images are independent
    # a looser threshold keeps the duplicate; a higher score threshold drops the weaker detections
    one = _outputs(dets[:4])
    assert len(ssd.postprocess(one, nms_threshold=0.9)[0][0]) == 4
    assert list(ssd.postprocess(one, select_threshold=0.99)[0][0]) == [7, 7]     # the dog scores 0.989
    assert len(ssd.postprocess(one, top_k=2)[0][0]) == 1                         # car and its duplicate


def test_outputs_by_seed_name_and_bad_inputs():
    outs = _outputs([(0, 100, 3, (0.1, 0.1, 0.5, 0.5), 9.0)])
    by_name = dict(zip(ssd.OUTPUT_NAMES, outs))
    a, b = ssd.postprocess(outs)[0], ssd.postprocess(by_name)[0]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert ssd.OUTPUT_NAMES[0] == "ssd_300_vgg/block4_box/Reshape_1:0"
    assert ssd.OUTPUT_NAMES[6] == "ssd_300_vgg/block4_box/Reshape:0"
    with pytest.raises(UserError, match="twelve SSD outputs"):
        ssd.postprocess(outs[:6])
    with pytest.raises(UserError, match="lack"):
        ssd.postprocess({k: v for k, v in by_name.items() if "block11" not in k})
    boxes_off_image = _outputs([(0, 0, 3, (-0.2, -0.1, 0.3, 0.2), 9.0)])
    (_, _, b), = ssd.postprocess(boxes_off_image)
    np.testing.assert_allclose(b, [[0.0, 0.0, 0.3, 0.2]], atol=2e-6)   # clipped to the image


def test_boxes_are_drawn_with_labels():
    import matplotlib
    matplotlib.use("Agg")
    img = np.zeros((120, 160, 3), np.uint8)
    ax = ssd.draw_boxes(img, [7, 15], [0.9, 0.6], [(0.1, 0.1, 0.5, 0.5), (0.5, 0.5, 0.9, 0.9)])
    assert len(ax.patches) == 2
    assert [t.get_text() for t in ax.texts] == ["car 0.90", "person 0.60"]


def test_the_label_sets_ship_with_accel_lib():
    from accel_lib.client import load_labels
    voc, imagenet = load_labels("voc"), load_labels("imagenet")
    assert len(voc) == 21 and voc[0] == "background" and voc[15] == "person" and len(imagenet) == 1000
    with pytest.raises(UserError, match="'imagenet' and 'voc'"):
        load_labels("coco")


def test_what_is_drawn_counts_found_missed_and_false_at_the_pictures_threshold():
    truths = [([[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9]], [1, 2]), ([[0.2, 0.2, 0.6, 0.6]], [3])]
    detections = [([1, 2, 3, 1], [0.9, 0.3, 0.8, 0.7], [[0.1, 0.1, 0.4, 0.41], [0.5, 0.5, 0.9, 0.9],
                                                        [0.5, 0.5, 0.9, 0.9], [0.1, 0.1, 0.4, 0.4]]),
                  ([], [], np.zeros((0, 4)))]
    drawn = ssd.what_is_drawn(detections, truths, 0.5)
    # image 0: the disc found (its duplicate at 0.7 is false), the square scored 0.3 is not drawn: missed; the
    # triangle where the square is, is false. Image 1: nothing detected, its one object missed
    assert drawn == [{"objects": 2, "found": 1, "missed": 1, "false": 2}, {"objects": 1, "found": 0, "missed": 1,
                                                                           "false": 0}]
    assert ssd.what_is_drawn(detections, truths, 0.05)[0] == {"objects": 2, "found": 2, "missed": 0, "false": 2}
