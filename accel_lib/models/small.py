"""A small residual CNN the project trains itself, offline, so that what the device's formats cost a *trained*
network can be measured without downloading anything (notebook 09).

It is a zoo model like the others (featurizer on the device, classifier head on the host, the same save, register
and convert pipeline); its data are the ten kinds of picture ``samples.shape_image`` draws.
"""
from __future__ import annotations

import numpy as np

from .. import samples
from ..errors import UserError
from .zoo import AcceleratedModel


class SmallResnet(AcceleratedModel):
    """Three residual stages (24, 48, 96 channels; 96 pooled features) and a 10-class softmax head; input RGB,
    means subtracted, 40x40 by default. ``weights="auto"`` loads the weights the project ships (trained by
    ``accel_lib.models.shipped``); or start from ``weights="random"`` and ``train()`` it, or load a weights file.
    Over five seeds it reached 94-98% held-out accuracy on the generated pictures (300 per class, 10 epochs)."""
    family, scope = "smallresnet", "small_resnet"
    widths = (24, 48, 96)
    feature_dim = widths[-1]
    num_classes = len(samples.SHAPE_CLASSES)
    input_order = "RGB"
    default_image_size = 40
    labels = None
    class_names = samples.SHAPE_CLASSES

    def _make_featurizer(self, keras):
        L = keras.layers
        inp = keras.Input((self.image_size, self.image_size, 3), name="image_tensors")
        x = L.Rescaling(1.0 / 64, name="scale")(inp)             # mean-subtracted pixels to about [-2, 2]

        def conv(x, ch, stride, name, relu=True):
            x = L.Conv2D(ch, 3, strides=stride, padding="same", use_bias=False, name=name)(x)
            x = L.BatchNormalization(momentum=0.9, name=name + "_bn")(x)   # a few hundred steps: track them
            return L.ReLU(name=name + "_relu")(x) if relu else x

        for i, ch in enumerate(self.widths):
            x = conv(x, ch, 2, f"stage{i + 1}_down")
            y = conv(x, ch, 1, f"stage{i + 1}_a")
            y = conv(y, ch, 1, f"stage{i + 1}_b", relu=False)
            x = L.ReLU(name=f"stage{i + 1}_out")(L.Add(name=f"stage{i + 1}_add")([x, y]))
        x = L.GlobalAveragePooling2D(name="pool5")(x)
        return keras.Model(inp, x, name=self.scope)

    def _resolve_weights(self):
        from . import recipes
        if self._weights_request == "imagenet":
            raise UserError("SmallResnet has no ImageNet weights: weights='auto' loads the project's trained ones; "
                            "or create it with weights='random' and train() it, or give a weights file it saved.")
        if self._weights_request == "auto":
            return recipes.shipped_weights(self, "use weights='random'")
        return super()._resolve_weights()

    def train(self, images, labels, epochs=10, batch_size=64, learning_rate=3e-3, verbose=0):
        """Train featurizer and head end to end on encoded images (seeded, a progress bar per epoch); returns the
        Keras history."""
        import keras

        from .. import progress
        from ..fpga.device import host
        self._build()
        x = host.preprocess(list(images), order=self.input_order, output_height=self.image_size,
                            output_width=self.image_size)
        y = np.asarray(labels)
        keras.utils.set_random_seed(self.seed)
        self._featurizer.trainable = True
        model = keras.Sequential([self._featurizer, self._classifier])
        steps = epochs * -(-len(y) // batch_size)
        schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps)
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        bar = progress.bar(total=epochs, desc=f"training {type(self).__name__}", unit="epoch")
        tick = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: bar.update(1))
        history = model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=verbose,
                            callbacks=[tick])
        bar.close()
        self._featurizer.trainable = not self.is_frozen
        self.weights_source = f"trained(seed={self.seed}, {len(y)} generated images, {epochs} epochs)"
        return history

    def predict(self, images, batch_size=128):
        """Class probabilities [N, 10] for encoded images, in TensorFlow (fp32): the reference."""
        from ..fpga.device import host
        self._build()
        x = host.preprocess(list(images), order=self.input_order, output_height=self.image_size,
                            output_width=self.image_size)
        return np.concatenate([np.asarray(self._classifier(self._featurizer(x[i:i + batch_size], training=False)))
                               for i in range(0, len(x), batch_size)])


def pattern_data(train_per_class=300, test_per_class=40, seed=0, size=(40, 70)):
    """The generated ten-class image set: (train images, train labels, held-out images, held-out labels)."""
    tr_x, tr_y = samples.labelled_images(samples.SHAPE_CLASSES, train_per_class, seed=seed, size=size)
    te_x, te_y = samples.labelled_images(samples.SHAPE_CLASSES, test_per_class, seed=seed + 1, size=size)
    return tr_x, tr_y, te_x, te_y
