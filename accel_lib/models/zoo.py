"""The model zoo: featurizers (Keras application graphs) with a default ImageNet classifier head.

Weights (``weights``): ``"imagenet"`` loads the real Keras weights file (downloaded once into ``model_base_path``), a
path loads a local Keras .h5 weights file, ``"random"`` builds seeded random weights whose batch-norm statistics are
calibrated on generated images, and ``"auto"`` uses imagenet when it can be had and random (loudly) otherwise.
Saving is ``saving``'s; this module builds the graph and names the article's tensors.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from .saving import Saving
from .weights import RANDOM_SEED, Weights


class AcceleratedModel(Weights, Saving):
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

        from ..fpga.device.host import MEANS_RGB
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
