"""The cocotb testbench of bfp_dot_tile.v: streams the blocks a JSON file gives (ACCEL_TILE_IO), one a cycle, and
writes back each row's float32 bits and the cycles from the first block's clock edge to the last result's."""
import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge


def _pack(values, width):
    out = 0
    for i, v in enumerate(values):
        out |= (int(v) & ((1 << width) - 1)) << (i * width)
    return out


@cocotb.test()
async def stream(dut):
    path = os.environ["ACCEL_TILE_IO"]
    with open(path) as f:
        job = json.load(f)
    mbits, emask = job["mbits"], (1 << (job["ebits"] + 1)) - 1
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value, dut.in_valid.value, dut.in_last.value = 1, 0, 0
    for _ in range(2):
        await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    blocks = [(b == len(row) - 1, blk) for row in job["rows"] for b, blk in enumerate(row)]
    results, edge, first, last = [], 0, None, None
    while len(results) < len(job["rows"]) and edge < len(blocks) + 64:
        await FallingEdge(dut.clk)                    # drive between edges ...
        if edge < len(blocks):
            is_last, blk = blocks[edge]
            dut.in_valid.value, dut.in_last.value = 1, int(is_last)
            dut.w_sign.value = _pack([k < 0 for k in blk["kw"]], 1)
            dut.w_mag.value = _pack([abs(k) for k in blk["kw"]], mbits)
            dut.w_exp.value = blk["ew"] & emask
            dut.x_sign.value = _pack([k < 0 for k in blk["kx"]], 1)
            dut.x_mag.value = _pack([abs(k) for k in blk["kx"]], mbits)
            dut.x_exp.value = blk["ex"] & emask
        else:
            dut.in_valid.value, dut.in_last.value = 0, 0
        await RisingEdge(dut.clk)                     # ... sample on the rising edge ...
        await ReadOnly()                              # ... and read what it registered
        edge += 1
        if first is None:
            first = edge
        if dut.out_valid.value == 1:
            results.append(int(dut.out_value.value))
            last = edge
    with open(path, "w") as f:
        json.dump({"values": results, "cycles": None if last is None else last - first + 1}, f)
