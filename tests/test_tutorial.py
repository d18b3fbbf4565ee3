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
