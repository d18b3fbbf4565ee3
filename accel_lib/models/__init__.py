"""The model zoo: featurizers that run on the FPGA and their default heads (classifiers, SSD's box heads)."""
from . import detection, utils
from .squeezenet import QuantizedSqueezenet11, Squeezenet11, choose_featurizer
from .ssd import QuantizedSsdSmall, QuantizedSsdVgg, SsdSmall, SsdVgg
from .saving import SavedModelInfo, read_metadata
from .zoo import (AcceleratedModel, Densenet121, QuantizedDensenet121, QuantizedResnet50, QuantizedResnet152,
                  QuantizedVgg16, Resnet50, Resnet152, Vgg16)

ZOO = (Resnet50, QuantizedResnet50, Resnet152, QuantizedResnet152, Vgg16, QuantizedVgg16, Densenet121,
       QuantizedDensenet121, Squeezenet11, QuantizedSqueezenet11, SsdVgg, QuantizedSsdVgg, SsdSmall, QuantizedSsdSmall)

__all__ = ["detection", "utils", "AcceleratedModel", *(c.__name__ for c in ZOO), "ZOO", "SavedModelInfo",
           "read_metadata", "choose_featurizer"]
