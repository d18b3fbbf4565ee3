"""Conversion of a registered TensorFlow model into an accelerator package.

``converter`` is the public side (AccelOnnxConverter, the operation record), ``worker`` the process that runs the
stages, ``checks`` what every conversion measures (fp32 parity, the device against the reference device, the
format's effect).
"""
from .converter import AccelOnnxConverter, ModelConvertOperation

__all__ = ["AccelOnnxConverter", "ModelConvertOperation"]
