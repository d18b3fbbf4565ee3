"""The timing model against numbers no one here wrote: intel/fpga-npu's 19 workloads (its scripts/workloads), our
instruction-level model configured as that NPU, beside that project's committed RTL-simulation baseline
(scripts/rtl_baseline) and its own performance simulator's (scripts/perf_baseline), both in TOPS.

    python benchmarks/fpga_npu.py        # prints the markdown table the README carries

Nothing here runs that project's code; its baselines are quoted as data (intel/fpga-npu, BSD-3-Clause licence).
"""
from __future__ import annotations

import sys

# name: (kind, sizes, time steps, batch); batch is test_input's first dimension in the workload's script
WORKLOADS = {
    "01_gemv_512x512": ("dense", [512, 512], 1, 6),
    "02_gemv_1024x1024": ("dense", [1024, 1024], 1, 6),
    "03_gemv_1152x1152": ("dense", [1152, 1152], 1, 6),
    "04_gemv_1536x1536": ("dense", [1536, 1536], 1, 6),
    "05_gemv_1792x1792": ("dense", [1792, 1792], 1, 6),
    "06_rnn_512_8": ("rnn", [512], 8, 6),
    "07_rnn_1024_8": ("rnn", [1024], 8, 6),
    "08_rnn_1152_8": ("rnn", [1152], 8, 6),
    "09_rnn_1536_8": ("rnn", [1536], 8, 6),
    "10_rnn_1792_8": ("rnn", [1792], 8, 6),
    "11_gru_512_8": ("gru", [512], 8, 6),
    "12_gru_1024_8": ("gru", [1024], 8, 6),
    "13_gru_1152_8": ("gru", [1152], 8, 6),
    "14_lstm_512_8": ("lstm", [512], 8, 6),
    "15_lstm_1024_8": ("lstm", [1024], 8, 6),
    "16_mlp5_512": ("dense", [512, 512, 512, 512], 1, 6),
    "17_mlp5_1024": ("dense", [1024, 1024, 1024, 1024], 1, 6),
    "18_mlp3_1024_512_256_256": ("dense", [1024, 512, 256, 256], 1, 6),
    "19_mlp3_1024_512_256_256_batched": ("dense", [1024, 512, 256, 256], 1, 18),
}
# TOPS, as committed in intel/fpga-npu's scripts/rtl_baseline and scripts/perf_baseline
RTL_BASELINE = [3.55, 9.7, 10.39, 15.06, 16.9, 7.47, 19.84, 21.1, 29.91, 33.12, 8.41, 21.02, 22.97, 13.29, 30.0,
                4.32, 12.03, 3.92, 5.32]
PERF_BASELINE = [5.65, 13.06, 13.38, 18.34, 20.04, 10.86, 25.11, 25.59, 33.38, 34.25, 10.89, 24.32, 25.29, 15.16,
                 31.85, 6.86, 16.29, 6.02, 7.26]
MATRICES = {"dense": 1, "rnn": 2, "gru": 6, "lstm": 8}       # matrices per step (the project's op count)
BOUND = 0.25                                                  # what the model is held to against the RTL


def ops(kind, sizes, steps, batch) -> int:
    """The workload's operations as that project counts them: 2 per multiply-accumulate, every matrix."""
    if kind == "dense":
        return batch * sum(2 * i * o for i, o in zip(sizes, sizes[1:]))
    n = sizes[0]
    return steps * batch * 2 * n * n * MATRICES[kind]


def modeled(npu, kind, sizes, steps, batch) -> int:
    """Our model's cycles for one workload on ``npu``."""
    groups = batch // (npu.cores * npu.batch)
    if kind == "dense":
        return npu.dense(sizes, groups)
    return getattr(npu, kind)(sizes[0], steps)


def compare(npu=None) -> list[dict]:
    """One row per workload: our TOPS and the two baselines, and each one's error against the RTL."""
    from accel_lib.fpga.device import npu as npu_model
    from accel_lib.fpga.device import timing
    npu = npu or npu_model.Npu(timing.preset("fpga-npu"))
    rows = []
    for (name, w), rtl, perf in zip(WORKLOADS.items(), RTL_BASELINE, PERF_BASELINE):
        ours = npu.tops(ops(*w), modeled(npu, *w))
        rows.append({"workload": name, "ours": ours, "rtl": rtl, "perf": perf, "ours_err": ours / rtl - 1,
                     "perf_err": perf / rtl - 1})
    return rows


def table(rows) -> str:
    worst = max(abs(r["ours_err"]) for r in rows)
    worst_perf = max(abs(r["perf_err"]) for r in rows)
    lines = ["| workload | RTL simulation (TOPS) | our model | error | fpga-npu's simulator | its error |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['workload']} | {r['rtl']:.2f} | {r['ours']:.2f} | {r['ours_err']:+.1%} | {r['perf']:.2f} | "
              f"{r['perf_err']:+.1%} |" for r in rows]
    lines.append(f"\nLargest error against the RTL: ours {worst:.1%}, fpga-npu's own simulator {worst_perf:.1%} "
                 f"(modeled; the model is held to {BOUND:.0%}).")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(compare()))
    sys.exit(0)
