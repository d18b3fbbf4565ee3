"""The accelerator package: host preprocessing -> device stage (featurizer) -> host classifier.

A package is a folder with ``manifest.json``, ``device.onnx`` and ``classifier.onnx``. ``AcceleratorPackage``
runs it in-process; the gRPC server runs the same object behind each replica.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import host

MANIFEST = "manifest.json"
PACKAGE_FORMAT = "accel_lib.accelonnx/1"


class RequestError(ValueError):
    """A request the package cannot answer (bad image, unknown name, wrong dtype or shape)."""


def _session(path, threads):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class AcceleratorPackage:
    """Load a package folder and score encoded images or preprocessed arrays with it."""

    def __init__(self, path, threads=0, device_file=None):
        self.path = Path(path)
        self.manifest = json.loads((self.path / MANIFEST).read_text())
        if self.manifest.get("format") != PACKAGE_FORMAT:
            raise ValueError(f"{self.path} is not an accelerator package ({PACKAGE_FORMAT}).")
        st = {s["name"]: s for s in self.manifest["stages"]}
        self.prep = st["preprocess"]["params"]
        self.device = _session(device_file or self.path / st["featurizer"]["file"], threads)
        self.classifier = _session(self.path / st["classifier"]["file"], threads)
        self.numeric_format = st["featurizer"]["numeric_format"]
        self.input_name = self.manifest["input"]["name"]
        self._names = {}
        for out in self.manifest["outputs"]:
            for n in [out["name"], *out.get("aliases", [])]:
                self._names[n] = out
        self.default_outputs = [o["name"] for o in self.manifest["outputs"]]

    def input_names(self):
        """The names the input may be given by."""
        return [self.input_name, *self.manifest["input"].get("aliases", [])]

    def resolve(self, name):
        """The manifest entry of an output name or alias (RequestError lists the valid ones)."""
        if name not in self._names:
            raise RequestError(f"unknown output {name!r}; this model answers {sorted(self._names)}.")
        return self._names[name]

    def preprocess(self, images):
        """Host stage: encoded images -> float32 [N, H, W, 3]."""
        try:
            return host.preprocess(list(images), **self.prep)
        except host.BadImage as e:
            raise RequestError(str(e)) from None

    def featurize(self, x):
        """Device stage: preprocessed images -> features."""
        h, w = self.prep["output_height"], self.prep["output_width"]
        x = np.asarray(x)
        if x.dtype != np.float32 or x.ndim != 4 or x.shape[1:] != (h, w, 3):
            raise RequestError(f"device input must be float32 [N, {h}, {w}, 3], got {x.dtype} {list(x.shape)}.")
        return self.device.run(None, {self.device.get_inputs()[0].name: x})[0]

    def classify(self, features):
        """Host classifier: features -> class probabilities."""
        return self.classifier.run(None, {self.classifier.get_inputs()[0].name: features})[0]

    def run(self, images, outputs=None):
        """Score encoded images; returns {output name: array} for the requested names (default: all)."""
        wanted = self.default_outputs if outputs is None else list(outputs)
        for n in wanted:                           # reject unknown names before any work
            self.resolve(n)
        return self.run_arrays(self.preprocess(images), wanted)

    def run_arrays(self, x, outputs=None):
        """Score preprocessed images (float32 [N, H, W, 3]); same result form as run()."""
        wanted = self.default_outputs if outputs is None else list(outputs)
        entries = [self.resolve(n) for n in wanted]
        feats = self.featurize(x)
        probs = self.classify(feats) if any(e["stage"] == "classifier" for e in entries) else None
        return {n: (probs if e["stage"] == "classifier" else feats) for n, e in zip(wanted, entries)}
