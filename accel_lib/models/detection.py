"""Training SSD detectors on your own labelled scenes, as the article's stock-out sample fine-tunes SSD-VGG.

Two stages, both with SSD's loss (matched anchors, softmax cross-entropy over the positives and the hardest
negatives, three per positive; smooth-L1 on the positives' box offsets; summed over the batch and divided by its
positives):
* ``train``: the whole network (backbone and heads) in fp32, in Keras — for a backbone with no weights of its own
  (``SsdSmall``); horizontally flipped copies double the scenes;
* ``fine_tune_heads``: the frozen backbone's features as the device computes them (``transfer.DeviceFeaturizer``,
  in its numeric format, once), and only the box and class heads trained on them.
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from . import ssd

NEGATIVES_PER_POSITIVE = 3


def _check(model_graph, images, truths):
    if not isinstance(model_graph, ssd.SsdVgg):
        raise UserError(f"detection training takes an SSD model (SsdSmall, SsdVgg or their Quantized twins), "
                        f"not {type(model_graph).__name__}.")
    if len(images) != len(truths) or not len(images):
        raise UserError(f"need one (boxes, classes) per image: got {len(images)} images and {len(truths)} truths.")
    top = max((int(np.max(c)) for _, c in truths if len(c)), default=0)
    if top >= model_graph.num_classes or min((int(np.min(c)) for _, c in truths if len(c)), default=1) < 1:
        raise UserError(f"ground-truth classes must be 1..{model_graph.num_classes - 1} (0 is background) for "
                        f"{model_graph.num_classes - 1} classes; got up to {top}. Give the model class_names.")


def targets(truths, flip=False):
    """SSD's matching of each image's (boxes, classes): (classes int32 [N, 8732], offsets float32 [N, 8732, 4]);
    ``flip`` matches the boxes of the horizontally mirrored images."""
    cls, off = [], []
    for boxes, classes in truths:
        b = np.asarray(boxes, np.float32).reshape(-1, 4)
        if flip:
            b = np.stack([b[:, 0], 1 - b[:, 3], b[:, 2], 1 - b[:, 1]], 1)
        c, o = ssd.match_anchors(b, classes)
        cls.append(c)
        off.append(o)
    return np.stack(cls), np.stack(off)


def ssd_loss(outputs, classes, offsets, num_classes):
    """SSD's loss on the twelve outputs against matched targets, with hard-negative mining (a TensorFlow scalar)."""
    import tensorflow as tf

    def flat(maps, depth):
        return tf.concat([tf.reshape(m, [tf.shape(m)[0], -1, depth]) for m in maps], 1)
    logits, loc = flat(outputs[:6], num_classes), flat(outputs[6:], 4)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=classes, logits=logits)           # [B, 8732]
    pos = tf.cast(classes > 0, tf.float32)
    n_pos = tf.reduce_sum(pos, 1)
    negative_ce = ce * (1 - pos)
    k = tf.cast(tf.minimum(NEGATIVES_PER_POSITIVE * n_pos, tf.cast(tf.shape(classes)[1], tf.float32) - n_pos),
                tf.int32)
    ranked = tf.sort(negative_ce, axis=1, direction="DESCENDING")
    kth = tf.gather(ranked, tf.maximum(k - 1, 0), batch_dims=1)
    hard = tf.cast((negative_ce >= kth[:, None]) & (k[:, None] > 0), tf.float32) * (1 - pos)
    diff = tf.abs(loc - offsets)
    smooth_l1 = tf.reduce_sum(tf.where(diff < 1, 0.5 * diff * diff, diff - 0.5), -1)
    return (tf.reduce_sum(ce * (pos + hard)) + tf.reduce_sum(smooth_l1 * pos)) / tf.maximum(tf.reduce_sum(n_pos), 1.0)


def _fit(model, batch, classes, offsets, num_classes, epochs, batch_size, learning_rate, seed, desc):
    """Adam with cosine decay over ``epochs`` of shuffled batches; ``batch(indices)`` gives the inputs' rows."""
    import keras
    import tensorflow as tf

    from .. import progress
    keras.utils.set_random_seed(seed)
    n = len(classes)
    steps = epochs * -(-n // batch_size)
    opt = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.02))
    variables = model.trainable_variables

    @tf.function(reduce_retracing=True)
    def step(xs, c, o):
        with tf.GradientTape() as tape:
            loss = ssd_loss(model(xs, training=True), c, o, num_classes)
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss
    rng = np.random.default_rng(seed)
    losses = []
    bar = progress.bar(total=epochs, desc=desc, unit="epoch")
    for _ in range(epochs):
        order = rng.permutation(n)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = np.sort(order[i:i + batch_size])
            xs = [tf.constant(x, tf.float32) for x in batch(idx)]
            total += float(step(xs if len(xs) > 1 else xs[0], tf.constant(classes[idx]), tf.constant(offsets[idx])))
        losses.append(total / -(-n // batch_size))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.2f}")
    bar.close()
    return losses


def train(model_graph, images, truths, epochs=12, batch_size=8, learning_rate=2e-3, seed=0, flip=True):
    """Train the whole SSD (backbone and heads, fp32, in this process) on encoded images and their (boxes, classes);
    ``flip`` adds the mirrored scenes. Returns the loss per epoch; the model's weights are trained in place."""
    import keras

    from ..fpga.device.host import preprocess
    _check(model_graph, images, truths)
    prep = dict(order=model_graph.input_order, output_height=model_graph.image_size,
                output_width=model_graph.image_size, preserve_aspect_ratio=model_graph.preserve_aspect_ratio)
    x = np.concatenate([preprocess(images[i:i + 32], **prep).astype(np.float16)
                        for i in range(0, len(images), 32)])
    classes, offsets = targets(truths)
    if flip:                                           # rows n.. are the mirrored scenes, flipped per batch
        c2, o2 = targets(truths, flip=True)
        classes, offsets = np.concatenate([classes, c2]), np.concatenate([offsets, o2])

    def batch(idx):
        rows = x[idx % len(x)]
        mirrored = idx >= len(x)
        rows[mirrored] = rows[mirrored][:, :, ::-1]
        return [rows]
    featurizer, head = model_graph.featurizer, model_graph.get_default_classifier()
    featurizer.trainable = True
    inp = keras.Input(x.shape[1:])
    whole = keras.Model(inp, head(featurizer(inp)))
    try:
        losses = _fit(whole, batch, classes, offsets, model_graph.num_classes, epochs, batch_size, learning_rate,
                      seed, f"training {type(model_graph).__name__}")
    finally:
        featurizer.trainable = not model_graph.is_frozen
    model_graph.weights_source = f"trained({len(images)} scenes, seed={seed})"
    return losses


def fine_tune_heads(model_graph, features, truths, epochs=10, batch_size=8, learning_rate=5e-4, seed=0):
    """Train the box and class heads alone on the frozen backbone's features (a list of six arrays [N, ...], as the
    device computed them). Returns the loss per epoch; the heads are trained in place."""
    _check(model_graph, features[0], truths)
    classes, offsets = targets(truths)
    head = model_graph.get_default_classifier()
    return _fit(head, lambda idx: [f[idx] for f in features], classes, offsets, model_graph.num_classes, epochs,
                batch_size, learning_rate, seed, "fine-tuning the heads on device features")


def detect(run, images, batch_size=8, **postprocess):
    """``run(batch of encoded images)`` -> the twelve outputs (a service's or a package's) for every image, in
    batches, post-processed: one (classes, scores, boxes) per image."""
    out = []
    for i in range(0, len(images), batch_size):
        out += ssd.postprocess(run(list(images[i:i + batch_size])), **postprocess)
    return out


def show_detections(images, detections, truths, labels, columns=4, select_threshold=0.5):
    """Each scene twice, side by side: its ground-truth boxes, and the detections scoring ``select_threshold`` or
    more (matplotlib figure)."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image
    n = len(images)
    rows = -(-n // (columns // 2))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i, (data, (classes, scores, boxes), (t_boxes, t_classes)) in enumerate(zip(images, detections, truths)):
        img = Image.open(io.BytesIO(data)).convert("RGB")
        keep = np.asarray(scores) >= select_threshold
        left, right = axes.flat[2 * i], axes.flat[2 * i + 1]
        ssd.draw_boxes(img, t_classes, None, t_boxes, labels, ax=left, title=f"scene {i}: truth")
        ssd.draw_boxes(img, np.asarray(classes)[keep], np.asarray(scores)[keep], np.asarray(boxes)[keep], labels,
                       ax=right, title=f"scene {i}: detected")
    fig.tight_layout()
    return fig
