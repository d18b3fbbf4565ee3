"""Instruction-level timing of a Brainwave-style NPU (modeled): dense chains and RNN, GRU and LSTM steps as
intel/fpga-npu's compiler emits them, from the units' occupancy and the round trips between them.

The NPU runs one instruction stream through in-order units: the matrix-vector unit (MVU), the multi-function units
(MFU) and the loader, which both loads inputs into the MVU's vector registers and writes results back. A unit waits
for the write-back its instruction depends on. Three costs follow, for a ``rows`` x ``cols`` matrix:

- issue: the MVU takes ``W * R`` cycles, ``W = ceil(cols / (tiles * lanes))`` words per tile and ``R`` row blocks
  of ``engines`` rows (at least ``min_rows`` rows: the compiler pads to it);
- drain: results leave ``batch`` words per row block and the units after the MVU take one word a cycle, so the
  last accumulator chunk (``chunk`` to ``2 * chunk - 1`` row blocks) adds ``(batch - 1)`` cycles per row block;
- round trips: from a dependency's write-back to the result's write-back, ``round_trip`` cycles through the MVU
  and ``mfu_round_trip`` through the MFUs alone; loading a vector takes ``tiles * W * batch`` loader cycles.

A layer's time is the later of its dependency chain and its units' occupancy; ``Npu`` gives each workload's
cycles from these alone. The constants are the preset's, each with its source.
"""
from __future__ import annotations

import math


class Npu:
    """A device preset (``timing.DeviceSpec``) seen as an instruction-level NPU: its MVU shape and its pipeline
    round trips, in cycles."""

    def __init__(self, spec):
        self.spec = spec

    def __getattr__(self, name):
        return getattr(self.spec, name)

    # -- one matrix --------------------------------------------------------------------------------
    def words(self, cols) -> int:
        return math.ceil(cols / (self.tiles * self.lanes))

    def row_blocks(self, rows) -> int:
        return max(math.ceil(self.min_rows / self.engines), math.ceil(rows / self.engines))

    def issue(self, rows, cols) -> int:
        return self.words(cols) * self.row_blocks(rows)

    def drain(self, rows, cols) -> int:
        """Cycles from an MVU instruction's first issue to its last result word leaving the MVU."""
        r = self.row_blocks(rows)
        last = r - self.chunk * (r // self.chunk - 1) if r >= self.chunk else r
        return self.issue(rows, cols) + (self.batch - 1) * last

    def load(self, cols) -> int:
        return self.tiles * self.words(cols) * self.batch

    def writeback(self, rows) -> int:
        """Loader cycles to write one result back: ``batch`` words per row block."""
        return self.batch * self.row_blocks(rows)

    # -- workloads -----------------------------------------------------------------------------------
    def dense(self, sizes, groups=1) -> int:
        """Cycles of dense layers ``sizes[0] -> sizes[1] -> ...`` on ``groups`` batches of ``cores * batch``.
        The compiler emits layer by layer, each group's load, matrix and write-back in turn: in the first layer
        the in-order loader serializes the groups; after it, the groups' matrices follow one another in the MVU."""
        pairs = list(zip(sizes, sizes[1:]))
        i, o = pairs[0]
        cycles = self.start + groups * (self.load(i) + self.round_trip + self.drain(o, i))
        for i, o in pairs[1:]:
            cycles += self.round_trip + self.drain(o, i) + (groups - 1) * max(self.issue(o, i), self.writeback(o))
        return cycles

    def rnn(self, n, steps) -> int:
        """A simple RNN layer of ``n`` units over ``steps``: each step's critical loop is the input's load, its
        projection and that write-back (the loader is in order), unless the MVU's two matrices take longer."""
        step = max(self.round_trip + self.drain(n, n) + self.load(n), 2 * self.issue(n, n))
        return self.start + self.load(n) + steps * step

    def gru(self, n, steps) -> int:
        """A GRU layer: after h lands, the loader first writes the input's three projections back and loads the
        next input; then z (through the MVU), 1 - z times h (the MFUs), r times h, its matrix (the MVU) and h."""
        w, rt, d, mfu = self.writeback(n), self.round_trip, self.drain(n, n), self.mfu_round_trip
        x_part = 3 * w + self.load(n)
        z = max(rt + d, x_part + w)
        one_minus_z = z + mfu + w
        r_h = one_minus_z + w
        candidate = r_h + rt + d
        step = candidate + mfu + w
        return self.start + self.load(n) + steps * step

    def lstm(self, n, steps) -> int:
        """An LSTM layer: after h lands, the loader writes the input's four projections back and loads the next
        input; the gates' four matrices follow one another (each written back), then c and h through the MFUs."""
        w, rt, d, mfu, iss = self.writeback(n), self.round_trip, self.drain(n, n), self.mfu_round_trip, self.issue(n, n)
        x_part = 4 * w + self.load(n)
        t = max(rt + d, x_part + w)                  # f
        for k in (1, 2, 3):                          # i, o, then the candidate times i
            t = max(rt + d + k * iss, t + w)
        step = t + 2 * (mfu + w)                     # c, then h
        return self.start + self.load(n) + steps * step

    def tops(self, ops, cycles) -> float:
        """Throughput in tera-operations per second for ``ops`` operations in ``cycles``."""
        return ops * self.clock_mhz * 1e6 / cycles / 1e12
