"""Saving a zoo model: images (string) -> preprocessing -> featurizer -> heads as a TensorFlow SavedModel with its
typed metadata (``Saving``, the models' mixin), and reading that metadata back."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..fpga.device import manifest


class Saving:
    """The saving half of ``AcceleratedModel``: ``save`` writes the SavedModel the converter splits into stages."""

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
