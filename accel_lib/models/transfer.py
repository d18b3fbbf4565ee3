"""Transfer learning, the article's other use: a frozen (Quantized) featurizer computes features as the FPGA would, in
its numeric format, and a small Keras head (Dropout, Dense 1024, Dense N) is trained on them."""
from __future__ import annotations

import numpy as np

from ..errors import UserError


class DeviceFeaturizer:
    """The featurizer of a zoo model as the simulated device runs it: converted to ONNX, in the device format.

    ``DeviceFeaturizer(model_graph, work_dir)`` saves the model under ``work_dir`` and converts its featurizer with
    the converter's own steps (``conversion.convert_folder``: TensorFlow's work in processes of their own, so this
    process holds only the package); calling it on encoded images returns features [N, D] (a classifier's), or the
    list of feature maps of a detector (SSD's six).
    """

    def __init__(self, model_graph, work_dir, numeric_format=None, block_size=None):
        from pathlib import Path

        from ..conversion import convert_folder
        from ..fpga.device import formats
        from ..fpga.device.package import AcceleratorPackage
        info = model_graph.save(Path(work_dir) / "saved")
        meta = info.metadata
        self.numeric_format = numeric_format or meta.default_numeric_format
        self.format = formats.get(self.numeric_format, block_size)
        self.feature_names = [f.name for f in meta.features]
        convert_folder(info.path, Path(work_dir) / "package", outputs=self.feature_names,
                       numeric_format=self.numeric_format, block_size=block_size, checks=False)
        self._package = AcceleratorPackage(Path(work_dir) / "package", arena=False)   # a kernel keeps no arena
        self.feature_shapes = [tuple(f.shape[1:]) for f in meta.features]
        self.feature_dim = self.feature_shapes[0][-1] if len(self.feature_shapes) == 1 else None

    def close(self):
        """Let go of the device graph (its memory), once the features are computed."""
        self._package = None

    def __call__(self, images, batch_size=8):
        """Encoded JPEG/PNG images -> float32 features [N, D] (or a list of maps [N, H, W, C]), computed in the
        device's format."""
        from .. import progress
        from ..errors import UserError
        if self._package is None:
            raise UserError("this DeviceFeaturizer was closed; make a new one to compute more features.")
        out = [[] for _ in self.feature_names]
        bar = progress.bar(total=len(images), desc=f"features ({self.numeric_format})", unit="image",
                           show=len(images) > batch_size)
        for i in range(0, len(images), batch_size):
            batch = list(images[i:i + batch_size])
            got = self._package.run(batch, self.feature_names)
            for maps, name in zip(out, self.feature_names):
                maps.append(got[name])
            bar.update(len(batch))
        bar.close()
        maps = [np.concatenate(m) if m else np.zeros((0, *shape), np.float32)
                for m, shape in zip(out, self.feature_shapes)]
        return maps[0] if len(maps) == 1 else maps


def train_head(features, labels, num_classes, epochs=30, seed=0):
    """Train the article's head on features: normalisation, Dropout 0.2, Dense 1024 (ReLU), Dropout 0.5, Dense N
    (softmax). Returns the Keras model (features [N, D] -> probabilities [N, num_classes])."""
    import keras
    features, labels = np.asarray(features, np.float32), np.asarray(labels)
    if len(features) != len(labels) or len(features) == 0:
        raise UserError(f"need as many labels as feature rows (got {len(features)} rows, {len(labels)} labels).")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise UserError(f"labels must be 0..{num_classes - 1}, got {labels.min()}..{labels.max()}.")
    keras.utils.set_random_seed(seed)
    mean, std = features.mean(0), features.std(0) + 1e-6     # standardise, as constants of the graph
    norm = keras.layers.Rescaling(scale=(1.0 / std).tolist(), offset=(-mean / std).tolist(),
                                  name="feature_normalization")
    inp = keras.Input((features.shape[1],), name="features")
    x = keras.layers.Dropout(0.2)(norm(inp))
    x = keras.layers.Dense(1024, activation="relu", name="dense_1024")(x)
    x = keras.layers.Dropout(0.5)(x)
    out = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    head = keras.Model(inp, out, name="transfer_head")
    head.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy",
                 metrics=["accuracy"])
    from .. import progress
    bar = progress.bar(total=epochs, desc="training the head", unit="epoch")
    tick = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: bar.update(1))
    head.fit(features, labels, epochs=epochs, batch_size=16, verbose=0, shuffle=True, callbacks=[tick])
    bar.close()
    return head


def split(images, labels, test_per_class, seed=0):
    """Hold out ``test_per_class`` images of each class: (train images, train labels, test images, test labels)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) <= test_per_class:
            raise UserError(f"class {c} has {len(idx)} images; keep more than test_per_class={test_per_class}.")
        test[rng.choice(idx, test_per_class, replace=False)] = True
    pick = lambda mask: [images[i] for i in np.flatnonzero(mask)]  # noqa: E731
    return pick(~test), labels[~test], pick(test), labels[test]
