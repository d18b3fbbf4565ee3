"""The conversion's one shared state (``ConversionState``, a JSON file between step processes), its log and its
constants; the steps (``steps``) and what runs them (``runner``) read it."""
from __future__ import annotations

import dataclasses
import json
import os
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..fpga.device.timing import DEFAULT_PRESET

OPSET = 17
STAGES = ("featurize", "heads")         # the saved model's stage signatures the converter turns into graphs
PURE_PYTHON_PROTOBUF = {"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
SMALL_MODEL_BYTES = 32 << 20            # weights under this: every step in one process (what a process keeps
                                        # grows with the weights; TensorFlow is imported once instead of twice)


def log(msg):
    """One timestamped line of the conversion's log (stdout is the operation's log file)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def strip_timestamp(line) -> str:
    """A log line without the timestamp ``log`` put in front of it."""
    if len(line) > 11 and line[0] == "[" and line[9:11] == "] ":
        return line[11:]
    return line


@dataclass
class ConversionState:
    """What the steps share. Plain values only: it is written to JSON when a step runs in its own process."""
    source_dir: str                               # the saved model folder (SavedModel + accel_model.json)
    work: str                                     # this conversion's scratch folder
    package_dir: str                              # where the package is written
    outputs: list[str]                            # the output names to serve, as given to the converter
    numeric_format: str
    block_size: typing.Optional[int] = None
    device: str = DEFAULT_PRESET                  # the device preset it is for (fpga.device.timing)
    source: dict = field(default_factory=dict)    # {"name", "version"} of the registered source, if any
    checks: bool = True                           # run the three checks (the converter always does)
    cache: str = ""                               # a folder for the fp32 graphs of this source ("" : no cache)
    stages: list[str] = field(default_factory=list)       # the saved model's stages this package needs
    frozen: dict = field(default_factory=dict)    # stage -> {"graph": path, "inputs": {tensor: key}, "outputs": ...}
    fp32: dict = field(default_factory=dict)      # stage -> fp32 ONNX path (the featurizer's after ``fold``)
    reference: str = ""                           # .npz of TensorFlow's outputs for the parity check
    cached_from: str = ""                         # the cache folder the fp32 graphs came from, if they did
    layers: list = field(default_factory=list)   # the quantized layers (fpga.device.graph.apply_format's records)
    parity: typing.Optional[dict] = None
    device_check: typing.Optional[dict] = None
    report: typing.Optional[dict] = None
    timings: list = field(default_factory=list)   # [step, seconds, peak RSS of its process in MB]

    def save(self, path):
        """Write the state as JSON (atomically)."""
        tmp = Path(f"{path}.tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=1))
        os.replace(tmp, path)
        return Path(path)

    @classmethod
    def load(cls, path):
        """The state a step wrote."""
        return cls(**json.loads(Path(path).read_text()))

    @property
    def metadata(self):
        """The saved model's typed accel_model.json."""
        from ..fpga.device import manifest
        return manifest.read(manifest.SavedModelMetadata, self.source_dir)


class StepFailed(RuntimeError):
    """A step's own process ended without finishing the step (killed, or an error it could not report)."""
