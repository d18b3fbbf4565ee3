"""accel_lib: deploy image models to (simulated) FPGA accelerators, following Azure ML's accelerated models."""
import os as _os

# TensorFlow's C++ info, warnings and the ERROR lines of conditions it recovers from (oneDNN falling back for a
# dtype: "E0000 ... oneDNN supports DT_BOOL only on ..."); a real failure raises in Python. Set before it loads.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _cpu_quota_defaults():
    """TensorFlow sizes its thread pools by the machine's cores and ignores a cgroup CPU quota (Binder gives one
    CPU of a many-core node): where this process may use fewer CPUs, say so in TensorFlow's own variables (a
    user's setting wins)."""
    from .fpga.device import resources
    n = resources.cpus()
    if n < (_os.cpu_count() or n):
        for var in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
            _os.environ.setdefault(var, str(n))


_cpu_quota_defaults()

from . import quiet as _quiet  # noqa: E402

_quiet.install()                                      # and its import-time lines (ACCEL_LIB_TF_LOGS=1 keeps them)

from .errors import OperationTimeout, UserError
from .model import Model
from .workspace import Workspace

__version__ = "0.1.0"


def __getattr__(name):  # heavy parts load on first use
    import importlib
    where = {"AccelOnnxConverter": "conversion", "ModelConvertOperation": "conversion",
             "AccelContainerImage": "image", "Image": "image", "PredictionClient": "client",
             "client_from_service": "client", "AksCompute": "compute", "ComputeTarget": "compute",
             "EdgeCompute": "compute", "AksWebservice": "webservice", "Webservice": "webservice"}
    if name in where:
        return getattr(importlib.import_module(f".{where[name]}", __name__), name)
    raise AttributeError(name)


__all__ = ["Workspace", "Model", "UserError", "OperationTimeout", "AccelOnnxConverter", "ModelConvertOperation",
           "AccelContainerImage", "Image", "PredictionClient", "client_from_service", "AksCompute", "ComputeTarget",
           "EdgeCompute", "AksWebservice", "Webservice"]
