"""Detection (notebook 07 at its defaults): the time to train QuantizedSsdSmall on the generated scenes (goal: the
backbone and the heads' fine-tuning together within 90 s on 2 cores), and the held-out mAP@0.5 it reaches with its
backbone in fp32 and as the device runs it (ms-fp9), side by side on the same scenes and heads.

Run alone: `ACCEL_LIB_OFFLINE=1 .venv/bin/python benchmarks/detection.py`; `benchmarks/run.py` runs it too.
"""
import json
import os
import sys
import tempfile
import time

GOAL_SECONDS = 90


def run(train_scenes=256, test_scenes=32, epochs=10, head_epochs=4):
    """Train as notebook 07 does; returns its times and the held-out mAP in fp32 and on the device."""
    import numpy as np

    from accel_lib import samples
    from accel_lib.fpga.device.host import preprocess
    from accel_lib.models import QuantizedSsdSmall, detection, ssd, transfer
    work = tempfile.mkdtemp(prefix="accel-bench-ssd-")
    train_images, train_truths = samples.labelled_scenes(train_scenes, seed=1)
    test_images, test_truths = samples.labelled_scenes(test_scenes, seed=2)
    m = QuantizedSsdSmall(work, weights="random", class_names=samples.SCENE_CLASSES)
    t0 = time.perf_counter()
    detection.train(m, train_images, train_truths, epochs=epochs)
    t1 = time.perf_counter()
    device = transfer.DeviceFeaturizer(m, os.path.join(work, "featurizer"))
    features = device(train_images)
    t2 = time.perf_counter()
    detection.fine_tune_heads(m, features, train_truths, epochs=head_epochs)
    t3 = time.perf_counter()
    head = m.get_default_classifier()
    x = preprocess(test_images, order="RGB", output_height=300, output_width=300, preserve_aspect_ratio=False)
    fp32 = [np.asarray(o) for o in head(m.featurizer(x, training=False), training=False)]
    on_device = [np.asarray(o) for o in head(device(test_images), training=False)]
    maps = {name: ssd.average_precision(ssd.postprocess(outs, select_threshold=0.05), test_truths, m.num_classes)[1]
            for name, outs in (("fp32", fp32), (device.numeric_format, on_device))}
    return {"train_scenes": train_scenes, "epochs": epochs, "head_epochs": head_epochs, "test_scenes": test_scenes,
            "backbone_s": round(t1 - t0, 1), "device_features_s": round(t2 - t1, 1), "heads_s": round(t3 - t2, 1),
            "training_s": round((t1 - t0) + (t3 - t2), 1), "map": {k: round(v, 3) for k, v in maps.items()}}


def report(r, machine):
    """The markdown table of one run."""
    fmt = [k for k in r["map"] if k != "fp32"][0]
    return "\n".join([
        f"Detection training, QuantizedSsdSmall, {r['train_scenes']} generated scenes (+ mirrored), "
        f"{r['epochs']} + {r['head_epochs']} epochs, one run ({machine})", "",
        "| backbone s | device features s | heads s | training s (goal) | held-out mAP@0.5 fp32 | "
        f"held-out mAP@0.5 {fmt} |", "|---|---|---|---|---|---|",
        f"| {r['backbone_s']} | {r['device_features_s']} | {r['heads_s']} | {r['training_s']} (<= {GOAL_SECONDS}) | "
        f"{r['map']['fp32']:.3f} | {r['map'][fmt]:.3f} |", "",
        f"mAP over {r['test_scenes']} held-out scenes, measured on generated scenes (nothing is claimed for VOC); "
        "the same heads (fine-tuned on device features) in both columns."])


if __name__ == "__main__":
    from accel_lib.machine import describe
    result = run()
    print(report(result, describe()))
    os.makedirs("build/bench", exist_ok=True)
    with open("build/bench/detection.json", "w") as f:
        json.dump({"machine": describe(), "detection": result}, f, indent=2)
    sys.exit(0 if result["training_s"] <= GOAL_SECONDS else 1)
