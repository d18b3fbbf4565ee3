"""A request judged before it is decoded: protobuf on the wire (accel_lib.fpga.replica.wire), JSON by its text
(oip.json_cost). Real requests pass and decode as before, floods of tiny elements are refused at once, and the
estimate bounds what protobuf's own decoder really takes."""
import subprocess
import sys
import time

import numpy as np
import pytest

from accel_lib.fpga.replica import oip, tensors, wire
from accel_lib.fpga.replica.protos import inference_pb2, serving_pb2, tensorflow_pb2
from helpers import length_delimited as _ld

PREDICT = serving_pb2.PredictRequest
INFER = inference_pb2.ModelInferRequest
CAPS = {**tensors.wire_caps(64), **oip.wire_caps(64)}


def _input(tensor: bytes) -> bytes:
    """A PredictRequest whose input "images" is the serialized TensorProto ``tensor``."""
    return _ld(b"\x12", _ld(b"\x0a", b"images") + _ld(b"\x12", tensor))


def test_real_requests_pass_and_the_estimate_follows_their_size():
    req = PREDICT()
    req.model_spec.name = "svc"
    req.inputs["images"].CopyFrom(tensors.to_proto([b"j" * 100_000] * 3, tensorflow_pb2.TensorProto))
    req.output_filter.append("classifier/output")
    raw = req.SerializeToString()
    assert len(raw) <= wire.check(raw, PREDICT.DESCRIPTOR, CAPS) < len(raw) + 4096
    arr = np.zeros((1, 224, 224, 3), np.float32)
    floats = PREDICT()
    floats.inputs["images"].CopyFrom(tensors.to_proto(arr, tensorflow_pb2.TensorProto))
    raw = floats.SerializeToString()
    assert wire.check(raw, PREDICT.DESCRIPTOR, CAPS) < len(raw) + 4096
    infer = INFER(model_name="svc", inputs=[INFER.InferInputTensor(name="images", datatype="BYTES", shape=[2])],
                  raw_input_contents=[oip.join_bytes([b"a" * 5000, b"b" * 5000])])
    raw = infer.SerializeToString()
    assert wire.check(raw, INFER.DESCRIPTOR, CAPS) < len(raw) + 4096


def test_unpacked_values_are_read_as_a_run():
    """A parser must accept repeated floats unpacked (a tag before each value): 150,528 of them pass in one step
    and decode to the same tensor."""
    values = np.arange(224 * 224 * 3, dtype=np.float32)
    raw = _input(b"\x08\x01" + b"".join(b"\x2d" + v.tobytes() for v in values))
    t0 = time.perf_counter()
    estimate = wire.check(raw, PREDICT.DESCRIPTOR, CAPS)
    assert time.perf_counter() - t0 < 0.5
    assert estimate <= wire.GROWTH * values.nbytes + 4096
    assert np.array_equal(PREDICT.FromString(raw).inputs["images"].float_val, values)


@pytest.mark.parametrize("what, raw, says", [
    ("15 million empty strings", _input(b"\x08\x07" + b"\x42\x00" * 15_000_000), "max_images=64"),
    ("15 million output names", b"\x1a\x00" * 15_000_000, "more than 1,024 field occurrences"),
    ("a million map entries", b"\x12\x00" * 1_000_000, "more than 1,024 field occurrences"),
    ("a million BYTES elements", _ld(b"\x2a", _ld(b"\x2a", b"\x42\x00" * 1_000_000)), "max_images=64"),
])
def test_floods_of_tiny_elements_are_refused_at_once(what, raw, says):
    desc = INFER.DESCRIPTOR if "BYTES" in what else PREDICT.DESCRIPTOR
    t0 = time.perf_counter()
    with pytest.raises(wire.WireError) as e:
        wire.check(raw, desc, CAPS, budget=256 << 20)
    assert time.perf_counter() - t0 < 0.5, what
    assert e.value.code == "RESOURCE_EXHAUSTED" and says in str(e.value), (what, str(e.value))


def test_packed_varints_are_counted_as_decoded():
    """64 MB of one-byte int64 values decode to 8 bytes each: refused against the budget, before decoding."""
    raw = _input(b"\x08\x09" + _ld(b"\x52", b"\x01" * (64 << 20)))
    with pytest.raises(wire.WireError) as e:
        wire.check(raw, PREDICT.DESCRIPTOR, CAPS, budget=256 << 20)
    assert e.value.code == "RESOURCE_EXHAUSTED" and "max_request_mb" in str(e.value)


@pytest.mark.parametrize("raw, says", [(b"\x12\x05ab", "runs past its end"), (b"\x0b\x0c", "groups"),
                                       (b"\x10\xff\xff", "varint"), (b"\x00\x01", "field number 0")])
def test_malformed_messages_are_invalid(raw, says):
    with pytest.raises(wire.WireError) as e:
        wire.check(raw, PREDICT.DESCRIPTOR, CAPS)
    assert e.value.code == "INVALID_ARGUMENT" and says in str(e.value)


def test_one_field_read_alone_reads_as_the_whole_would():
    """Occurrences of a message field merge (the protobuf rule): ``only`` keeps them all, in order."""
    first, second = PREDICT(), PREDICT()
    first.model_spec.name = "a"
    first.model_spec.signature_name = "s"
    second.model_spec.name = "b"
    second.inputs["images"].CopyFrom(tensors.to_proto([b"x"] * 64, tensorflow_pb2.TensorProto))
    raw = first.SerializeToString() + second.SerializeToString()
    alone = PREDICT.FromString(wire.only(raw, PREDICT.DESCRIPTOR, "model_spec"))
    assert alone.model_spec == PREDICT.FromString(raw).model_spec and not alone.inputs
    assert alone.model_spec.name == "b" and alone.model_spec.signature_name == "s"
    with pytest.raises(wire.WireError):
        wire.only(b"\x1a\x00" * 2000, PREDICT.DESCRIPTOR, "model_spec")


_PEAK = """
import sys
from accel_lib.fpga.replica import wire
from accel_lib.fpga.replica.protos import inference_pb2, serving_pb2
def kb(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))
cls = {"PredictRequest": serving_pb2.PredictRequest, "ModelInferRequest": inference_pb2.ModelInferRequest}[sys.argv[1]]
raw = open(sys.argv[2], "rb").read()
wire.OTHERS = 1 << 40
estimate = wire.check(raw, cls.DESCRIPTOR, {"TensorProto.string_val": (1 << 40, ""),
                                            "InferTensorContents.bytes_contents": (1 << 40, "")})
open("/proc/self/clear_refs", "w").write("5")      # the peak (VmHWM) starts again from what is resident now
base = kb("VmRSS")
message = cls.FromString(raw)
print(estimate, (kb("VmHWM") - base) * 1024)
"""
N = (1 << 20) + 1            # just past a power of two: a repeated field's array has just doubled
SHAPES = {"empty strings": ("PredictRequest", _input(b"\x08\x07" + b"\x42\x00" * N)),
          "1 KB strings": ("PredictRequest", _input(b"\x08\x07" + _ld(b"\x42", b"x" * 1000) * (N // 50))),
          "output names": ("PredictRequest", b"\x1a\x01o" * N),
          "shape dims": ("PredictRequest", _input(_ld(b"\x12", b"\x12\x00" * N))),
          "map entries": ("PredictRequest", b"\x12\x00" * N),
          "unpacked int64": ("PredictRequest", _input(b"\x50\x01" * N)),
          "packed int64": ("PredictRequest", _input(_ld(b"\x52", b"\x01" * N))),
          "unpacked floats": ("PredictRequest", _input(b"\x2d\x01\x00\x00\x00" * N)),
          "inputs": ("ModelInferRequest", b"\x2a\x00" * N),
          "BYTES elements": ("ModelInferRequest", _ld(b"\x2a", _ld(b"\x2a", b"\x42\x00" * N)))}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_estimate_bounds_the_decoders_real_peak(shape, tmp_path):
    """What ``check`` counts is at least what protobuf's decoder takes (Linux's VmHWM, reset just before), within
    a page table's worth of slack, for each shape of message an attacker could repeat."""
    kind, raw = SHAPES[shape]
    path = tmp_path / "message.bin"
    path.write_bytes(raw)
    r = subprocess.run([sys.executable, "-c", _PEAK, kind, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    estimate, peak = map(int, r.stdout.split()[-2:])
    assert peak <= estimate + (1 << 20), (shape, peak / N, estimate / N)


_JSON_PEAK = """
import json, sys
from accel_lib.fpga.replica import oip
def kb(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))
text = open(sys.argv[1], "rb").read()
open("/proc/self/clear_refs", "w").write("5")
base = kb("VmRSS")
doc = json.loads(text)
print(oip.json_cost(text), (kb("VmHWM") - base) * 1024)
"""
M = 500_000
JSON_SHAPES = {"empty arrays": "[" + ",".join(["[]"] * M) + "]",
               "empty objects": '{"instances": [' + ", ".join(["{}"] * M) + "]}",
               "short strings": "[" + ",".join(['"ab"'] * M) + "]",
               "distinct strings": "[" + ",".join(f'"{i:x}"' for i in range(M)) + "]",
               "wide strings": "[" + ",".join(['"\\u00e9\\u4e00"'] * M) + "]",
               "floats": "[" + ", ".join(["1.5"] * M) + "]",
               "big integers": "[" + ",".join(["123456789012"] * M) + "]",
               "one-value arrays": "[" + ",".join(["[0]"] * M) + "]",
               "one-member objects": "[" + ",".join(f'{{"{i:x}": 0}}' for i in range(M)) + "]",
               "one large object": "{" + ",".join(f'"{i:x}":0' for i in range(M)) + "}",
               "non-ASCII text": "[" + ",".join(['"abcdefgh\U0001F600"'] * M) + "]",
               "base64 images": '{"instances": [' + ",".join(['{"b64": "' + "QUJD" * 25_000 + '"}'] * 64) + "]}"}


@pytest.mark.parametrize("shape", sorted(JSON_SHAPES))
def test_the_json_estimate_bounds_the_parsers_real_peak(shape, tmp_path):
    """oip.json_cost, counted on the text, is at least what json.loads takes (VmHWM, reset just before)."""
    path = tmp_path / "body.json"
    path.write_text(JSON_SHAPES[shape], encoding="utf-8")
    r = subprocess.run([sys.executable, "-c", _JSON_PEAK, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    estimate, peak = map(int, r.stdout.split()[-2:])
    assert peak <= estimate + (1 << 20), (shape, peak / M, estimate / M)


def test_a_json_body_is_refused_before_parsing_when_it_would_pass_the_budget():
    body = b'{"instances": [' + b",".join([b"[]"] * 7_000_000) + b"]}"       # 21 MB, about 500 MB once parsed
    with pytest.raises(oip.ProtocolError) as e:
        oip.load_json(body, "the body", max_bytes=256 << 20)
    assert e.value.code == "RESOURCE_EXHAUSTED" and "max_request_mb=256" in str(e.value)
    images = JSON_SHAPES["base64 images"].encode()                              # 64 pictures of 75 KB: 6.4 MB
    assert oip.json_cost(images) < 2.02 * len(images) + 64 * 1024
