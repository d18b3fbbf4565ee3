"""The model zoo: featurizers (Keras application graphs) with a default ImageNet classifier head.

Weights: ``"imagenet"`` loads the real Keras weights file (downloaded once into ``model_base_path``), a path
loads a local Keras .h5 weights file, ``"random"`` builds seeded random weights whose batch-norm statistics are
calibrated on generated images, and ``"auto"`` uses imagenet when it can be had and random (loudly) otherwise.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import UserError
from ..fpga import manifest

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
        except OSError as e:
            result.append(f"{host} cannot be reached ({type(e).__name__}: {e})")

    t = threading.Thread(target=connect, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return result[0] if result else f"{host} did not answer within {timeout:.0f} s"


def imagenet_unavailable(model) -> str | None:
    """Why ``model``'s Keras ImageNet weights cannot be had (None: cached, or their server answers)."""
    cached = model.model_base_path / "weights" / model.weights_file
    if cached.is_file():
        return None
    if offline():
        return f"ACCEL_LIB_OFFLINE is set and {model.weights_file} is not cached in {cached.parent}"
    why = _unreachable(KERAS_WEIGHTS_BASE)
    return None if why is None else f"{model.weights_file} is not cached in {cached.parent} and {why}"


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


class AcceleratedModel:
    """Base of the zoo: a featurizer that runs on the FPGA, plus its default heads on the host.

    Subclasses say which Keras application they build, the article's tensor names, and the input their weights expect
    (``input_order``; channel means are always subtracted by the preprocessing, as in the article).
    """

    family = ""                 # short name, e.g. "resnet50"
    keras_app = ""              # keras.applications constructor
    weights_file = ""           # Keras weights file (with top), under KERAS_WEIGHTS_BASE + weights_dir
    weights_dir = ""
    scope = ""                  # the article's graph scope, e.g. "resnet_v1_50"
    feature_dim = 0
    num_classes = 1000
    quantized = False
    quantized_format = "ms-fp9"  # the device format of the Quantized twin (Brainwave's)
    input_order = "BGR"         # Keras ImageNet weights (caffe style) expect BGR, mean-subtracted
    default_image_size = 224
    preserve_aspect_ratio = True    # resize the shortest side and centre-crop (the article's); False: squash to size
    labels = "imagenet"         # the label set the default heads predict
    class_names = ()            # or the default heads' own class names, in index order (then labels is None)
    feature_layer = "pool5"     # article-style name of the feature tensor
    head_tensor = "predictions/Softmax"
    output_aliases = ()         # other names the article prints for the default output

    def __init__(self, model_base_path, is_frozen=True, weights="auto", image_size=None, seed=RANDOM_SEED):
        self.model_base_path = Path(os.path.expanduser(str(model_base_path)))
        self.is_frozen = bool(is_frozen)
        self.image_size = int(self.default_image_size if image_size is None else image_size)
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

    # -- the article's attributes ----------------------------------------------------------------
    @property
    def version(self):
        """The featurizer's version string."""
        return f"{self.family}-keras-1.0" + ("-q" if self.quantized else "")

    @property
    def default_numeric_format(self):
        """The device format the converter uses by default: ``quantized_format`` for Quantized models, else fp32."""
        return self.quantized_format if self.quantized else "fp32"

    feature_name = property(lambda self: f"{self.scope}/{self.feature_layer}:0", doc="name of the feature tensor")
    classifier_output = property(lambda self: f"classifier/{self.scope}/{self.head_tensor}:0",
                                 doc="the article's default classifier output tensor name")
    output_tensors = property(lambda self: self.classifier_output,
                              doc="the article's default output name(s) to convert and score with")
    input_shape = property(lambda self: (None, self.image_size, self.image_size, 3))
    feature_shape = property(lambda self: (None, self.feature_dim))
    output_shape = property(lambda self: (None, self.num_classes))
    postprocess_spec = None     # what the client applies after the heads (SSD: decoding and suppression)

    def __repr__(self):
        return f"{type(self).__name__}(version={self.version!r}, weights={self.weights_source!r})"

    # -- the stages' tensors ---------------------------------------------------------------------
    def feature_tensors(self):
        """The device stage's outputs: (key, article-style name, shape) each."""
        return [("features", self.feature_name, [-1, self.feature_dim])]

    def output_specs(self, head=None, head_name=None):
        """The heads' outputs: (key, name, aliases, shape, kind) each; ``head`` is a custom classifier, if any."""
        if head is None:
            return [("output_alias", self.classifier_output, ["output_alias", *self.output_aliases],
                     [-1, self.num_classes], "probabilities")]
        return [("output_alias", f"{head_name or 'classifier'}/Softmax:0", ["output_alias"],
                 [-1, int(head.output_shape[-1])], "probabilities")]

    # -- graph ----------------------------------------------------------------------------------
    @property
    def featurizer(self):
        """The Keras featurizer: float images [N, H, W, 3] -> features (one tensor, or a list of maps)."""
        self._build()
        return self._featurizer

    def import_graph_def(self, image_tensors):
        """Run the featurizer on preprocessed images; returns the feature tensor(s)."""
        return self.featurizer(image_tensors, training=False)

    def get_default_classifier(self, feature_tensor=None):
        """The default heads; with feature tensor(s), returns their output (class probabilities)."""
        self._build()
        return self._classifier if feature_tensor is None else self._classifier(feature_tensor, training=False)

    def restore_weights(self, sess=None):
        """Load the weights (TF2: done on first use; kept for the article's call)."""
        self._build()

    def _make_featurizer(self, keras):
        full = getattr(keras.applications, self.keras_app)(include_top=False, weights=None, pooling="avg",
                                                           input_shape=(self.image_size, self.image_size, 3))
        return keras.Model(full.input, full.output, name=self.scope)

    def _make_head(self, keras):
        inp = keras.Input((self.feature_dim,), name="features")
        out = keras.layers.Dense(self.num_classes, activation="softmax", name="predictions")(inp)
        return keras.Model(inp, out, name="classifier")

    def _build(self):
        if self._featurizer is not None:
            return
        import keras

        from .. import progress
        bar = progress.bar(total=2, desc=f"building {type(self).__name__}")
        keras.utils.set_random_seed(self.seed)
        self._featurizer = self._make_featurizer(keras)
        self._classifier = self._make_head(keras)
        bar.update(1)
        path = self._resolve_weights()
        if path is None:
            self._calibrate_random()
        else:
            self._load_weights(path)
        bar.update(1)
        bar.close()
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

    # -- save -----------------------------------------------------------------------------------
    def save(self, model_save_path, classifier=None, classifier_name=None, labels=None, class_names=None,
             order=None, scaling_factor=1.0, preserve_aspect_ratio=None):
        """Save images (string) -> preprocessing -> featurizer -> heads as a SavedModel, with its metadata.

        Signatures: ``serving_default`` (input ``images``; output ``output_alias`` for a classifier), ``featurize``
        and ``heads`` (the stages the converter splits). ``classifier``: your own Keras head on the features (then
        give ``class_names``, or a label set name in ``labels``).
        """
        import tensorflow as tf

        from . import utils
        from .. import progress
        tf.get_logger().setLevel("ERROR")
        bar = progress.bar(total=3, desc=f"saving {type(self).__name__}")
        self._build()
        bar.update(1)
        head = self._classifier if classifier is None else classifier
        feats = self.feature_tensors()
        outs = self.output_specs(classifier, classifier_name)
        prep = dict(order=order or self.input_order, scaling_factor=float(scaling_factor),
                    output_height=self.image_size, output_width=self.image_size,
                    preserve_aspect_ratio=bool(self.preserve_aspect_ratio if preserve_aspect_ratio is None
                                               else preserve_aspect_ratio))
        fkeys, okeys, featurizer = [f[0] for f in feats], [o[0] for o in outs], self._featurizer

        def as_list(y):
            return list(y) if isinstance(y, (list, tuple)) else [y]

        def featurize(image_tensors):
            return dict(zip(fkeys, as_list(featurizer(image_tensors, training=False))))

        def heads(*features):
            return dict(zip(okeys, as_list(head(features[0] if len(features) == 1 else list(features),
                                                training=False))))

        def serve(images):
            f = featurize(utils.preprocess_array(images, **prep))
            return heads(*[f[k] for k in fkeys])

        size = self.image_size
        module = tf.Module()
        module.featurizer, module.head = featurizer, head
        module.featurize = tf.function(featurize, input_signature=[
            tf.TensorSpec([None, size, size, 3], tf.float32, name="image_tensors")])
        module.heads = tf.function(heads, input_signature=[
            tf.TensorSpec([None, *shape[1:]], tf.float32, name=key) for key, _, shape in feats])
        module.serve = tf.function(serve, input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        out_dir = Path(model_save_path)
        if out_dir.exists():
            import shutil
            shutil.rmtree(out_dir)
        bar.update(1)
        tf.saved_model.save(module, str(out_dir), signatures={
            "serving_default": module.serve, "featurize": module.featurize, "heads": module.heads})
        bar.update(1)
        bar.close()
        meta = manifest.SavedModelMetadata(
            model_class=type(self).__name__, family=self.family, version=self.version,
            weights=str(self.weights_source), quantized=self.quantized,
            default_numeric_format=self.default_numeric_format,
            input=manifest.Tensor("images", "images", [-1], "string", ["images:0", "Placeholder:0"]),
            preprocessing=prep,
            features=[manifest.Tensor(name, key, shape, stage="featurizer", kind="features")
                      for key, name, shape in feats],
            outputs=[manifest.Tensor(name, key, shape, aliases=list(al), stage="heads", kind=kind)
                     for key, name, al, shape, kind in outs],
            signatures={"serving": "serving_default", "featurize": "featurize", "heads": "heads"},
            labels=self.labels if classifier is None else labels,
            class_names=list(class_names or (self.class_names if classifier is None else [])),
            postprocess=self.postprocess_spec if classifier is None else None)
        manifest.write(meta, out_dir)
        return SavedModelInfo(str(out_dir), meta)


class SavedModelInfo:
    """What save() wrote: the path, the input name and the output name(s) (carry these to conversion)."""

    def __init__(self, path, meta):
        self.path = path
        self.metadata = meta
        self.input_tensors = meta.input.name
        names = meta.default_output_names()
        self.output_tensors = names[0] if len(names) == 1 else names

    def __repr__(self):
        return f"SavedModelInfo(path={self.path!r}, input={self.input_tensors!r}, output={self.output_tensors!r})"


def read_metadata(model_dir) -> manifest.SavedModelMetadata:
    """The typed accel_model.json of a saved model folder (UserError if it is not one of ours)."""
    try:
        return manifest.read(manifest.SavedModelMetadata, model_dir)
    except manifest.ManifestError as e:
        raise UserError(str(e)) from None


class Resnet50(AcceleratedModel):
    """ResNet-50 v1 featurizer (2048 pooled features) in fp32 on the device; input BGR, means subtracted."""
    family, keras_app, scope, feature_dim = "resnet50", "ResNet50", "resnet_v1_50", 2048
    weights_dir, weights_file = "resnet/", "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    output_aliases = ("classifier_1/resnet_v1_50/predictions/Softmax:0",)


class QuantizedResnet50(Resnet50):
    """ResNet-50 v1 featurizer run in Brainwave's narrow precision (ms-fp9) on the device."""
    quantized = True


class Resnet152(AcceleratedModel):
    """ResNet-152 v1 featurizer (2048 pooled features) in fp32 on the device; input BGR, means subtracted."""
    family, keras_app, scope, feature_dim = "resnet152", "ResNet152", "resnet_v1_152", 2048
    weights_dir, weights_file = "resnet/", "resnet152_weights_tf_dim_ordering_tf_kernels.h5"


class QuantizedResnet152(Resnet152):
    """ResNet-152 v1 featurizer run in ms-fp9 on the device."""
    quantized = True


class Vgg16(AcceleratedModel):
    """VGG-16 featurizer: the convolutions and fc6/fc7 (4096 features) on the device; input BGR, means subtracted.

    Its fully connected layers fix the input size: ImageNet weights need image_size=224.
    """
    family, keras_app, scope, feature_dim = "vgg16", "VGG16", "vgg_16", 4096
    weights_dir, weights_file = "vgg16/", "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    feature_layer, head_tensor = "fc7", "fc8/squeezed"

    def _make_featurizer(self, keras):
        full = keras.applications.VGG16(include_top=True, weights=None,
                                        input_shape=(self.image_size, self.image_size, 3))
        return keras.Model(full.input, full.get_layer("fc2").output, name=self.scope)

    def _resolve_weights(self):
        path = super()._resolve_weights()
        if path is not None and self.image_size != 224:
            raise UserError(f"VGG-16's fc6 layer was trained on 224x224 inputs: with weights from {path.name}, use "
                            f"image_size=224 (not {self.image_size}), or weights='random'.")
        return path


class QuantizedVgg16(Vgg16):
    """VGG-16 featurizer run in ms-fp9 on the device."""
    quantized = True


# torch-style statistics the Keras DenseNet weights expect: (rgb / 255 - mean) / std
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


class Densenet121(AcceleratedModel):
    """DenseNet-121 featurizer (1024 features) in fp32 on the device; input RGB, means subtracted.

    The Keras weights expect torch-style inputs, (rgb / 255 - mean) / std per channel: the featurizer's first layer
    turns the article's mean-subtracted RGB into exactly that (on the device, before the first convolution).
    """
    family, keras_app, scope, feature_dim = "densenet121", "DenseNet121", "densenet121", 1024
    weights_dir, weights_file = "densenet/", "densenet121_weights_tf_dim_ordering_tf_kernels.h5"
    input_order = "RGB"

    def _make_featurizer(self, keras):
        import numpy as np

        from ..fpga.host import MEANS_RGB
        inp = keras.Input((self.image_size, self.image_size, 3), name="image_tensors")
        std = 255.0 * np.asarray(_TORCH_STD)                 # constants in the graph (Rescaling, not variables)
        x = keras.layers.Rescaling(scale=(1.0 / std).tolist(),
                                   offset=((np.asarray(MEANS_RGB) - 255.0 * np.asarray(_TORCH_MEAN)) / std).tolist(),
                                   name="torch_normalization")(inp)
        full = keras.applications.DenseNet121(include_top=False, weights=None, pooling="avg", input_tensor=x)
        return keras.Model(inp, full.output, name=self.scope)


class QuantizedDensenet121(Densenet121):
    """DenseNet-121 featurizer run in ms-fp9 on the device."""
    quantized = True
