"""SSD300 on VGG-16 (the article's SsdVgg, after SSD-TensorFlow): the graph, its anchors, and host post-processing.

Where each part runs: the VGG-16 backbone with its extra blocks (conv4_3 with L2 normalisation, dilated fc6/fc7,
blocks 8-11) is the **device** stage; the twelve 3x3 box and class heads run on the **host** in fp32, with the
reshapes that give the article's twelve output tensors. Why the host: it is the article's split (featurizer on the FPGA,
what follows on the CPU), the heads are ~3% of the multiply-adds, and their class scores and box offsets keep
full precision for the decoding and suppression that follow. Post-processing (softmax, box decoding, per-class
non-maximum suppression) is vectorised numpy, run by the client on the twelve arrays the service returns.
"""
from __future__ import annotations

import functools

import numpy as np

from ..errors import UserError
from ..samples import box_iou as iou     # one IoU for the scenes, matching, suppression and mAP
from .weights import warn_random
from .zoo import AcceleratedModel

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
BLOCKS = ("block4", "block7", "block8", "block9", "block10", "block11")
MAP_SIZES = (38, 19, 10, 5, 3, 1)                 # for a 300x300 input
ANCHOR_SIZES = ((21, 45), (45, 99), (99, 153), (153, 207), (207, 261), (261, 315))
ANCHOR_RATIOS = ((2, .5), (2, .5, 3, 1 / 3), (2, .5, 3, 1 / 3), (2, .5, 3, 1 / 3), (2, .5), (2, .5))
ANCHOR_STEPS = (8, 16, 32, 64, 100, 300)
ANCHOR_OFFSET = 0.5
PRIOR_SCALING = (0.1, 0.1, 0.2, 0.2)             # (y, x, h, w) as in SSD-TensorFlow
IMAGE_SIZE = 300
EVAL_SCORE_THRESHOLD = 0.05                      # mAP counts detections down to this score, as VOC's evaluation does
NUM_CLASSES = len(VOC_CLASSES)
CLS_NAMES = tuple(f"ssd_300_vgg/{b}_box/Reshape_1:0" for b in BLOCKS)    # class scores [N, H, W, A, 21]
LOC_NAMES = tuple(f"ssd_300_vgg/{b}_box/Reshape:0" for b in BLOCKS)      # box offsets [N, H, W, A, 4]
OUTPUT_NAMES = CLS_NAMES + LOC_NAMES                                     # the article's order


def anchors_per_location():
    """A = 2 + the number of aspect ratios, per feature map: (4, 6, 6, 6, 4, 4)."""
    return tuple(2 + len(r) for r in ANCHOR_RATIOS)


def anchor_boxes(image_size=IMAGE_SIZE) -> np.ndarray:
    """float32 [8732, 4] anchors as (cy, cx, h, w) in [0, 1], in the order the six outputs flatten and concatenate
    (map by map, row-major over the map, anchors last)."""
    out = []
    for size, (s0, s1), ratios, step in zip(MAP_SIZES, ANCHOR_SIZES, ANCHOR_RATIOS, ANCHOR_STEPS):
        idx = (np.arange(size, dtype=np.float64) + ANCHOR_OFFSET) * step / image_size
        cy, cx = np.meshgrid(idx, idx, indexing="ij")                          # [size, size]
        hw = [(s0, s0), (np.sqrt(s0 * s1),) * 2] + [(s0 / np.sqrt(r), s0 * np.sqrt(r)) for r in ratios]
        hw = np.asarray(hw, np.float64) / image_size                          # [A, 2] as (h, w)
        a = len(hw)
        boxes = np.empty((size, size, a, 4), np.float64)
        boxes[..., 0] = cy[..., None]
        boxes[..., 1] = cx[..., None]
        boxes[..., 2] = hw[:, 0]
        boxes[..., 3] = hw[:, 1]
        out.append(boxes.reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


def encode_boxes(boxes, anchors=None) -> np.ndarray:
    """(ymin, xmin, ymax, xmax) boxes, one per anchor [..., 4] -> the offsets (dx, dy, dw, dh) that decode to them."""
    a = anchor_boxes() if anchors is None else np.asarray(anchors, np.float64)
    b = np.asarray(boxes, np.float64)
    cy, cx = (b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2
    h, w = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    sy, sx, sh, sw = PRIOR_SCALING
    return np.stack([(cx - a[:, 1]) / a[:, 3] / sx, (cy - a[:, 0]) / a[:, 2] / sy,
                     np.log(w / a[:, 3]) / sw, np.log(h / a[:, 2]) / sh], -1).astype(np.float32)


def decode_boxes(offsets, anchors=None) -> np.ndarray:
    """Offsets (dx, dy, dw, dh) [..., 8732, 4] -> boxes (ymin, xmin, ymax, xmax), unclipped."""
    a = anchor_boxes() if anchors is None else np.asarray(anchors, np.float32)
    o = np.asarray(offsets, np.float32)
    sy, sx, sh, sw = PRIOR_SCALING
    cx = o[..., 0] * a[:, 3] * sx + a[:, 1]
    cy = o[..., 1] * a[:, 2] * sy + a[:, 0]
    w = a[:, 3] * np.exp(o[..., 2] * sw)
    h = a[:, 2] * np.exp(o[..., 3] * sh)
    return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], -1)


def _as_list(outputs):
    if isinstance(outputs, dict):
        missing = [n for n in OUTPUT_NAMES if n not in outputs]
        if missing:
            raise UserError(f"the SSD outputs lack {missing[:2]}...; score with all twelve names "
                            "(SsdVgg.output_tensors) before post-processing.")
        return [np.asarray(outputs[n]) for n in OUTPUT_NAMES]
    outputs = [np.asarray(o) for o in outputs]
    if len(outputs) != 12:
        raise UserError(f"postprocess needs the twelve SSD outputs in the article's order, got {len(outputs)}.")
    return outputs


def _flatten(maps, depth):
    n = maps[0].shape[0]
    return np.concatenate([m.reshape(n, -1, depth) for m in maps], axis=1)


def _nms(classes, boxes, nms_threshold):
    """Indices kept by per-class greedy suppression; candidates come sorted best first."""
    keep = np.ones(len(boxes), bool)
    for i in range(len(boxes)):                    # over the few candidates left, never over the 8732 anchors
        if keep[i]:
            later = np.arange(i + 1, len(boxes))
            same = later[(classes[later] == classes[i]) & keep[later]]
            keep[same[iou(boxes[i], boxes[same]) > nms_threshold]] = False
    return np.flatnonzero(keep)


def postprocess(outputs, select_threshold=0.5, nms_threshold=0.45, top_k=400):
    """The twelve SSD outputs (article's order, or a dict by the article's names) -> one (classes, scores, boxes) per
    image: softmax, decoding, background and scores under ``select_threshold`` dropped, boxes clipped to [0, 1], the
    ``top_k`` best kept, then per-class non-maximum suppression. Boxes are (ymin, xmin, ymax, xmax), best first."""
    outs = _as_list(outputs)
    logits, offsets = _flatten(outs[:6], outs[0].shape[-1]), _flatten(outs[6:], 4)    # classes incl. background
    if logits.shape[1] != len(anchor_boxes()):
        raise UserError(f"the outputs hold {logits.shape[1]} anchors, SSD300 has {len(anchor_boxes())}.")
    z = logits - logits.max(-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    boxes = np.clip(decode_boxes(offsets), 0.0, 1.0)
    results = []
    for p, b in zip(probs, boxes):
        anchor, cls = np.nonzero(p[:, 1:] >= select_threshold)
        cls = cls + 1
        scores = p[anchor, cls]
        order = np.argsort(-scores, kind="stable")[:top_k]
        anchor, cls, scores = anchor[order], cls[order], scores[order]
        kept = _nms(cls, b[anchor], nms_threshold)
        results.append((cls[kept], scores[kept].astype(np.float32), b[anchor][kept].astype(np.float32)))
    return results


def draw_boxes(image, classes, scores, boxes, labels=VOC_CLASSES, ax=None, title=None):
    """Draw (ymin, xmin, ymax, xmax) boxes in [0, 1] with their labels and scores on ``image`` (matplotlib);
    ``scores`` None: labels alone (ground truth has no score)."""
    import matplotlib.pyplot as plt
    img = np.asarray(image)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 7 * img.shape[0] / img.shape[1]))
    ax.imshow(img)
    ax.set_axis_off()
    h, w = img.shape[:2]
    colours = plt.get_cmap("tab20")
    for c, s, (y0, x0, y1, x1) in zip(classes, [None] * len(classes) if scores is None else scores, boxes):
        col = colours(int(c) % 20)
        ax.add_patch(plt.Rectangle((x0 * w, y0 * h), (x1 - x0) * w, (y1 - y0) * h, fill=False, ec=col, lw=2))
        ax.text(x0 * w, y0 * h, labels[int(c)] if s is None else f"{labels[int(c)]} {s:.2f}", color="white", fontsize=9, va="bottom",
                bbox=dict(facecolor=col, alpha=0.8, pad=1, lw=0))
    if title:
        ax.set_title(title)
    return ax


class SsdVgg(AcceleratedModel):
    """SSD300 on VGG-16: six feature maps from the device, twelve outputs (class scores, box offsets) from the host.

    Input: the whole image resized to 300x300 (no crop), RGB, channel means subtracted, no scaling (as
    SSD-TensorFlow), so the boxes are fractions of the whole picture. Weights: a local Keras .h5 file
    (layer names as built here) or seeded ``random``; no public Keras weights exist, so nothing is downloaded.
    """
    family, scope, feature_dim, num_classes, input_order = "ssd_vgg", "ssd_300_vgg", 0, NUM_CLASSES, "RGB"
    default_image_size = IMAGE_SIZE
    preserve_aspect_ratio = False   # the whole image squashed to 300x300, so boxes are fractions of the whole image
    labels = "voc"
    output_tensors = list(OUTPUT_NAMES)

    def __init__(self, model_base_path, is_frozen=True, weights="auto", image_size=IMAGE_SIZE, seed=0,
                 class_names=None):
        if image_size != IMAGE_SIZE:
            raise UserError(f"{type(self).__name__} is SSD300: image_size must be 300, got {image_size}.")
        if weights == "imagenet":
            what = "SSD-VGG" if self.family == "ssd_vgg" else f"{type(self).__name__} (the project's own)"
            raise UserError(f"no public {what} weights exist in a Keras format: give a local .h5 weights file "
                            "(layer names as it builds them) or weights='random'.")
        super().__init__(model_base_path, is_frozen, weights, image_size, seed)
        if class_names is not None:
            names = [str(c) for c in class_names]
            if not names or len(set(names)) != len(names) or "background" in names:
                raise UserError(f"class_names must be distinct names of your object classes (background is class "
                                f"0, added for you); got {class_names!r}.")
            self.labels, self.class_names, self.num_classes = None, ("background", *names), len(names) + 1

    def _resolve_weights(self):
        if self._weights_request == "auto":
            self._weights_request = "random"
            warn_random("SsdVgg has no downloadable weights (no public SSD-VGG weights exist in a Keras "
                             "format); pass a local .h5 weights file for real detections.")
        return super()._resolve_weights()

    def feature_tensors(self):
        shapes = [(s, s, c) for s, c in zip(MAP_SIZES, (512, 1024, 512, 256, 256, 256))]
        return [(b, f"{self.scope}/{b}/feature:0", [-1, *sh]) for b, sh in zip(BLOCKS, shapes)]

    def output_specs(self, head=None, head_name=None):
        if head is not None:
            raise UserError("SsdVgg takes no custom classifier: its heads are the SSD box and class heads.")
        a = anchors_per_location()
        c = self.num_classes
        cls = [(f"{b}_cls", n, [-1, s, s, k, c]) for b, n, s, k in zip(BLOCKS, CLS_NAMES, MAP_SIZES, a)]
        loc = [(f"{b}_loc", n, [-1, s, s, k, 4]) for b, n, s, k in zip(BLOCKS, LOC_NAMES, MAP_SIZES, a)]
        return ([(key, name, [], shape, "class_logits") for key, name, shape in cls]
                + [(key, name, [], shape, "box_offsets") for key, name, shape in loc])

    @property
    def postprocess_spec(self):
        return {"function": "accel_lib.models.ssd.postprocess", "where": "client",
                "labels": self.labels or list(self.class_names),
                "params": {"select_threshold": 0.5, "nms_threshold": 0.45, "top_k": 400}}

    def _make_featurizer(self, keras):
        L = keras.layers
        inp = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="image_tensors")
        x = inp
        for block, (n, ch) in enumerate(((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)), start=1):
            for i in range(1, n + 1):
                x = L.Conv2D(ch, 3, padding="same", activation="relu", name=f"block{block}_conv{i}")(x)
            if block == 4:
                conv4_3 = x
            x = L.MaxPooling2D(3 if block == 5 else 2, 1 if block == 5 else 2, padding="same",
                               name=f"block{block}_pool")(x)
        feats = [_l2_normalization()(name="block4_norm")(conv4_3)]
        x = L.Conv2D(1024, 3, padding="same", dilation_rate=6, activation="relu", name="fc6")(x)
        x = L.Conv2D(1024, 1, activation="relu", name="fc7")(x)
        feats.append(x)
        for b, (mid, out, stride) in zip(BLOCKS[2:], ((256, 512, 2), (128, 256, 2), (128, 256, 1), (128, 256, 1))):
            x = L.Conv2D(mid, 1, activation="relu", name=f"{b}_conv1")(x)
            if stride == 2:
                x = L.ZeroPadding2D(1, name=f"{b}_pad")(x)
            x = L.Conv2D(out, 3, strides=stride, padding="valid", activation="relu", name=f"{b}_conv3")(x)
            feats.append(x)
        return keras.Model(inp, feats, name=self.scope)

    def _make_head(self, keras):
        L = keras.layers
        inputs, cls, loc = [], [], []
        for (key, _, shape), a in zip(self.feature_tensors(), anchors_per_location()):
            f = keras.Input(tuple(shape[1:]), name=key)
            inputs.append(f)
            s = shape[1]
            c = L.Conv2D(a * self.num_classes, 3, padding="same", name=f"{key}_conv_cls")(f)
            cls.append(L.Reshape((s, s, a, self.num_classes), name=f"{key}_cls")(c))
            b = L.Conv2D(a * 4, 3, padding="same", name=f"{key}_conv_loc")(f)
            loc.append(L.Reshape((s, s, a, 4), name=f"{key}_loc")(b))
        return keras.Model(inputs, cls + loc, name="ssd_heads")

    def _calibrate_head(self, feats, detections_per_image=40):
        """Random heads on the generated images: class logits with a spread of 1.5, box offsets of 0.5, and a
        background bias that leaves about ``detections_per_image`` anchors per image above a 0.5 score (before
        suppression), so that the random model draws a few boxes rather than none or thousands."""
        if self.class_names:
            return                    # heads for your own classes: Keras's initial weights, to be trained
        rng = np.random.default_rng(self.seed)
        margins = []
        for (key, _, _), f in zip(self.feature_tensors(), feats):
            for kind, std in (("cls", 1.5), ("loc", 0.5)):
                layer = self._classifier.get_layer(f"{key}_conv_{kind}")
                w, b = layer.get_weights()
                w = rng.standard_normal(w.shape).astype(np.float32)
                layer.set_weights([w, np.zeros_like(b)])
                y = np.asarray(layer(f))
                layer.set_weights([w * np.float32(std / max(float(y.std()), 1e-12)), np.zeros_like(b)])
            logits = np.asarray(self._classifier.get_layer(f"{key}_conv_cls")(f)).reshape(len(f), -1, self.num_classes)
            margins.append(logits[..., 1:].max(-1) - logits[..., 0])
        margins = np.concatenate(margins, axis=1)
        bias = float(np.quantile(margins, 1 - detections_per_image / margins.shape[1])) + 1.0
        for key, _, _ in self.feature_tensors():
            layer = self._classifier.get_layer(f"{key}_conv_cls")
            w, b = layer.get_weights()
            b.reshape(-1, self.num_classes)[:, 0] = bias     # most anchors: background
            layer.set_weights([w, b])


@functools.lru_cache(maxsize=None)
def _l2_normalization():
    """SSD's conv4_3 layer: channel-wise L2 normalisation with a learned scale per channel (initialised to 20)."""
    import keras

    class L2Normalization(keras.layers.Layer):
        def build(self, input_shape):
            self.gamma = self.add_weight(name="gamma", shape=(input_shape[-1],),
                                         initializer=keras.initializers.Constant(20.0))

        def call(self, x):
            ops = keras.ops
            return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12)) * self.gamma
    return L2Normalization


class QuantizedSsdVgg(SsdVgg):
    """SSD300-VGG16 with its backbone run in Brainwave's narrow precision (ms-fp9) on the device."""
    quantized = True


# -- evaluation --------------------------------------------------------------------------------------------------
def average_precision(detections, truths, num_classes, iou_threshold=0.5):
    """VOC-style average precision per class over a set of images, and their mean.

    ``detections``: one (classes, scores, boxes) per image (``postprocess``'s answer); ``truths``: one (boxes,
    classes) per image, classes from 1. Per class, detections are taken best score first and each is a true positive
    when it overlaps (IoU >= ``iou_threshold``) a ground-truth box of its class not yet claimed; a second detection of
    a claimed box is a false positive. AP is the area under the precision envelope (VOC 2010+, all points). Returns
    ({class: AP}, mAP) over the classes that have ground truth."""
    if len(detections) != len(truths):
        raise UserError(f"{len(detections)} images of detections but {len(truths)} of ground truth.")
    per_class = {}
    for c in range(1, num_classes):
        found, n_truth = [], 0
        for i, ((d_cls, d_scores, d_boxes), (t_boxes, t_cls)) in enumerate(zip(detections, truths)):
            n_truth += int(np.sum(np.asarray(t_cls) == c))
            mine = np.asarray(d_cls) == c
            found += [(float(s), i, np.asarray(b, np.float64)) for s, b in zip(np.asarray(d_scores)[mine],
                                                                               np.asarray(d_boxes)[mine])]
        if n_truth == 0:
            continue
        found.sort(key=lambda f: -f[0])
        claimed = [np.zeros(int(np.sum(np.asarray(t[1]) == c)), bool) for t in truths]
        hits = np.zeros(len(found), bool)
        for k, (_, i, box) in enumerate(found):
            t_boxes = np.asarray(truths[i][0], np.float64).reshape(-1, 4)[np.asarray(truths[i][1]) == c]
            if len(t_boxes) == 0:
                continue
            overlaps = iou(box, t_boxes)
            best = int(np.argmax(overlaps))
            if overlaps[best] >= iou_threshold and not claimed[i][best]:
                claimed[i][best] = hits[k] = True
        tp = np.cumsum(hits)
        recall = np.concatenate([[0.0], tp / n_truth, [1.0]])
        precision = np.concatenate([[0.0], tp / np.arange(1, len(found) + 1), [0.0]])
        precision = np.maximum.accumulate(precision[::-1])[::-1]          # the envelope
        step = np.flatnonzero(recall[1:] != recall[:-1])
        per_class[c] = float(np.sum((recall[step + 1] - recall[step]) * precision[step + 1]))
    mean = float(np.mean(list(per_class.values()))) if per_class else 0.0
    return per_class, mean


def what_is_drawn(detections, truths, select_threshold, iou_threshold=0.5) -> list[dict]:
    """Per image, what the detections scoring ``select_threshold`` or more show against the truth: {"objects",
    "found", "missed", "false"}, matched best score first as ``average_precision`` matches them."""
    if len(detections) != len(truths):
        raise UserError(f"{len(detections)} images of detections but {len(truths)} of ground truth.")
    out = []
    for (d_cls, d_scores, d_boxes), (t_boxes, t_cls) in zip(detections, truths):
        t_boxes, t_cls = np.asarray(t_boxes, np.float64).reshape(-1, 4), np.asarray(t_cls)
        claimed = np.zeros(len(t_cls), bool)
        kept = [k for k in np.argsort(-np.asarray(d_scores, np.float64), kind="stable")
                if d_scores[k] >= select_threshold]
        found = 0
        for k in kept:                 # its best overlap among its class's boxes; a box already claimed: false
            mine = np.flatnonzero(t_cls == d_cls[k])
            if len(mine):
                overlaps = iou(np.asarray(d_boxes[k], np.float64), t_boxes[mine])
                best = int(np.argmax(overlaps))
                if overlaps[best] >= iou_threshold and not claimed[mine[best]]:
                    claimed[mine[best]] = True
                    found += 1
        out.append({"objects": len(t_cls), "found": found, "missed": len(t_cls) - found, "false": len(kept) - found})
    return out


# -- fine-tuning ---------------------------------------------------------------------------------------------------
def match_anchors(boxes, classes, anchors=None, threshold=0.5):
    """SSD's matching for one image: each ground-truth box claims its best anchor, and every anchor that overlaps a
    box by IoU >= ``threshold`` takes it. Returns (class per anchor int32 [8732], 0 = background; offsets float32
    [8732, 4] that decode to the matched box, zero for background)."""
    a = anchor_boxes() if anchors is None else np.asarray(anchors, np.float32)
    corners = np.stack([a[:, 0] - a[:, 2] / 2, a[:, 1] - a[:, 3] / 2, a[:, 0] + a[:, 2] / 2, a[:, 1] + a[:, 3] / 2], 1)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    classes = np.asarray(classes).reshape(-1)
    target = np.zeros(len(a), np.int32)
    offsets = np.zeros((len(a), 4), np.float32)
    if len(boxes) == 0:
        return target, offsets
    overlaps = np.stack([iou(b, corners) for b in boxes], 1)                  # [8732, k]
    best = overlaps.argmax(1)
    positive = overlaps[np.arange(len(a)), best] >= threshold
    for j in range(len(boxes)):                                               # each box's own best anchor
        k = int(overlaps[:, j].argmax())
        best[k], positive[k] = j, True
    target[positive] = classes[best[positive]]
    offsets[positive] = encode_boxes(boxes[best[positive]], a[positive])
    return target, offsets


SMALL_CHANNELS = (32, 64, 64, 64, 64, 64)          # SsdSmall's six feature maps' depths


class SsdSmall(SsdVgg):
    """SSD300 on a small backbone of the project's own (0.23 M weights, 0.11 G multiply-adds per image: 1/280 of
    SSD-VGG's): the same six feature maps (38x38 down to 1x1), anchors, heads and twelve output names as SsdVgg, so
    the client and post-processing are the same. ``weights="auto"`` loads the weights the project ships, trained on
    its generated scenes (``accel_lib.models.shipped``; heads for other classes are left to train);
    ``weights="random"`` starts from seeded random weights, to train on your scenes (``detection.train``)."""
    family, scope = "ssd_small", "ssd_300_small"

    def _resolve_weights(self):
        from . import recipes
        req = self._weights_request
        found = recipes.for_model(self) if req == "auto" else None
        if found is not None:
            self.weights_source = f"shipped:{found.name}"
            return found
        if req in ("auto", "random"):
            self.weights_source = f"random(seed={self.seed})"        # to be trained
            return None
        return super()._resolve_weights()

    def feature_tensors(self):
        return [(b, f"{self.scope}/{b}/feature:0", [-1, s, s, c])
                for b, s, c in zip(BLOCKS, MAP_SIZES, SMALL_CHANNELS)]

    def _make_featurizer(self, keras):
        L = keras.layers
        inp = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="image_tensors")
        x = L.Rescaling(1 / 64.0, name="input_scale")(inp)       # mean-subtracted pixels -> about [-2, 2]

        def conv(x, ch, stride, name, padding="same"):
            x = L.Conv2D(ch, 3, strides=stride, padding=padding, use_bias=False, name=f"{name}_conv")(x)
            x = L.BatchNormalization(name=f"{name}_bn")(x)
            return L.ReLU(name=f"{name}_relu")(x)
        x = L.Conv2D(32, 4, strides=4, use_bias=False, name="block1_conv")(x)     # 75: 4x4 patches
        x = L.ReLU(name="block1_relu")(L.BatchNormalization(name="block1_bn")(x))
        x = conv(x, 32, 1, "block2")                                # 75
        feats = [conv(conv(x, 32, 2, "block3a"), SMALL_CHANNELS[0], 1, "block4")]                 # 38
        feats.append(conv(conv(feats[-1], 64, 2, "block5a"), SMALL_CHANNELS[1], 1, "block7"))    # 19
        feats.append(conv(feats[-1], SMALL_CHANNELS[2], 2, "block8"))                              # 10
        feats.append(conv(feats[-1], SMALL_CHANNELS[3], 2, "block9"))                              # 5
        feats.append(conv(feats[-1], SMALL_CHANNELS[4], 1, "block10", padding="valid"))            # 3
        feats.append(conv(feats[-1], SMALL_CHANNELS[5], 1, "block11", padding="valid"))            # 1
        return keras.Model(inp, feats, name=self.scope)


class QuantizedSsdSmall(SsdSmall):
    """SsdSmall with its backbone run in ms-fp9 on the device."""
    quantized = True
