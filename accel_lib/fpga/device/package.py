"""The accelerator package runtime: host preprocessing -> device featurizer -> host heads.

A package is a folder described by its manifest (``manifest.PackageManifest``): the device graph, the heads graph
and the outputs it answers. ``AcceleratorPackage`` runs it in-process; the gRPC server runs the same object behind
each replica.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from . import graph, host, manifest, resources


class RequestError(ValueError):
    """A request the package cannot answer (bad image, unknown name, wrong dtype or shape)."""


class RequestTooLarge(RequestError):
    """A request over a limit on its size (RESOURCE_EXHAUSTED, not INVALID_ARGUMENT: it may be split)."""


def _session(path, threads, spinning, device_graph=False, arena=True):
    import onnxruntime as ort
    ort.set_default_logger_severity(3)       # errors only: no warnings of ONNX Runtime's own (telemetry) in the logs
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = arena        # off: memory goes back after each run (a kernel that scores now and then)
    if not spinning:          # a served replica waits for requests: its threads sleep instead of spinning
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if device_graph:          # the fused quantizer when it is built (graph.session)
        return graph.session(path, opts)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class AcceleratorPackage:
    """Load a package folder and score encoded images or preprocessed arrays with it.

    ``threads``: ONNX Runtime's intra-op threads (0: the CPUs this process may use); ``spinning=False`` lets idle
    threads sleep; ``max_pixels``: the per-image limit checked before decoding; ``device=False`` loads only the host
    stages (preprocessing and heads), for tools that run device graphs of their own; ``arena=False`` gives each run's
    memory back instead of keeping the largest batch's worth (ONNX Runtime's memory arena)."""

    def __init__(self, path, threads=0, device_file=None, spinning=True, max_pixels=host.MAX_PIXELS, device=True,
                 arena=True, max_decoded_bytes=None):
        self.path = Path(path)
        self.manifest = manifest.read(manifest.PackageManifest, self.path)
        m = self.manifest
        self.prep = m.stage("preprocess").params
        self.max_pixels = max_pixels
        self.max_decoded_bytes = max_decoded_bytes
        threads = threads or resources.cpus()
        self.device = (_session(device_file or self.path / m.device.file, threads, spinning, device_graph=True,
                                arena=arena) if device else None)
        heads = m.stage("heads")
        self.heads = _session(self.path / heads.file, threads, spinning, arena=arena) if heads else None
        self.numeric_format = m.numeric_format
        self.input_name = m.input.name
        self._names = {n: out for out in m.served() for n in out.names}
        self.default_outputs = list(m.outputs)
        self.timing_report = (json.loads((self.path / m.timing).read_text()) if m.timing else None)   # modeled

    def input_names(self):
        """The names the input may be given by."""
        return self.manifest.input.names

    def resolve(self, name) -> manifest.Tensor:
        """The manifest entry of an output name or alias (RequestError lists the valid ones)."""
        if name not in self._names:
            raise RequestError(f"unknown output {name!r}; this model answers {sorted(self._names)}.")
        return self._names[name]

    def preprocess(self, images):
        """Host stage: encoded images -> float32 [N, H, W, 3]."""
        try:
            return host.preprocess(list(images), max_pixels=self.max_pixels, max_decoded_bytes=self.max_decoded_bytes,
                                   **self.prep)
        except host.TooMuchToDecode as e:
            raise RequestTooLarge(str(e)) from None
        except host.BadImage as e:
            raise RequestError(str(e)) from None

    def featurize(self, x) -> dict:
        """Device stage: preprocessed images -> {feature key: array}."""
        h, w = self.prep["output_height"], self.prep["output_width"]
        x = np.asarray(x)
        if x.dtype != np.float32 or x.ndim != 4 or x.shape[1:] != (h, w, 3):
            raise RequestError(f"device input must be float32 [N, {h}, {w}, 3], got {x.dtype} {list(x.shape)}.")
        keys = self.manifest.device.outputs
        return dict(zip(keys, self.device.run(keys, {self.device.get_inputs()[0].name: x})))

    def run_heads(self, features: dict) -> dict:
        """Host heads: {feature key: array} -> {head output key: array}."""
        st = self.manifest.stage("heads")
        return dict(zip(st.outputs, self.heads.run(st.outputs, {k: features[k] for k in st.inputs})))

    def run(self, images, outputs=None, times=None):
        """Score encoded images; returns {output name: array} for the requested names (default: all). ``times``, a
        dict, receives each stage's seconds (preprocess, device, heads), measured."""
        wanted = self.default_outputs if outputs is None else list(outputs)
        for n in wanted:                           # reject unknown names before any work
            self.resolve(n)
        t0 = time.perf_counter()
        x = self.preprocess(images)
        if times is not None:
            times["preprocess"] = time.perf_counter() - t0
        return self.run_arrays(x, wanted, times)

    def run_arrays(self, x, outputs=None, times=None):
        """Score preprocessed images (float32 [N, H, W, 3]); same result form and ``times`` as run()."""
        wanted = self.default_outputs if outputs is None else list(outputs)
        entries = [self.resolve(n) for n in wanted]
        t0 = time.perf_counter()
        values = {("featurizer", k): v for k, v in self.featurize(x).items()}
        t1 = time.perf_counter()
        if any(e.stage == "heads" for e in entries):
            feats = {k: v for (_, k), v in values.items()}
            values.update({("heads", k): v for k, v in self.run_heads(feats).items()})
        if times is not None:
            times.update(device=t1 - t0, heads=time.perf_counter() - t1)
        return {n: values[(e.stage, e.key)] for n, e in zip(wanted, entries)}
