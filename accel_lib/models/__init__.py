"""The model zoo: featurizers that run on the FPGA and their default classifiers."""
from . import utils
from .zoo import (AcceleratedModel, QuantizedResnet50, Resnet50, SavedModelInfo, read_metadata,
                  tensor_names)

__all__ = ["utils", "AcceleratedModel", "Resnet50", "QuantizedResnet50", "SavedModelInfo", "read_metadata",
           "tensor_names"]
