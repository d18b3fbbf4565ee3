"""The device's timing model: checked against intel/fpga-npu's committed RTL-simulation baseline, its own simulator's
constants, the published Brainwave peak, and a small graph worked by hand."""
import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from accel_lib.fpga.device import npu, timing



def _benchmark(name):
    """A module of benchmarks/ by its file (the folder is not put on sys.path: its profile.py would shadow the
    standard library's)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" /
                                                  f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


fpga_npu = _benchmark("fpga_npu")


def test_every_fpga_npu_workload_is_within_the_bound_of_its_rtl_simulation():
    rows = fpga_npu.compare()
    assert len(rows) == 19
    missed = {r["workload"]: round(r["ours_err"], 3) for r in rows if abs(r["ours_err"]) > fpga_npu.BOUND}
    assert not missed, f"past {fpga_npu.BOUND:.0%} of the RTL baseline: {missed}"
    # and closer than that project's own performance simulator, workload by workload on the whole
    assert sum(abs(r["ours_err"]) for r in rows) < sum(abs(r["perf_err"]) for r in rows)


def test_with_its_simulators_constants_the_model_gives_its_simulators_numbers():
    """The structure, apart from the RTL's latencies: fpga-npu's performance simulator's own round trip (71 cycles,
    simulator/inc/defines.h) and start (2) give its committed perf_baseline back."""
    spec = dataclasses.replace(timing.preset("fpga-npu"), round_trip=71, mfu_round_trip=31, start=2)
    rows = fpga_npu.compare(npu.Npu(spec))
    worst = max(abs(r["ours"] / r["perf"] - 1) for r in rows)
    assert worst < 0.10, worst
    gemv = [r for r in rows if "gemv" in r["workload"]]
    assert all(abs(r["ours"] / r["perf"] - 1) < 0.005 for r in gemv)     # one instruction: exact


def test_presets_reproduce_their_published_arithmetic():
    bw = timing.preset("brainwave-s10")
    assert bw.macs == 96_000                                   # ISCA 2018
    assert bw.peak_tops() == pytest.approx(48.0)               # 96,000 x 2 x 250 MHz
    assert bw.peak_tops() > 39.5                               # the effective TFLOPS published at batch 1
    fn = timing.preset("fpga-npu")
    assert fn.tiles * fn.engines * fn.lanes * fn.batch * fn.cores * 2 * 300e6 / 1e12 == pytest.approx(40.32)
    a10 = timing.preset("arria10-pb6")
    assert a10.macs_in("ms-fp9") <= a10.dsps * timing.macs_per_dsp("ms-fp9")    # it fits the part's DSPs
    with pytest.raises(ValueError, match="unknown device preset 'x'.*arria10-pb6"):
        timing.preset("x")


def test_dsp_packing_follows_the_product_width():
    assert [timing.macs_per_dsp(f) for f in ("fp32", "msfp16", "ms-fp9", "ms-fp8", "mxfp4")] == [1, 2, 6, 8, 8]
    assert timing.multiplier_width("mxfp8-e4m3") == 4 and timing.multiplier_width("mxint8") == 8


def test_tile_cycles():
    assert timing.tile_cycles(128, 128, lanes=128, engines=12) == 11            # 11 row groups, one word each
    assert timing.tile_cycles(13, 129, lanes=128, engines=12, vectors=3, fill=5) == 3 * 2 * 2 + 5


def _small_graph():
    """images [N, 3, 8, 8] -> Conv 3x3 (16) -> Relu -> MaxPool 2 -> Flatten -> Gemm (256 -> 10)."""
    import onnx
    from onnx import TensorProto
    from onnx import helper as h
    from onnx import numpy_helper as nh
    rng = np.random.default_rng(0)
    w = nh.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w")
    fc = nh.from_array(rng.standard_normal((256, 10)).astype(np.float32), "fc")
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c"], ["r"], name="relu"),
             h.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("Flatten", ["p"], ["f"], name="flat"),
             h.make_node("MatMul", ["f", "fc"], ["y"], name="dense")]
    g = h.make_graph(nodes, "small", [h.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], [w, fc])
    return onnx.helper.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_a_small_graph_worked_by_hand():
    spec = dataclasses.replace(timing.preset("arria10-pb6"), tiles=2, engines=4, lanes=8)
    rep = timing.analyze(_small_graph(), spec, "ms-fp9", input_bytes=3 * 64 * 4, output_bytes=40)
    by = {r["name"]: r for r in rep["layers"]}
    assert [r["unit"] for r in rep["layers"]] == ["mvu", "chained", "mfu", "none", "mvu"]
    # conv: 16 rows, 27 columns, 64 pixels: ceil(16/4) row groups x ceil(ceil(27/8)/2) words per tile
    assert by["conv"]["compute"] == 64 * 4 * 2 and by["conv"]["macs"] == 16 * 27 * 64
    assert by["dense"]["compute"] == 1 * math.ceil(10 / 4) * math.ceil(math.ceil(256 / 8) / 2)
    assert by["pool"]["compute"] == math.ceil(16 * 8 * 8 / (8 * spec.mfus))    # the values it reads
    assert by["relu"]["cycles"] == 0                                            # chained to the conv
    net = rep["network"]
    assert net["cycles"] == sum(r["cycles"] for r in rep["layers"]) and net["bottleneck"] == "conv"
    assert net["weights_pinned"] and rep["modeled"] is True
    assert timing.seconds(rep, 1) == pytest.approx(net["latency_s"])
    per_image = sum(r["compute"] for r in rep["layers"]) / (spec.clock_mhz * 1e6)
    assert timing.seconds(rep, 8) - timing.seconds(rep, 7) == pytest.approx(
        per_image + (3 * 64 * 4 + 40) / (spec.link_gbps * 1e9))


def test_weights_past_the_chip_stream_from_memory_once_a_batch():
    spec = dataclasses.replace(timing.preset("arria10-pb6"), onchip_mb=0.0001)       # 100 bytes on chip
    rep = timing.analyze(_small_graph(), spec, "fp32")
    dense = next(r for r in rep["layers"] if r["name"] == "dense")
    assert not dense["pinned"] and dense["weight_cycles"] == math.ceil(
        256 * 10 * 4 / (spec.dram_gbps * 1e9 / (spec.clock_mhz * 1e6)))
    assert not rep["network"]["weights_pinned"]
    one, many = timing.seconds(rep, 1), timing.seconds(rep, 64)
    assert many / 64 < one                      # batching spreads the weights' streaming over the images
