"""Where a zoo model's weights come from: the Keras ImageNet file (fetched once, or refused offline), a local .h5
file, or seeded random weights calibrated on generated images, said loudly (``Weights``, the models' mixin)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import UserError

KERAS_WEIGHTS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"
RANDOM_SEED = 0
CALIBRATION_PIXELS = 224 * 224       # images x pixels of the random weights' calibration pass (at most 8 images):
                                     # TensorFlow keeps what the pass allocates, +150 MB per 224-px image (measured)


def offline() -> bool:
    """True when ACCEL_LIB_OFFLINE asks that nothing be fetched from the network."""
    return os.environ.get("ACCEL_LIB_OFFLINE", "0").lower() not in ("0", "false", "no", "")


def _unreachable(url, timeout=3.0) -> str | None:
    """Why ``url``'s server cannot be reached now (None if a TCP connection opens), within ``timeout`` seconds
    (name lookup included: it runs in a thread that is left behind if it hangs)."""
    import socket
    import threading
    from urllib.parse import urlsplit
    host = urlsplit(url).hostname
    result = []

    def connect():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(None)
        except OSError:
            result.append(f"Keras's weights server ({host}) cannot be reached")      # the OSError's text is noise to a reader

    t = threading.Thread(target=connect, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return result[0] if result else f"Keras's weights server ({host}) did not answer within {timeout:.0f} s"


def imagenet_unavailable(model) -> str | None:
    """Why ``model``'s Keras ImageNet weights cannot be had (None: cached, or their server answers)."""
    cached = model.model_base_path / "weights" / model.weights_file
    if cached.is_file():
        return None
    missing = f"{model.weights_file} is not cached (in model_base_path's weights folder)"   # no path in a notebook
    if offline():
        return f"ACCEL_LIB_OFFLINE is set and {missing}"
    why = _unreachable(KERAS_WEIGHTS_BASE)
    return None if why is None else f"{missing} and {why}"


def warn_random(reason):
    """Say loudly, on stdout, that the model uses seeded random weights and why."""
    import textwrap
    bar = "!" * 78
    lines = textwrap.wrap(f"RANDOM WEIGHTS: {reason.rstrip('.')}.", 74) + [
        "The featurizer and classifier use seeded random weights: every stage runs,",
        "but the predictions and labels mean nothing."]
    print("\n".join([bar, *(f"!! {line}" for line in lines), bar]), file=sys.stdout, flush=True)


def write_h5(layers, path):
    """Write the weights of ``layers`` in the Keras application file layout (layer_names, weight_names), the layout
    ``AcceleratedModel`` loads by layer name."""
    import h5py
    layers = [layer for layer in layers if layer.weights]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode() for layer in layers]
        for layer in layers:
            g = f.create_group(layer.name)
            names = [f"{layer.name}/w{i}" for i in range(len(layer.weights))]
            g.attrs["weight_names"] = [n.encode() for n in names]
            for n, w in zip(names, layer.get_weights()):
                g.create_dataset(n, data=w)


class Weights:
    """The weights half of ``AcceleratedModel``: find them (``_resolve_weights``), load them, or calibrate random
    ones. A family overrides what it reads otherwise."""

    def _resolve_weights(self):
        req = self._weights_request
        if req == "random":
            self.weights_source = f"random(seed={self.seed})"
            return None
        if req not in ("auto", "imagenet"):
            self.weights_source = f"file:{Path(req).name}"
            return Path(req)
        cached = self.model_base_path / "weights" / self.weights_file
        if cached.is_file():
            self.weights_source = "imagenet"
            return cached
        why = imagenet_unavailable(self)          # asked before Keras, which would print "Downloading data from"
        if why is not None:
            if req == "imagenet":
                raise UserError(f"weights='imagenet' needs {self.weights_file} in {cached.parent}, but {why}: "
                                "connect to the network (and unset ACCEL_LIB_OFFLINE), or copy the file there.")
            warn_random(why)
            self.weights_source = f"random(seed={self.seed})"
            return None
        import keras
        try:
            got = keras.utils.get_file(self.weights_file, KERAS_WEIGHTS_BASE + self.weights_dir + self.weights_file,
                                       cache_dir=str(self.model_base_path), cache_subdir="weights")
        except Exception as e:  # noqa: BLE001 - any failure to fetch means "not to be had"
            if req == "imagenet":
                raise UserError(f"could not download the ImageNet weights ({e}); check the network, or use "
                                "weights='random' / a local weights file.") from None
            warn_random(f"the ImageNet weights could not be downloaded: {str(e).splitlines()[0][:120]}")
            self.weights_source = f"random(seed={self.seed})"
            return None
        self.weights_source = "imagenet"
        return Path(got)

    def _load_weights(self, path):
        """Assign the weights ``_resolve_weights`` found (a Keras .h5 file here; a family may read its own kind)."""
        self._load_h5(path)

    def _load_h5(self, path):
        """Assign weights from a Keras .h5 file, layer by layer by name (works for any input size)."""
        import h5py
        with h5py.File(path, "r") as f:
            g = f["model_weights"] if "model_weights" in f else f
            stored = {}
            for lname in g.attrs["layer_names"]:
                lname = lname.decode() if isinstance(lname, bytes) else lname
                names = [n.decode() if isinstance(n, bytes) else n for n in g[lname].attrs["weight_names"]]
                stored[lname] = [g[lname][n][()] for n in names]
        missing = []
        heads = set(id(l) for l in self._classifier.layers)
        for layer in [*self._featurizer.layers, *self._classifier.layers]:
            if not layer.weights:
                continue
            if layer.name not in stored:
                missing.append(layer.name)
                continue
            if id(layer) in heads and self.class_names and [w.shape for w in stored[layer.name]] != [
                    tuple(w.shape) for w in layer.weights]:
                continue              # heads for your own class count: theirs do not fit, these are to be trained
            layer.set_weights(stored[layer.name])
        if missing:
            raise UserError(f"weights file {path} lacks layers {missing[:5]}...; is it a {self.keras_app} file?")

    def _calibrate_random(self):
        """Seeded random weights; batch-norm statistics set from one pass over generated images (as many as
        ``CALIBRATION_PIXELS`` allows)."""
        import keras
        import numpy as np

        from ..samples import sample_batch
        n = max(1, min(8, CALIBRATION_PIXELS // (self.image_size * self.image_size)))
        x = np.asarray(sample_batch(n, self.image_size, self.input_order, seed=self.seed))
        bns = [l for l in self._featurizer.layers if isinstance(l, keras.layers.BatchNormalization)]
        if bns:
            saved = [l.momentum for l in bns]
            for l in bns:
                l.momentum = 0.0
            self._featurizer(x, training=True)
            for l, m in zip(bns, saved):
                l.momentum = m
        feats = self._featurizer(x, training=False)
        self._calibrate_head([np.asarray(f) for f in feats] if isinstance(feats, (list, tuple)) else np.asarray(feats))

    def _calibrate_head(self, feats):
        """A random head with a readable spread of probabilities on these features."""
        import numpy as np
        rng = np.random.default_rng(self.seed)
        w = rng.standard_normal((self.feature_dim, self.num_classes)).astype(np.float32)
        w *= 4.0 / (np.sqrt(self.feature_dim) * max(float(feats.std()), 1e-6))
        self._classifier.get_layer("predictions").set_weights([w, np.zeros(self.num_classes, np.float32)])
