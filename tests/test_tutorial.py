"""The batch runner every notebook run goes through (make tutorial, the tests, the Binder check): each cell under a
limit set by its tags, and a cell that reaches its limit fails the run, however papermill recorded it."""
import json

import nbformat
import pytest

from accel_lib import tutorial


def _notebook(path, cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"tags": tags}) for src, tags in cells]
    nbformat.write(nb, path)
    return path


def test_slow_cells_get_the_longer_limit_and_the_scale_applies():
    assert tutorial.cell_limit({"metadata": {}}) == tutorial.CELL_SECONDS
    assert tutorial.cell_limit({"metadata": {"tags": ["slow"]}}, 2.0) == 2 * tutorial.SLOW_CELL_SECONDS


def test_a_cell_past_its_limit_fails_the_run(tmp_path):
    src = _notebook(tmp_path / "sleepy.ipynb", [("x = 1", []), ("import time\ntime.sleep(30)", [])])
    with pytest.raises(tutorial.NotebookFailed, match=r"sleepy.ipynb: cell 1 \('import time'\) ran into its limit "
                                                      r"of 3 s .*it hung"):
        tutorial.run(src, tmp_path / "out.ipynb", tmp_path, time_scale=3 / tutorial.CELL_SECONDS)


def test_a_cell_recorded_as_completed_at_its_limit_counts_as_hung(tmp_path):
    """What papermill writes when the cell's reply was missed and found when the wait ended: 'completed', with a
    duration of the whole limit (seen in notebook 05 before the widget stopped capturing its output)."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("picked = scorer.on_upload(...)"),
                nbformat.v4.new_code_cell("convert()", metadata={"tags": ["slow"]})]
    nb.cells[0].metadata["papermill"] = {"status": "completed", "exception": False, "duration": 60.004}
    nb.cells[1].metadata["papermill"] = {"status": "completed", "exception": False, "duration": 61.0}
    path = tmp_path / "ran.ipynb"
    path.write_text(json.dumps(nb))
    first, second = tutorial.cell_times(path)
    assert first.hung and first.limit == tutorial.CELL_SECONDS
    assert not second.hung                       # a slow cell has more time


def test_a_notebook_that_raises_fails_with_its_error(tmp_path):
    src = _notebook(tmp_path / "bad.ipynb", [("raise ValueError('the workspace is not there')", [])])
    with pytest.raises(tutorial.NotebookFailed, match="the workspace is not there"):
        tutorial.run(src, tmp_path / "out.ipynb", tmp_path)


def test_a_series_writes_its_times_with_the_machine_and_the_container_build(tmp_path):
    """`make tutorial`'s command: times.md and times.json name each notebook's wall time and slowest cell, the
    machine, and what the series said of its container build."""
    import subprocess
    import sys

    from accel_lib.image import BUILT
    nbs = [_notebook(tmp_path / "01-a.ipynb", [("x = 1", []), ("import time\ntime.sleep(1.5)", [])]),
           _notebook(tmp_path / "02-b.ipynb", [(f"print({BUILT + ' demo:1 with podman (FROM base)'!r})", [])])]
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "accel_lib.tutorial", "series", "--out", str(out), *map(str, nbs)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    times = json.loads((out / "times.json").read_text())
    assert [n["notebook"] for n in times["notebooks"]] == ["01-a.ipynb", "02-b.ipynb"]
    first = times["notebooks"][0]
    assert first["slowest_cell"]["index"] == 1 and first["slowest_cell"]["seconds"] >= 1.5
    assert first["seconds"] >= first["slowest_cell"]["seconds"] and first["cells_over_a_minute"] == 0
    assert times["containers_built"] and times["containers"].startswith(f"{BUILT} demo:1 with podman")
    assert set(times["machine"]) == {"cpu", "cores", "memory_gib"} and times["machine"]["cores"] >= 1
    md = (out / "times.md").read_text()
    assert md.startswith(f"`make tutorial` on {times['machine']['cpu']}") and "| 01-a.ipynb |" in md
    assert f"Notebooks in all: {times['total_seconds']:.0f} s" in md and "containers: built demo:1" in md
