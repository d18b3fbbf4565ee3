"""The model zoo: featurizers (Keras application graphs) with a default ImageNet classifier head.

Weights: ``"imagenet"`` loads the real Keras weights file (downloaded once into ``model_base_path``), a path
loads a local Keras .h5 weights file, ``"random"`` builds seeded random weights whose batch-norm statistics are
calibrated on generated images, and ``"auto"`` uses imagenet when it can be had and random (loudly) otherwise.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..errors import UserError

KERAS_WEIGHTS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"
METADATA_FILE = "accel_model.json"
RANDOM_SEED = 0


def offline() -> bool:
    """True when ACCEL_LIB_OFFLINE asks that nothing be fetched from the network."""
    return os.environ.get("ACCEL_LIB_OFFLINE", "0").lower() not in ("0", "false", "no", "")


def _warn_random(reason):
    bar = "!" * 78
    print(f"{bar}\n!! RANDOM WEIGHTS: {reason}\n!! The featurizer and classifier use seeded random weights: "
          f"every stage runs,\n!! but the predictions and labels mean nothing.\n{bar}", file=sys.stdout, flush=True)


class AcceleratedModel:
    """Base of the zoo: one featurizer that runs on the FPGA, plus its default classifier on the host."""

    family = ""                 # short name, e.g. "resnet50"
    keras_app = ""              # keras.applications constructor
    weights_file = ""           # Keras weights file (with top), under KERAS_WEIGHTS_BASE + weights_dir
    weights_dir = ""
    scope = ""                  # seed's graph scope, e.g. "resnet_v1_50"
    feature_dim = 0
    num_classes = 1000
    quantized = False
    input_order = "BGR"         # Keras ImageNet weights expect caffe-style BGR, mean-subtracted

    def __init__(self, model_base_path, is_frozen=True, weights="auto", image_size=224, seed=RANDOM_SEED):
        self.model_base_path = Path(os.path.expanduser(str(model_base_path)))
        self.is_frozen = bool(is_frozen)
        self.image_size = int(image_size)
        self.seed = int(seed)
        if not 32 <= self.image_size <= 1024:
            raise UserError(f"image_size must be from 32 to 1024, got {image_size}.")
        if not (weights in ("auto", "imagenet", "random") or Path(str(weights)).is_file()):
            raise UserError(f"weights must be 'auto', 'imagenet', 'random' or the path of a Keras .h5 weights "
                            f"file; got {weights!r} (no such file).")
        self._weights_request = weights
        self._featurizer = None
        self._classifier = None
        self.weights_source = None

    # -- seed-facing attributes ----------------------------------------------------------------
    @property
    def version(self):
        """The featurizer's version string."""
        return f"{self.family}-keras-1.0" + ("-q" if self.quantized else "")

    @property
    def default_numeric_format(self):
        """The device format the converter uses by default: ms-fp9 for Quantized models, else fp32."""
        return "ms-fp9" if self.quantized else "fp32"

    feature_name = property(lambda self: f"{self.scope}/pool5:0", doc="name of the feature tensor")
    classifier_output = property(lambda self: f"classifier/{self.scope}/predictions/Softmax:0",
                                 doc="seed's default classifier output tensor name")
    output_aliases = property(lambda self: [f"classifier_1/{self.scope}/predictions/Softmax:0"])
    input_shape = property(lambda self: (None, self.image_size, self.image_size, 3))
    feature_shape = property(lambda self: (None, self.feature_dim))
    output_shape = property(lambda self: (None, self.num_classes))

    def __repr__(self):
        return f"{type(self).__name__}(version={self.version!r}, weights={self.weights_source!r})"

    # -- graph ----------------------------------------------------------------------------------
    @property
    def featurizer(self):
        """The Keras featurizer: float images [N, H, W, 3] -> features [N, D]."""
        self._build()
        return self._featurizer

    def import_graph_def(self, image_tensors):
        """Run the featurizer on preprocessed images; returns the feature tensor."""
        return self.featurizer(image_tensors, training=False)

    def get_default_classifier(self, feature_tensor=None):
        """The default ImageNet head; with a feature tensor, returns the class probabilities for it."""
        self._build()
        return self._classifier if feature_tensor is None else self._classifier(feature_tensor, training=False)

    def restore_weights(self, sess=None):
        """Load the weights (TF2: done on first use; kept for the seed's call)."""
        self._build()

    def _build(self):
        if self._featurizer is not None:
            return
        import keras
        keras.utils.set_random_seed(self.seed)
        ctor = getattr(keras.applications, self.keras_app)
        full = ctor(include_top=False, weights=None, pooling="avg",
                    input_shape=(self.image_size, self.image_size, 3))
        self._featurizer = keras.Model(full.input, full.output, name=self.scope)
        inp = keras.Input((self.feature_dim,), name="features")
        out = keras.layers.Dense(self.num_classes, activation="softmax", name="predictions")(inp)
        self._classifier = keras.Model(inp, out, name="classifier")
        path = self._resolve_weights()
        if path is None:
            self._calibrate_random()
        else:
            self._load_h5(path)
        self._featurizer.trainable = not self.is_frozen

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
        if offline():
            if req == "imagenet":
                raise UserError(f"weights='imagenet' needs {self.weights_file} in {cached.parent}, and "
                                "ACCEL_LIB_OFFLINE is set; unset it to download, or copy the file there.")
            _warn_random("ACCEL_LIB_OFFLINE is set and no cached ImageNet weights were found "
                         f"in {cached.parent}.")
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
            _warn_random(f"the ImageNet weights could not be downloaded: {str(e).splitlines()[0][:120]}")
            self.weights_source = f"random(seed={self.seed})"
            return None
        self.weights_source = "imagenet"
        return Path(got)

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
        for layer in [*self._featurizer.layers, *self._classifier.layers]:
            if not layer.weights:
                continue
            if layer.name not in stored:
                missing.append(layer.name)
                continue
            layer.set_weights(stored[layer.name])
        if missing:
            raise UserError(f"weights file {path} lacks layers {missing[:5]}...; is it a {self.keras_app} file?")

    def _calibrate_random(self):
        """Seeded random weights; batch-norm statistics set from one pass over generated images."""
        import keras
        import numpy as np

        from ..samples import sample_batch
        x = np.asarray(sample_batch(8, self.image_size, self.input_order, seed=self.seed))
        bns = [l for l in self._featurizer.layers if isinstance(l, keras.layers.BatchNormalization)]
        saved = [l.momentum for l in bns]
        for l in bns:
            l.momentum = 0.0
        self._featurizer(x, training=True)
        for l, m in zip(bns, saved):
            l.momentum = m
        # a head with a readable spread of probabilities on these features
        feats = self._featurizer(x, training=False).numpy()
        rng = np.random.default_rng(self.seed)
        w = rng.standard_normal((self.feature_dim, self.num_classes)).astype(np.float32)
        w *= 4.0 / (np.sqrt(self.feature_dim) * max(float(feats.std()), 1e-6))
        self._classifier.get_layer("predictions").set_weights([w, np.zeros(self.num_classes, np.float32)])

    # -- save -----------------------------------------------------------------------------------
    def save(self, model_save_path, classifier=None, classifier_name=None, labels="imagenet", order=None,
             scaling_factor=1.0, preserve_aspect_ratio=True):
        """Save images (string) -> preprocessing -> featurizer -> classifier as a SavedModel.

        Signatures: ``serving_default`` (input ``images``, output ``output_alias``), ``featurize`` and
        ``classify`` (the stages the converter splits). Metadata goes to accel_model.json beside it.
        """
        import tensorflow as tf

        from . import utils
        tf.get_logger().setLevel("ERROR")
        self._build()
        head = self._classifier if classifier is None else classifier
        n_out = int(head.output_shape[-1])
        prep = dict(order=order or self.input_order, scaling_factor=float(scaling_factor),
                    output_height=self.image_size, output_width=self.image_size,
                    preserve_aspect_ratio=bool(preserve_aspect_ratio))
        scope = f"classifier/{self.scope}/predictions" if classifier is None else (classifier_name or "classifier")
        feat, size, dim = self._featurizer, self.image_size, self.feature_dim

        class Served(tf.Module):
            def __init__(self):
                super().__init__()
                self.featurizer, self.classifier = feat, head

            @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="image_tensors")])
            def featurize(self, image_tensors):
                return {"features": self.featurizer(image_tensors, training=False)}

            @tf.function(input_signature=[tf.TensorSpec([None, dim], tf.float32, name="features")])
            def classify(self, features):
                with tf.name_scope(scope):
                    probs = tf.identity(self.classifier(features, training=False), name="Softmax")
                return {"output_alias": probs}

            @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
            def serve(self, images):
                x = utils.preprocess_array(images, **prep)
                return self.classify(self.featurize(x)["features"])

        served = Served()
        out_dir = Path(model_save_path)
        if out_dir.exists():
            import shutil
            shutil.rmtree(out_dir)
        tf.saved_model.save(served, str(out_dir), signatures={
            "serving_default": served.serve, "featurize": served.featurize, "classify": served.classify})
        out_name = f"{scope}/Softmax:0"
        meta = {
            "format": "accel_lib.saved_model/1",
            "featurizer": type(self).__name__, "family": self.family, "version": self.version,
            "weights": self.weights_source, "quantized": self.quantized,
            "default_numeric_format": self.default_numeric_format,
            "input": {"name": "images", "aliases": ["images:0", "Placeholder:0"], "dtype": "string",
                      "shape": [-1]},
            "preprocessing": prep,
            "feature": {"name": self.feature_name, "shape": [-1, dim], "signature": "featurize"},
            "outputs": [{"name": out_name, "alias": "output_alias",
                         "aliases": self.output_aliases if classifier is None else [],
                         "shape": [-1, n_out], "dtype": "float32"}],
            "labels": labels if classifier is None or labels != "imagenet" else None,
            "signatures": {"serving": "serving_default", "featurize": "featurize", "classify": "classify"},
        }
        (out_dir / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return SavedModelInfo(str(out_dir), meta)


class SavedModelInfo:
    """What save() wrote: the path, the input name and the output names (carry these to conversion)."""

    def __init__(self, path, meta):
        self.path = path
        self.metadata = meta
        self.input_tensors = meta["input"]["name"]
        self.output_tensors = meta["outputs"][0]["name"]

    def __repr__(self):
        return f"SavedModelInfo(path={self.path!r}, input={self.input_tensors!r}, output={self.output_tensors!r})"


def read_metadata(model_dir) -> dict:
    """The accel_model.json of a saved model folder (UserError if it is not one of ours)."""
    p = Path(model_dir) / METADATA_FILE
    if not p.is_file():
        raise UserError(f"{model_dir} has no {METADATA_FILE}: save the model with model_graph.save(...) from "
                        "accel_lib.models so the converter knows its stages.")
    return json.loads(p.read_text())


class Resnet50(AcceleratedModel):
    """ResNet-50 v1 featurizer (2048 pooled features) in fp32 on the device."""
    family, keras_app, scope, feature_dim = "resnet50", "ResNet50", "resnet_v1_50", 2048
    weights_dir, weights_file = "resnet/", "resnet50_weights_tf_dim_ordering_tf_kernels.h5"


class QuantizedResnet50(Resnet50):
    """ResNet-50 v1 featurizer run in Brainwave's narrow precision (ms-fp9) on the device."""
    quantized = True


def tensor_names(model):
    """(input name, output names) recorded in a registered model's metadata, for conversion and scoring."""
    meta = json.loads(model.read_file(METADATA_FILE)) if METADATA_FILE in model.files else None
    if meta is None and "manifest.json" in model.files:
        meta = json.loads(model.read_file("manifest.json"))
    if meta is None:
        raise UserError(f"model {model.id} carries no accel_lib metadata; save it with model_graph.save(...).")
    return meta["input"]["name"], [o["name"] for o in meta["outputs"]]
