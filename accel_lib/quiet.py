"""Keep TensorFlow's import-time log lines (absl, oneDNN, CUDA probing) out of notebooks and batch runs.

TensorFlow's C++ runtime writes them straight to file descriptor 2 while it loads, before TF_CPP_MIN_LOG_LEVEL
applies, and Jupyter shows whatever reaches that descriptor. ``install()`` (called when accel_lib is imported)
makes the first import of ``tensorflow`` in the process run with descriptor 2 pointed at /dev/null, including its
first look for GPUs; errors still raise as Python exceptions, and nothing else is silenced.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import sys


@contextlib.contextmanager
def stderr_silenced():
    """Point file descriptor 2 at /dev/null for the duration (Python's sys.stderr included)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with stderr_silenced():
            self.loader.exec_module(module)
            module.config.list_physical_devices("GPU")     # CUDA's probe logs on first use: do it now


class _QuietFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)                            # once, and never for another module
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def install():
    """Silence the first ``import tensorflow`` of this process (idempotent; nothing to do once TF is loaded)."""
    if os.environ.get("ACCEL_LIB_TF_LOGS") == "1" or "tensorflow" in sys.modules:
        return
    if not any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())
