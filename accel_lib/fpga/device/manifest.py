"""THE owner of the package contracts: a saved model's ``accel_model.json`` and a package's ``manifest.json``.

Both are typed (dataclasses), read and written only here, and validated on read: an error names the file and the
bad field. A package is a chain of stages: host preprocessing -> the device featurizer (one ONNX graph, one or
more feature outputs) -> host heads (one ONNX graph: a classifier, or SSD's box and class heads) -> an optional
post-processing step that the client applies (e.g. SSD's box decoding and non-maximum suppression).
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

SAVED_MODEL_FILE = "accel_model.json"
SAVED_MODEL_FORMAT = "accel_lib.saved_model/2"
MANIFEST_FILE = "manifest.json"
PACKAGE_FORMAT = "accel_lib.accelonnx/4"
REPORT_FILE = "report.json"
REPORT_FORMAT = "accel_lib.report/1"
DEVICE_FILE = "device.onnx"
HEADS_FILE = "heads.onnx"
STAGES = ("preprocess", "featurizer", "heads")     # the chain, in order
WHERE = ("host", "device")
KINDS = ("", "features", "probabilities", "class_logits", "box_offsets")
CLASS_SCORES = ("probabilities", "class_logits")     # kinds whose argmax is a class (top-1 agreement)


class ManifestError(ValueError):
    """A contract file that is missing, of another version, or has a bad field (the message names it)."""


@dataclass
class Tensor:
    """One named tensor of a model: the article's name, the key its stage's graph uses, shape and dtype."""
    name: str
    key: str
    shape: list[int]
    dtype: str = "float32"
    aliases: list[str] = field(default_factory=list)
    stage: str = ""          # for outputs: "featurizer" or "heads", the stage that computes it
    kind: str = ""           # what it holds: one of KINDS (empty for the input)

    @property
    def names(self):
        """The name and its aliases."""
        return [self.name, *self.aliases]


@dataclass
class Stage:
    """One stage of the chain; ``inputs`` / ``outputs`` are the keys of the tensors it reads and writes."""
    name: str
    where: str
    file: typing.Optional[str] = None
    params: dict = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    numeric_format: typing.Optional[str] = None
    block_size: typing.Optional[int] = None
    format: typing.Optional[str] = None
    quantized_layers: int = 0


@dataclass
class SavedModelMetadata:
    """What ``model_graph.save()`` writes beside the SavedModel: its stages' signatures and tensor names."""
    model_class: str
    family: str
    version: str
    weights: str
    quantized: bool
    default_numeric_format: str
    input: Tensor
    preprocessing: dict
    features: list[Tensor]
    outputs: list[Tensor]
    signatures: dict
    labels: typing.Optional[str] = None         # a label set shipped with accel_lib ("imagenet", "voc")
    class_names: list[str] = field(default_factory=list)     # or the classes of your own head, in index order
    postprocess: typing.Optional[dict] = None
    format: str = SAVED_MODEL_FORMAT

    FILE: typing.ClassVar[str] = SAVED_MODEL_FILE
    FORMAT: typing.ClassVar[str] = SAVED_MODEL_FORMAT
    HOW: typing.ClassVar[str] = "save the model again with model_graph.save(...) from this accel_lib"

    def validate(self):
        _check_keys(self.FILE, "features", self.features)
        _check_keys(self.FILE, "outputs", self.outputs)
        for key in ("serving", "featurize", "heads"):
            if not isinstance(self.signatures.get(key), str):
                raise ManifestError(f"{self.FILE}: field 'signatures.{key}' must name a SavedModel signature.")

    def tensors(self):
        """Every output the model can expose (features, then heads' outputs), in order."""
        return [*self.features, *self.outputs]

    def by_name(self) -> dict:
        """Every name and alias the model answers to, mapped to its tensor."""
        return {n: t for t in self.tensors() for n in t.names}

    def default_output_names(self):
        """The article's default output names: every head output, in order."""
        return [o.name for o in self.outputs]


@dataclass
class Parity:
    """The fp32 package against the source model (TensorFlow), as the converter measured it."""
    images: int
    max_abs_diff: float
    top1_agreement: float
    relative_error: dict          # output name -> relative L2 error of its stage on the same inputs
    max_relative_error: float
    tolerance: float              # the bar a conversion must pass
    measured: str                 # what was compared, in words

    def validate(self):
        for name, v in self.relative_error.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise ManifestError(f"parity: field 'relative_error.{name}' must be a number, got {v!r}.")


@dataclass
class DeviceCheck:
    """The device graph (ONNX Runtime, format in the graph) against the numpy reference device: judged layer by
    layer on the reference's own input; the whole network run free is reported (conversion/checks.py)."""
    images: int
    layers: int                   # quantized layers judged
    values: int                   # quantized input values compared
    boundary_values: int          # of those, one step of the format apart (an input on a rounding boundary)
    boundary_fraction: float
    worst_layer: str              # the layer that used the largest share of its bound
    bound_used: float             # that share: the largest |device - reference| / bound of any layer output (<= 1)
    max_rel_diff: float           # the whole network run free: largest difference / largest feature (reported)
    top1_agreement: float         # the whole network run free, through the heads (reported)
    measured: str

    def validate(self):
        if not 0 <= self.boundary_fraction <= 1:
            raise ManifestError(f"device_check: field 'boundary_fraction' must be a fraction from 0 to 1, got "
                                f"{self.boundary_fraction!r}.")


@dataclass
class LayerReport:
    """One quantized layer of the report: SQNR of its weights and outputs, log2 |value| percentiles (0/25/50/75/100,
    None where every value is zero) in fp32 and on the device."""
    name: str
    op: str
    channels: int
    weight_sqnr_db: float
    output_sqnr_db: float
    weights_fp32_log2: typing.Optional[list[float]] = None
    weights_device_log2: typing.Optional[list[float]] = None
    outputs_fp32_log2: typing.Optional[list[float]] = None
    outputs_device_log2: typing.Optional[list[float]] = None


@dataclass
class QuantizationReport:
    """``report.json``: a narrow format against fp32 on the same package, layer by layer (measured)."""
    numeric_format: str
    images: int
    top1_agreement: float
    top5_overlap: float
    feature_sqnr_db: float
    layers: list[LayerReport]
    measured: str
    weights: str = ""
    random_weights: bool = False
    format: str = REPORT_FORMAT

    FILE: typing.ClassVar[str] = REPORT_FILE
    FORMAT: typing.ClassVar[str] = REPORT_FORMAT
    HOW: typing.ClassVar[str] = "convert the source model again with AccelOnnxConverter.convert_tf_model(...)"

    def validate(self):
        for r, name in ((self.top1_agreement, "top1_agreement"), (self.top5_overlap, "top5_overlap")):
            if not 0 <= r <= 1:
                raise ManifestError(f"{self.FILE}: field '{name}' must be a fraction from 0 to 1, got {r!r}.")

    def summary(self) -> dict:
        """The numbers a conversion's log and a model's properties quote."""
        return {"top1_agreement": self.top1_agreement, "top5_overlap": self.top5_overlap,
                "feature_sqnr_db": self.feature_sqnr_db, "images": self.images}


@dataclass
class PackageManifest:
    """The accelerator package: its stages, every tensor they compute, the outputs it serves, and the checks the
    converter measured."""
    source_model: dict
    model_class: str
    model_version: str
    weights: str
    numeric_format: str
    input: Tensor
    tensors: list[Tensor]         # everything the stages compute (features, then the heads' outputs)
    outputs: list[str]            # the names it serves: those given at conversion, in that order
    stages: list[Stage]
    tools: dict
    labels: typing.Optional[str] = None
    class_names: list[str] = field(default_factory=list)
    postprocess: typing.Optional[dict] = None
    parity: typing.Optional[Parity] = None
    device_check: typing.Optional[DeviceCheck] = None
    report: typing.Optional[str] = None           # the QuantizationReport's file, for a narrow format
    device_preset: typing.Optional[str] = None    # the device it was converted for (timing.PRESETS)
    timing: typing.Optional[str] = None           # its timing report's file (modeled; timing.REPORT_FILE)
    format: str = PACKAGE_FORMAT

    FILE: typing.ClassVar[str] = MANIFEST_FILE
    FORMAT: typing.ClassVar[str] = PACKAGE_FORMAT
    HOW: typing.ClassVar[str] = "convert the source model again with AccelOnnxConverter.convert_tf_model(...)"

    def validate(self):
        names = [s.name for s in self.stages]
        if names not in (list(STAGES), list(STAGES[:2])):
            raise ManifestError(f"{self.FILE}: field 'stages' must be {list(STAGES)} (heads optional), got {names}.")
        for i, s in enumerate(self.stages):
            if s.where not in WHERE:
                raise ManifestError(f"{self.FILE}: field 'stages[{i}].where' must be one of {WHERE}, got {s.where!r}.")
            if s.name != "preprocess" and not s.file:
                raise ManifestError(f"{self.FILE}: field 'stages[{i}].file' is empty; stage {s.name!r} needs a graph.")
        keys = {s.name: set(s.outputs) for s in self.stages}
        for i, t in enumerate(self.tensors):
            if t.stage not in keys or t.key not in keys[t.stage]:
                raise ManifestError(f"{self.FILE}: field 'tensors[{i}]' ({t.name!r}) names key {t.key!r} of stage "
                                    f"{t.stage!r}, which that stage does not produce.")
        _check_keys(self.FILE, "tensors", self.tensors)
        known = {t.name for t in self.tensors}
        for i, n in enumerate(self.outputs):
            if n not in known:
                raise ManifestError(f"{self.FILE}: field 'outputs[{i}]' is {n!r}, which is not one of 'tensors'.")
        if not self.outputs:
            raise ManifestError(f"{self.FILE}: field 'outputs' is empty; a package serves at least one output.")
        for check in (self.parity, self.device_check):
            if check is not None:
                check.validate()

    def stage(self, name):
        """The stage called ``name`` (None if the package has none)."""
        return next((s for s in self.stages if s.name == name), None)

    @property
    def device(self) -> Stage:
        """The featurizer stage, which runs on the (simulated) FPGA."""
        return self.stage("featurizer")

    def served(self) -> list[Tensor]:
        """The tensors the package serves, in the order given at conversion."""
        by = {t.name: t for t in self.tensors}
        return [by[n] for n in self.outputs]

    def heads_outputs(self) -> list[Tensor]:
        """The tensors the heads stage computes."""
        return [t for t in self.tensors if t.stage == "heads"]


def _check_keys(file, what, tensors):
    seen = {}
    for i, t in enumerate(tensors):
        if t.kind not in KINDS:
            raise ManifestError(f"{file}: field '{what}[{i}].kind' must be one of {KINDS}, got {t.kind!r}.")
        for n in t.names:
            if n in seen:
                raise ManifestError(f"{file}: field '{what}[{i}]' repeats the name {n!r} of '{what}[{seen[n]}]'.")
            seen[n] = i


# -- reading and writing ------------------------------------------------------------------------------
def _convert(tp, value, where, file):
    """``value`` checked against type ``tp`` (and built into dataclasses); ManifestError names ``where``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:                              # Optional[X]
        if value is None:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, where, file)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ManifestError(f"{file}: field '{where}' must be an object, got {type(value).__name__}.")
        return _build(tp, value, where, file)
    if origin is list:
        if not isinstance(value, list):
            raise ManifestError(f"{file}: field '{where}' must be a list, got {type(value).__name__}.")
        return [_convert(args[0], v, f"{where}[{i}]", file) for i, v in enumerate(value)]
    ok = {str: isinstance(value, str), dict: isinstance(value, dict), bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool)}[tp]
    if not ok:
        raise ManifestError(f"{file}: field '{where}' must be {tp.__name__}, got {value!r}.")
    return value


def _build(cls, data, where, file):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ManifestError(f"{file}: unknown field '{_join(where, unknown[0])}'.")
    kw = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ManifestError(f"{file}: required field '{_join(where, name)}' is missing.")
            continue
        kw[name] = _convert(hints[name], data[name], _join(where, name), file)
    return cls(**kw)


def _join(where, name):
    return f"{where}.{name}" if where else name


def loads(cls, text, source=""):
    """Parse and validate a contract file's text as ``cls`` (a dataclass with FILE, FORMAT, HOW and validate())."""
    file = source or cls.FILE
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ManifestError(f"{file} is not valid JSON ({e}).") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{file} must hold a JSON object.")
    got = data.get("format")
    if got != cls.FORMAT:
        raise ManifestError(f"{file} has format {got!r}; this accel_lib reads {cls.FORMAT!r}: {cls.HOW}.")
    obj = _build(cls, data, "", file)
    obj.validate()
    return obj


def build(cls, data: dict, source=""):
    """A typed part of a contract (e.g. Parity) from plain data, validated; ManifestError names the bad field."""
    obj = _build(cls, data, "", source or cls.__name__)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def read(cls, folder):
    """Read ``cls.FILE`` from ``folder`` (ManifestError if it is absent or invalid)."""
    p = Path(folder) / cls.FILE
    if not p.is_file():
        raise ManifestError(f"{folder} has no {cls.FILE}: {cls.HOW}.")
    return loads(cls, p.read_text(), str(p))


def dumps(obj) -> str:
    """The contract as JSON text (validated first)."""
    obj.validate()
    return json.dumps(dataclasses.asdict(obj), indent=2) + "\n"


def write(obj, folder, mode=0o644):
    """Write the contract into ``folder`` as its FILE, atomically (readers never see half a file), created with
    ``mode`` (0o600 for one that holds secrets: never readable by others, not even for a moment); returns the path."""
    import os
    p = Path(folder) / obj.FILE
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    text = dumps(obj).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)                       # an earlier tmp file of this pid keeps its old mode otherwise
    with os.fdopen(fd, "wb") as f:
        f.write(text)
    os.replace(tmp, p)
    return p
