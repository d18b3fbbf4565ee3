"""Conversion of a registered TensorFlow model into an accelerator package.

``converter`` is the public side (AccelOnnxConverter, the operation record); the conversion itself is named steps
(``steps``) over one state (``state``), run by ``runner`` (``convert_folder`` runs them on a saved model folder,
without a workspace);
``worker`` the process entry, ``checks`` what every conversion measures (fp32 parity, the device against the
reference device, the format's effect).
"""
from .converter import AccelOnnxConverter, ModelConvertOperation
from .runner import convert_folder, fp32_featurizer

__all__ = ["AccelOnnxConverter", "ModelConvertOperation", "convert_folder", "fp32_featurizer"]
