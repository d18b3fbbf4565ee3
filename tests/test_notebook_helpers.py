"""The helpers notebook cells call: the top-k table and the upload-and-score widget, driven with image bytes."""
import datetime

import numpy as np
import pytest

from accel_lib import notebook, samples
from accel_lib.client import load_labels
from accel_lib.fpga.device.package import AcceleratorPackage

SOFTMAX = "classifier/resnet_v1_50/predictions/Softmax:0"


def test_top_k_is_sorted_and_checks_the_label_count():
    probs = np.array([0.1, 0.5, 0.05, 0.3, 0.05])
    assert notebook.top_k(probs, list("abcde"), k=3) == [(1, "b", 0.5), (3, "d", 0.3), (0, "a", 0.1)]
    with pytest.raises(ValueError, match="5 scores but 4 labels"):
        notebook.top_k(probs, list("abcd"))


def test_upload_widget_scores_what_is_picked(converted):
    import matplotlib
    matplotlib.use("Agg")
    ws, src, op = converted
    pkg = AcceleratorPackage(op.result.download(ws.scratch("widget-test"), exist_ok=True))
    labels = load_labels("imagenet")
    scorer = notebook.UploadScorer(lambda data: pkg.run([data], [SOFTMAX])[SOFTMAX][0], labels, note="random weights")
    data = samples.sample_images(1, seed=11)[0]
    ref = pkg.run([data], [SOFTMAX])[SOFTMAX][0]

    scorer.upload.value = ({"name": "cat.jpg", "type": "image/jpeg", "size": len(data), "content": memoryview(data),
                            "last_modified": datetime.datetime.now(datetime.timezone.utc)},)   # as a browser sends it
    name, top = scorer.last
    assert name == "cat.jpg" and len(top) == 5
    assert [i for i, _, _ in top] == list(np.argsort(-ref)[:5]) and top[0][1] == labels[int(ref.argmax())]
    # the chart is the widget's output, set by the kernel (no capture context: see UploadScorer's docstring)
    [shown] = scorer.output.outputs
    assert shown["output_type"] == "display_data" and "image/png" in shown["data"]

    assert scorer.on_upload(b"this is not a picture", "notes.txt") is None     # shown, not raised
    assert scorer.last == ("notes.txt", None)
    [shown] = scorer.output.outputs
    assert shown["output_type"] == "stream" and "notes.txt: could not be scored" in shown["text"]
    assert scorer.on_upload(data, "again.jpg")[0][0] == int(ref.argmax())     # and the widget still works


def test_names_the_notebooks_use():
    from accel_lib.image import image_name
    from accel_lib.model import converted_name, of_family
    assert converted_name("resnet50", 3) == "resnet50.3.accelonnx" and image_name("resnet50") == "resnet50-image"
    assert of_family("resnet50", "resnet50") and of_family("resnet50", "resnet50.12.accelonnx")
    for other in ("resnet50-image", "resnet50x.1.accelonnx", "resnet50.x.accelonnx", "resnet5", "resnet50.1"):
        assert not of_family("resnet50", other), other


def test_clean_up_deletes_in_order_and_twice_is_harmless(ws, tmp_path):
    from accel_lib import AksCompute, ComputeTarget, Model
    from accel_lib.cleanup import clean_up, what_is_left
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights")
    for name in ("m", "m", "m.1.accelonnx", "m2", "mx.1.accelonnx"):
        Model.register(ws, f, name)
    ComputeTarget.create(ws, "c1", AksCompute.provisioning_configuration(agent_count=1))
    gone = clean_up(ws, services=["nope"], computes=["c1"], images=["nope-image"], models=["m"])
    assert gone == {"services": [], "computes": ["c1"], "images": [], "models": ["m.1.accelonnx:1", "m:1", "m:2"]}
    assert what_is_left(ws) == {"services": [], "computes": [], "images": [], "models": ["m2:1", "mx.1.accelonnx:1"]}
    assert clean_up(ws, computes=["c1"], models=["m"]) == {"services": [], "computes": [], "images": [], "models": []}


def test_findings_say_whether_the_narrower_shared_exponent_ever_changed_an_output():
    from accel_lib.fpga.device import formats

    def result(fmt, block, probs):
        f = formats.get(fmt, block)
        return notebook.FormatResult(format=fmt, block=block, bits=1 + f.mantissa_bits + f.exponent_bits / block,
                                     probs=np.asarray(probs, np.float32), report=None, model=None, accuracy=0.5)
    same = [[0.7, 0.3], [0.2, 0.8]]
    fp32 = notebook.FormatResult(format="fp32", block=None, bits=32, probs=np.float32(same), report=None, model=None,
                                 accuracy=0.5)
    lines = notebook.format_findings([fp32, result("msfp12", 16, same), result("ms-fp9", 16, same)])
    line = next(l for l in lines if "only the shared exponent differs" in l)
    assert "msfp12 /16 and ms-fp9 /16" in line and "identical on all 2 pictures" in line and "2^-15 to 2^16" in line
    assert "saves 0.19 bits per value" in line
    lines = notebook.format_findings([fp32, result("msfp12", 16, same), result("ms-fp9", 16, [[0.7, 0.3], [0.3, 0.7]])])
    assert any("differ on 1 of 2 pictures" in l for l in lines)
    lines = notebook.format_findings([fp32, result("msfp12", 16, same), result("ms-fp9", 128, same)])
    assert not any("only the shared exponent differs" in l for l in lines)      # other blocks: not comparable
