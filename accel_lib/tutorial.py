"""Running the tutorial's notebooks in batch (``make tutorial``, the tests, the Binder check), and a run's summary.

Each notebook runs under papermill in a process of its own (``python -m accel_lib.tutorial execute ...``: a process
that has loaded TensorFlow or ONNX Runtime does not also host the kernel's client). Every cell has a time limit set
by its tags: a cell tagged ``slow`` (conversion, training) gets ``SLOW_CELL_SECONDS``, any other ``CELL_SECONDS``,
both times ``time_scale`` (the Binder check's single CPU). A cell that reaches its limit fails the run. That includes
a cell that the client records as completed at its limit: it is what a missed kernel reply looks like, since such a
reply is noticed only when the client's wait ends (nbclient #312; ``notebook.UploadScorer`` says how we avoid it).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CELL_SECONDS = 60           # a cell that needs a few seconds: a minute means it hangs
SLOW_CELL_SECONDS = 300     # a cell tagged "slow" (the goal is under 60 s on 2 cores)
SLOW_TAG = "slow"
START_SECONDS = 120         # the kernel's start


class NotebookFailed(RuntimeError):
    """A notebook that raised, or a cell that ran into its time limit (the message says which and shows why)."""


@dataclass
class CellTime:
    """One executed code cell: its index among the notebook's cells, what it took, its limit, its first line."""
    index: int
    seconds: float
    limit: float
    source: str

    @property
    def hung(self):
        """Whether the cell ran into its limit (recorded as completed or not)."""
        return self.seconds >= self.limit - 0.5


@dataclass
class NotebookRun:
    """What one notebook's run took: its wall time and its cells."""
    name: str
    seconds: float
    cells: list


def cell_limit(cell, time_scale=1.0) -> float:
    """The seconds a code cell may take: by its ``slow`` tag, times ``time_scale``."""
    tags = cell.get("metadata", {}).get("tags", [])
    return (SLOW_CELL_SECONDS if SLOW_TAG in tags else CELL_SECONDS) * time_scale


def cell_times(nb_path, time_scale=1.0) -> list[CellTime]:
    """The recorded duration of every executed code cell of a notebook papermill wrote."""
    nb = json.loads(Path(nb_path).read_text())
    out = []
    for i, c in enumerate(nb["cells"]):
        if c["cell_type"] != "code":
            continue
        d = c.get("metadata", {}).get("papermill", {}).get("duration")
        if d is not None:
            src = "".join(c["source"]).strip().splitlines()
            out.append(CellTime(i, float(d), cell_limit(c, time_scale), src[0][:70] if src else ""))
    return out


def execute(src, dest, cwd, parameters=None, time_scale=1.0):
    """Run one notebook with papermill in this process, each cell under its limit (the ``execute`` command)."""
    import papermill

    papermill.execute_notebook(str(src), str(dest), parameters=parameters or {}, cwd=str(cwd), kernel_name="python3",
                               progress_bar=False, start_timeout=START_SECONDS,
                               execution_timeout=int(SLOW_CELL_SECONDS * time_scale),
                               timeout_func=lambda cell: int(cell_limit(cell, time_scale)))


def run(src, dest, cwd, parameters=None, time_scale=1.0, env=None, wrap=None) -> NotebookRun:
    """Run one notebook in a process of its own; NotebookFailed if it raised or a cell reached its limit.
    ``wrap(command) -> command`` starts that process another way (inside a cgroup, say)."""
    nb = json.loads(Path(src).read_text())
    budget = START_SECONDS + sum(cell_limit(c, time_scale) for c in nb["cells"] if c["cell_type"] == "code")
    cmd = [sys.executable, "-m", "accel_lib.tutorial", "execute", str(src), str(dest), "--cwd", str(cwd),
           "--time-scale", str(time_scale), "--parameters", json.dumps(parameters or {})]
    if wrap is not None:
        cmd = wrap(cmd)
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=budget, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise NotebookFailed(f"{Path(src).name} did not end within {budget:.0f} s (every cell's limit added up)")
    took = time.monotonic() - t0
    cells = cell_times(dest, time_scale) if Path(dest).exists() else []
    hung = [c for c in cells if c.hung]
    if hung:
        c = hung[0]
        raise NotebookFailed(f"{Path(src).name}: cell {c.index} ({c.source!r}) ran into its limit of {c.limit:.0f} s "
                             f"({c.seconds:.1f} s): it hung")
    if r.returncode != 0:
        raise NotebookFailed(f"{Path(src).name} failed under papermill:\n{r.stderr[-5000:]}")
    return NotebookRun(Path(src).name, took, cells)


def run_series(notebooks, out_dir, cwd, parameters=None, time_scale=1.0, env=None, on_done=None):
    """Run notebooks in order, each writing its executed copy to ``out_dir``; a failure stops what the workspace
    left running (its clusters) before it is raised. ``on_done(NotebookRun)`` after each. Returns the runs."""
    runs = []
    workspace = Path(cwd) / (parameters or {}).get("workspace_dir", "workspace")
    try:
        for nb in notebooks:
            r = run(nb, Path(out_dir) / Path(nb).name, cwd, parameters, time_scale, env)
            runs.append(r)
            if on_done:
                on_done(r)
    except BaseException:
        stop_what_is_left(workspace)
        raise
    return runs


def stop_what_is_left(workspace):
    """Delete the services and stop the clusters a workspace still runs (a failed notebook's leftovers)."""
    if (Path(workspace) / "config.json").exists():
        from . import webservice
        webservice.stop_all(workspace)


# what no output may show a learner: a temporary path, a pid, a loopback port, a host-resolution error, a container
# runtime's own error text (each changes with the run or the machine, and none is the tutorial's point)
OUTPUT_NOISE = re.compile(r"/tmp/|/var/tmp/|(?<![\w.])/(?:root|home|work)/|\bpid[ =:]*\d+|"
                          r"(?:127\.0\.0\.1|localhost|0\.0\.0\.0|\[::1?\]):\d{2,5}\b|gaierror|"
                          r"Name or service not known|Temporary failure in name resolution|\b(?:runc|crun)\b", re.I)


def output_noise(nb_path) -> list[tuple]:
    """(cell index, fragment) for every match of OUTPUT_NOISE in an executed notebook's outputs."""
    found = []
    for i, c in enumerate(json.loads(Path(nb_path).read_text())["cells"]):
        for o in c.get("outputs", []):
            data = o.get("data", {})
            text = "".join(o.get("text", "")) + "".join(data.get("text/plain", "")) + \
                "".join(data.get("text/html", "")) + " ".join(o.get("traceback", []))
            found += [(i, text[max(0, m.start() - 60):m.end() + 40]) for m in OUTPUT_NOISE.finditer(text)]
    return found


TIMES = "times"             # OUT/times.md and OUT/times.json: what `make tutorial` measured
REGENERATE = "make tutorial"


def containers_status(out_dir) -> str:
    """What the executed series said of its container build: "built ... with <engine> ...", "container build
    skipped: <why> ...", or "not attempted"."""
    from .image import BUILT, SKIPPED
    for nb_path in sorted(Path(out_dir, "notebooks").glob("[0-9]*.ipynb")):
        for c in json.loads(nb_path.read_text())["cells"]:
            for o in c.get("outputs", []) if c["cell_type"] == "code" else []:
                for line in "".join(o.get("text", "")).splitlines() if o.get("name") == "stdout" else []:
                    if line.startswith((BUILT + " ", SKIPPED)):
                        return line
    return "not attempted"


def write_times(runs, out_dir, failure=None) -> dict:
    """OUT/times.json and OUT/times.md: each notebook's wall time and slowest cell, the machine, and whether the
    container image was built; returns what was written."""
    from . import machine
    from .image import BUILT
    rows = []
    for r in runs:
        slowest = max(r.cells, key=lambda c: c.seconds, default=None)
        rows.append({"notebook": r.name, "seconds": round(r.seconds, 1),
                     "slowest_cell": {"index": slowest.index, "seconds": round(slowest.seconds, 1),
                                      "source": slowest.source} if slowest else None,
                     "cells_over_a_minute": sum(c.seconds > CELL_SECONDS for c in r.cells)})
    status = containers_status(out_dir)
    result = {"command": REGENERATE, "machine": machine.facts(), "containers": status,
              "containers_built": status.startswith(BUILT + " "), "total_seconds": round(sum(r.seconds for r in runs), 1),
              "notebooks": rows, "failure": failure}
    out = Path(out_dir)
    (out / f"{TIMES}.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = [f"`{REGENERATE}` on {m['cpu']}, {m['cores']} cores, {m['memory_gib']:g} GiB; containers: "
             f"{status.split(' (')[0].split('. ')[0]}", "",
             "| notebook | wall s | slowest cell | its s |", "|---|---|---|---|"]
    for r in rows:
        cell = r["slowest_cell"]
        what = f"{cell['index']}: `{cell['source'].replace('|', '/')[:48]}`" if cell else "-"
        lines.append(f"| {r['notebook']} | {r['seconds']:.0f} | {what} | {cell['seconds']:.0f} |" if cell else
                     f"| {r['notebook']} | {r['seconds']:.0f} | - | - |")
    over = sum(r["cells_over_a_minute"] for r in rows)
    lines += ["", f"Notebooks in all: {result['total_seconds']:.0f} s ({result['total_seconds'] / 60:.1f} min); "
                  f"cells over {CELL_SECONDS} s: {over}." + (f" FAILED: {failure}" if failure else "")]
    (out / f"{TIMES}.md").write_text("\n".join(lines) + "\n")
    return result


def summary(out_dir):
    """Print the lines a reader of `make tutorial` wants to see from the executed notebooks."""
    import nbformat
    keys = ("parity", "device check", "confidence:", "service vs in-process", "RANDOM WEIGHTS", "score ",
            "held-out accuracy")
    for nb_path in sorted(Path(out_dir, "notebooks").glob("[0-9]*.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        lines = [line for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                 if o.get("output_type") == "stream" and o.get("name") == "stdout"
                 for line in o.get("text", "").splitlines() if any(k in line for k in keys)]
        if lines:
            print(f"-- {nb_path.name}")
            print("\n".join(f"   {line}" for line in lines))


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="python -m accel_lib.tutorial", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("execute", help="run one notebook with papermill in this process")
    e.add_argument("src")
    e.add_argument("dest")
    e.add_argument("--cwd", default=".")
    e.add_argument("--time-scale", type=float, default=1.0)
    e.add_argument("--parameters", default="{}", help="JSON object of parameters")
    s = sub.add_parser("series", help="run notebooks in order into OUT/notebooks, in OUT")
    s.add_argument("notebooks", nargs="+")
    s.add_argument("--out", required=True)
    s.add_argument("--time-scale", type=float, default=1.0)
    s.add_argument("--parameters", default="{}", help="JSON object of parameters")
    m = sub.add_parser("summary", help="the lines worth reading from an executed series")
    m.add_argument("out")
    args = p.parse_args(argv)
    if args.command == "execute":
        execute(args.src, args.dest, args.cwd, json.loads(args.parameters), args.time_scale)
    elif args.command == "series":
        out = Path(args.out)
        (out / "notebooks").mkdir(parents=True, exist_ok=True)

        def done(r):
            slowest = max(r.cells, key=lambda c: c.seconds, default=None)
            print(f"== {r.name}: {r.seconds:.0f} s" + (f" (slowest cell {slowest.index}: {slowest.seconds:.0f} s)"
                                                        if slowest else ""), flush=True)
        runs = []
        try:
            run_series(args.notebooks, out / "notebooks", out, json.loads(args.parameters), args.time_scale,
                       {**os.environ, "ACCEL_LIB_PROGRESS": "0"}, on_done=lambda r: (runs.append(r), done(r)))
        except NotebookFailed as err:
            write_times(runs, out, failure=str(err).splitlines()[0])
            print(f"FAILED: {err}", file=sys.stderr)
            return 1
        write_times(runs, out)
        print(f"times: {out / TIMES}.md")
    else:
        summary(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
