"""Format-aware fine-tuning: a Keras featurizer computed in the device's format exactly where the conversion applies
it (its weights, and the input of every convolution and dense layer), with straight-through gradients.

``FormatTwin(featurizer, fmt)`` runs the featurizer's own layers and variables, so training the twin trains the
featurizer that is saved and converted. A convolution followed by batch normalization is folded first, as the
conversion folds it (tf2onnx), so that the twin quantizes the kernel the device holds. The forward pass is
``formats.quantize`` bit for bit, but that TensorFlow on the CPU reads subnormal numbers (below 2**-126) as zero,
as the device's dot product flushes them; the gradient passes through the quantizer unchanged (a
straight-through estimator).
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..fpga.device import formats


def _pow2(n):
    """2**n as float32 for an int32 tensor n in [-126, 127] (a normal number), from its bits."""
    import tensorflow as tf
    return tf.bitcast(tf.bitwise.left_shift(n + 127, 23), tf.float32)


def _floor_log2(m):
    """floor(log2 m) of float32 m > 0 as int32, read from its exponent bits (subnormals: -127)."""
    import tensorflow as tf
    return tf.bitwise.bitwise_and(tf.bitwise.right_shift(tf.bitcast(m, tf.int32), 23), 0xFF) - 127


def _blocked(x, block):
    """x [..., C] as [..., nb, block], zero-padded, and how to undo it."""
    import tensorflow as tf
    c = x.shape[-1]
    block = min(block, c)                   # one short block: its zero padding would change no maximum
    nb = -(-c // block)
    pad = nb * block - c
    xp = tf.pad(x, [[0, 0]] * (x.shape.rank - 1) + [[0, pad]]) if pad else x
    lead = tf.shape(x)[:-1]
    blocks = tf.reshape(xp, tf.concat([lead, [nb, block]], 0))
    return blocks, lambda y: tf.reshape(y, tf.concat([lead, [nb * block]], 0))[..., :c]


def _quantize_last(x, fmt):
    """formats.quantize(x, fmt, axis=-1) in TensorFlow, forward only. A block whose largest magnitude lies below
    2**-60 (or from 2**60) is first moved 64 binades towards 1, so that every power of two used is a normal number;
    the move is undone after a Select, across which no graph optimizer regroups the multiplications."""
    import tensorflow as tf
    blocks, back = _blocked(x, fmt.block)
    bad = tf.reduce_any(~tf.math.is_finite(blocks), axis=-1, keepdims=True)
    finite = tf.where(bad, tf.zeros_like(blocks), blocks)
    top = tf.reduce_max(tf.abs(finite), -1, keepdims=True)
    pre = tf.where(top < 2.0 ** -60, 64, tf.where(top >= 2.0 ** 60, -64, 0))
    moved = finite * _pow2(pre)                                     # exact: a power of two
    a = tf.abs(moved)
    amax = tf.reduce_max(a, -1, keepdims=True)
    if isinstance(fmt, formats.MxFormat):
        y = _mx_values(moved, amax, pre, fmt.element)
    else:
        e = tf.clip_by_value(_floor_log2(amax) - pre, fmt.emin, fmt.emax) + pre
        n = e - fmt.mantissa_bits + 1                              # the step is 2**n (moved)
        k = tf.minimum(tf.floor(a * _pow2(-n) + 0.5), float(fmt.kmax))
        q = k * _pow2(n)
        y = tf.where(q == 0, tf.zeros_like(q), tf.where(moved < 0, -q, q))
    return back(tf.where(bad, tf.fill(tf.shape(y), np.float32(np.nan)), y) * _pow2(-pre))


def _mx_values(moved, amax, pre, el):
    """An MX block's values q * 2**S (formats.quantize_mx's steps), for a block moved by 2**pre."""
    import tensorflow as tf
    shared = tf.where(amax == 0, formats.SCALE_MIN, tf.clip_by_value(_floor_log2(amax) - pre - el.emax,
                                                                     formats.SCALE_MIN, formats.SCALE_MAX)) + pre
    v = moved * _pow2(-shared)
    if el.ebits:
        p = tf.maximum(_floor_log2(tf.where(v == 0, tf.ones_like(v), tf.abs(v))), el.emin)
    else:
        p = tf.fill(tf.shape(v), el.emin)
    exp = p - el.mbits                                         # a few binades either side of 1: normal
    q = tf.round(v * _pow2(-exp)) * _pow2(exp)                 # tf.round: half to even
    q = tf.clip_by_value(q, -el.max_norm, el.max_norm)
    if not el.ebits:
        q = tf.where(q == 0, tf.zeros_like(q), q)
    return q * _pow2(shared)


def fake_quantize(x, fmt, axis=-1):
    """``formats.quantize(x, fmt, axis)`` as a TensorFlow op (``fmt`` a name, a Format, an MxFormat or None for
    fp32), whose gradient is the identity: the straight-through estimator."""
    import tensorflow as tf
    if isinstance(fmt, str):
        fmt = formats.get(fmt)
    x = tf.convert_to_tensor(x, tf.float32)
    if fmt is None:
        return x
    axis = axis % x.shape.rank

    @tf.custom_gradient
    def quantize(t):
        moved = tf.experimental.numpy.moveaxis(t, axis, -1) if axis != t.shape.rank - 1 else t
        y = _quantize_last(moved, fmt)
        y = tf.experimental.numpy.moveaxis(y, -1, axis) if axis != t.shape.rank - 1 else y
        return y, lambda dy: dy
    return quantize(x)


class FormatTwin:
    """The featurizer (a functional Keras model) computed in ``fmt`` where the conversion applies it; calling it
    runs the featurizer's own variables, in inference mode (batch-norm statistics stay as they are)."""

    def __init__(self, featurizer, fmt):
        self.model = featurizer
        self.format = formats.get(fmt) if isinstance(fmt, str) else fmt
        self.format_name = self.format.name if self.format is not None else "fp32"
        self._folded = self._fold_pairs()

    def _fold_pairs(self):
        """{conv layer: batch-norm layer} where a BN is a convolution's only consumer: the conversion folds them."""
        import keras
        consumers = {}
        for layer in self.model.layers:
            for node in layer._inbound_nodes:
                for t in node.input_tensors:
                    consumers.setdefault(id(t), []).append(layer)
        pairs = {}
        for layer in self.model.layers:
            out = layer.output
            users = consumers.get(id(out), [])
            if (isinstance(layer, keras.layers.Conv2D) and len(users) == 1
                    and isinstance(users[0], keras.layers.BatchNormalization)
                    and layer.activation is keras.activations.linear):
                pairs[layer.name] = users[0]
        return pairs

    def kernel(self, layer):
        """(kernel, bias) of a Conv2D or Dense layer as the device holds them: batch norm folded in, fp32."""
        import tensorflow as tf
        w = layer.kernel
        b = layer.bias if layer.use_bias else tf.zeros([w.shape[-1]])
        bn = self._folded.get(layer.name)
        if bn is not None:
            inv = tf.math.rsqrt(bn.moving_variance + bn.epsilon)
            if bn.scale:
                inv = inv * bn.gamma
            w = w * inv
            b = b * inv + ((bn.beta if bn.center else 0.0) - bn.moving_mean * inv)
        return w, b

    def _matrix(self, layer, x):
        """A Conv2D or Dense layer in the format: its input and its kernel quantized along the input channels."""
        import keras
        import tensorflow as tf
        w, b = self.kernel(layer)
        xq = fake_quantize(x, self.format, -1)
        if isinstance(layer, keras.layers.Conv2D):
            if layer.groups != 1:
                raise UserError(f"{layer.name}: grouped convolutions are not supported in format-aware fine-tuning.")
            y = layer.convolution_op(xq, fake_quantize(w, self.format, 2))
        else:
            y = tf.tensordot(xq, fake_quantize(w, self.format, 0), [[xq.shape.rank - 1], [0]])
        return layer.activation(y + b)

    def __call__(self, x, taps=()):
        """The features of ``x``; with ``taps`` (layer names), also those layers' outputs: (features, [maps])."""
        import keras
        values = {id(self.model.inputs[0]): x}
        skip = {bn.name: conv for conv, bn in self._folded.items()}
        for layer in self.model.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            node = layer._inbound_nodes[0]
            ins = [values[id(t)] for t in node.input_tensors]
            if layer.name in skip:
                out = ins[0]                                      # folded into the convolution before it
            elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
                out = self._matrix(layer, ins[0])
            elif type(layer).__name__ in ("DepthwiseConv2D", "SeparableConv2D", "Conv1D", "Conv3D"):
                raise UserError(f"{layer.name}: {type(layer).__name__} is not supported in format-aware fine-tuning.")
            else:
                out = layer(ins if len(ins) > 1 else ins[0], training=False)
            values[id(node.output_tensors[0])] = out
        out = values[id(self.model.outputs[0])]
        if not taps:
            return out
        return out, [values[id(self.model.get_layer(name).output)] for name in taps]

    @property
    def trainable_variables(self):
        """What fine-tuning changes, frozen featurizer or not: kernels, biases, batch-norm scales and offsets (not
        the batch-norm statistics)."""
        keep = ("kernel", "bias", "gamma", "beta")
        return [v for v in self.model.weights if v.path.rsplit("/", 1)[-1] in keep]


def _train(twin, loss_of, batches, steps, learning_rate, extra=(), desc="fine-tuning", show=True, every=0,
           on_every=None, stop_after=None):
    """Adam with a cosine schedule over ``steps`` batches from ``batches`` (an iterator of argument tuples for
    ``loss_of``); trains the twin's variables and ``extra``, calling ``on_every(step)`` every ``every`` steps, and
    stops after ``stop_after`` steps if given (the schedule stays the same). Returns the loss per step."""
    import keras
    import tensorflow as tf

    from .. import progress
    variables = [*twin.trainable_variables, *extra]
    opt = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate, steps))

    @tf.function(reduce_retracing=True)
    def step(*args):
        with tf.GradientTape() as tape:
            loss = loss_of(*args)
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss
    losses = []
    run = min(steps, stop_after or steps)
    bar = progress.bar(total=run, desc=desc, unit="step", show=show)
    for i in range(1, run + 1):
        losses.append(float(step(*[tf.constant(a) for a in next(batches)])))
        bar.update(1)
        if on_every is not None and every and (i % every == 0 or i == steps):
            on_every(i)
    bar.close()
    return losses


def fine_tune(model_graph, fmt, images, labels, epochs=3, batch_size=64, learning_rate=1e-3, head=None, seed=0,
              show=True):
    """Fine-tune a zoo model's featurizer in ``fmt``, with its default head or ``head`` (a Keras model from features
    to probabilities), on labelled encoded images (cross-entropy); their own variables change. Returns the loss per
    step."""
    import keras
    import tensorflow as tf

    from ..fpga.device import host
    model_graph._build()
    x = host.preprocess(list(images), order=model_graph.input_order, output_height=model_graph.image_size,
                        output_width=model_graph.image_size, preserve_aspect_ratio=model_graph.preserve_aspect_ratio)
    y = np.asarray(labels, np.int64)
    twin, head = FormatTwin(model_graph.featurizer, fmt), head or model_graph.get_default_classifier()
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)

    def batches():
        while True:
            order = rng.permutation(len(y))
            for i in range(0, len(y) - batch_size + 1 if len(y) >= batch_size else 1, batch_size):
                pick = order[i:i + batch_size]
                yield x[pick], y[pick]

    def loss_of(xb, yb):
        probs = head(twin(xb), training=False)
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(yb, probs))
    steps = epochs * max(1, len(y) // batch_size)
    return _train(twin, loss_of, batches(), steps, learning_rate, extra=head.trainable_variables,
                  desc=f"fine-tuning in {twin.format_name}", show=show)


def equalize(featurizer, iterations=4):
    """Cross-layer equalization, data-free: where a convolution's output reaches only convolutions through ReLU,
    max pooling and concatenation (which commute with a positive scale per channel), scale each channel so that the
    producer's output range and the consumers' input range meet at their geometric mean. fp32 results stay the same
    (up to rounding); the format's blocks see evener channels. Returns how many channels were scaled."""
    import keras
    consumers = {}
    for layer in featurizer.layers:
        for node in layer._inbound_nodes:
            for t in node.input_tensors:
                consumers.setdefault(id(t), []).append(layer)

    def reach(layer, offset):
        """[(conv, channel offset)] that ``layer``'s output reaches through per-channel positive ops, or None."""
        found = []
        for user in consumers.get(id(layer.output), []):
            if isinstance(user, keras.layers.Conv2D) and user.groups == 1:
                found.append((user, offset))
            elif isinstance(user, (keras.layers.MaxPooling2D, keras.layers.ReLU)):
                more = reach(user, offset)
                if more is None:
                    return None
                found += more
            elif isinstance(user, keras.layers.Concatenate) and user.axis in (-1, 3):
                ins = user._inbound_nodes[0].input_tensors
                at = offset + sum(t.shape[-1] for t in ins[:[id(t) for t in ins].index(id(layer.output))])
                more = reach(user, at)
                if more is None:
                    return None
                found += more
            else:
                return None
        return found or None
    pairs = []
    for layer in featurizer.layers:
        relu = layer.activation in (keras.activations.relu,) if isinstance(layer, keras.layers.Conv2D) else False
        if relu and layer.groups == 1 and layer.use_bias:
            targets = reach(layer, 0)
            if targets and id(layer.output) not in {id(t) for t in featurizer.outputs}:
                pairs.append((layer, targets))
    for _ in range(iterations):
        for producer, targets in pairs:
            w1, b1 = producer.kernel.numpy(), producer.bias.numpy()
            n = w1.shape[-1]
            r1 = np.abs(w1).reshape(-1, n).max(0)
            r2 = np.max([np.abs(c.kernel.numpy()[:, :, o:o + n, :]).transpose(2, 0, 1, 3).reshape(n, -1).max(1)
                         for c, o in targets], axis=0)
            s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.maximum(r2, 1e-30)), 1.0).astype(np.float32)
            producer.kernel.assign(w1 / s)
            producer.bias.assign(b1 / s)
            for c, o in targets:
                w2 = c.kernel.numpy()
                w2[:, :, o:o + n, :] *= s[None, None, :, None]
                c.kernel.assign(w2)
    return sum(p.kernel.shape[-1] for p, _ in pairs)


def augmented_batches(pictures, size, batch_size, order="BGR", seed=0):
    """Endless batches [B, size, size, 3] of preprocessed views of RGB ``pictures`` (the device's input: means
    subtracted, in ``order``): random crops (5-100% of the area, aspect 3/4-4/3), mirrored half the time, colour
    gains and a brightness shift, and half of them mixed with another view (mixup)."""
    from PIL import Image

    from ..fpga.device import host
    rng = np.random.default_rng(seed)
    mean = np.asarray(host.MEANS_RGB, np.float32)

    def view():
        img = pictures[rng.integers(len(pictures))]
        h, w = img.shape[:2]
        area, aspect = h * w * rng.uniform(0.05, 1.0), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch, cw = int(min(h, np.sqrt(area / aspect))), int(min(w, np.sqrt(area * aspect)))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        v = np.asarray(Image.fromarray(img[y:y + ch, x:x + cw]).resize((size, size), Image.BILINEAR), np.float32)
        v = v[:, ::-1] if rng.random() < 0.5 else v
        return np.clip(v * rng.uniform(0.6, 1.4, 3) + rng.uniform(-30, 30), 0, 255)
    while True:
        a, b = np.stack([view() for _ in range(batch_size)]), np.stack([view() for _ in range(batch_size)])
        lam = np.where(rng.random((batch_size, 1, 1, 1)) < 0.5, 1.0, rng.uniform(0, 1, (batch_size, 1, 1, 1)))
        x = (lam * a + (1 - lam) * b - mean).astype(np.float32)
        yield (np.ascontiguousarray(x[..., ::-1]) if order == "BGR" else x,)


def tapped_layers(featurizer):
    """The layers whose maps distillation matches: where branches meet (Concatenate, Add), else every convolution."""
    import keras
    joins = [la.name for la in featurizer.layers if isinstance(la, (keras.layers.Concatenate, keras.layers.Add))]
    return joins or [la.name for la in featurizer.layers if isinstance(la, keras.layers.Conv2D)]


def distill(model_graph, fmt, pictures, steps, batch_size=16, learning_rate=1e-4, feature_weight=1.0,
            temperature=2.0, seed=0, every=0, evaluate=None, stop_after=None, show=True):
    """Teach a zoo classifier's featurizer, computed in ``fmt``, to give what its fp32 self gave, on unlabelled
    RGB ``pictures`` (``augmented_batches``): the loss is the KL divergence of the default head's answers at
    ``temperature`` plus ``feature_weight`` times each tapped map's relative squared error. The head stays as it
    is. ``evaluate()`` is called every ``every`` steps; ``stop_after`` stops early on the same schedule. Returns
    (losses, [(step, evaluate())])."""
    import keras
    import tensorflow as tf
    model_graph._build()
    copy = keras.models.clone_model(model_graph.featurizer)
    copy.set_weights(model_graph.featurizer.get_weights())
    teacher, student = FormatTwin(copy, "fp32"), FormatTwin(model_graph.featurizer, fmt)
    dense = model_graph.get_default_classifier().get_layer("predictions")
    taps = tapped_layers(model_graph.featurizer) if feature_weight else []
    t = float(temperature)

    def loss_of(x):
        want, want_maps = teacher(x, taps=taps) if taps else (teacher(x), [])
        got, got_maps = student(x, taps=taps) if taps else (student(x), [])
        tl, sl = dense.kernel, dense.bias
        p, q = (tf.matmul(f, tl) + sl for f in (want, got))
        kl = tf.reduce_sum(tf.nn.softmax(p / t) * (tf.nn.log_softmax(p / t) - tf.nn.log_softmax(q / t)), -1)
        loss = tf.reduce_mean(kl) * t * t
        for a, b in zip(want_maps, got_maps):
            loss += feature_weight / len(taps) * tf.reduce_mean(tf.square(a - b)) / (tf.reduce_mean(tf.square(a))
                                                                                     + 1e-12)
        return loss
    keras.utils.set_random_seed(seed)
    batches = augmented_batches(pictures, model_graph.image_size, batch_size, model_graph.input_order, seed)
    curve = []
    losses = _train(student, loss_of, batches, steps, learning_rate, desc=f"distilling in {student.format_name}",
                    show=show, every=every, on_every=lambda i: curve.append((i, evaluate())) if evaluate else None,
                    stop_after=stop_after)
    return losses, curve


def features(model_graph, fmt, images, batch_size=16):
    """Features [N, D] of encoded images computed by the featurizer's Keras twin in ``fmt`` (what its converted
    package computes, up to summation order)."""
    from ..fpga.device import host
    twin = FormatTwin(model_graph.featurizer, fmt)
    out = []
    for i in range(0, len(images), batch_size):
        x = host.preprocess(list(images[i:i + batch_size]), order=model_graph.input_order,
                            output_height=model_graph.image_size, output_width=model_graph.image_size,
                            preserve_aspect_ratio=model_graph.preserve_aspect_ratio)
        out.append(np.asarray(twin(x)))
    return np.concatenate(out)
