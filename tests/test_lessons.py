"""Every lesson notebook runs top to bottom (no network, CPU) — a lesson that breaks is a failing test."""
import glob
import os

import pytest

LESSONS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "lessons", "[0-9][0-9]_*.ipynb")))


@pytest.mark.lesson
@pytest.mark.parametrize("path", LESSONS, ids=[os.path.basename(p) for p in LESSONS])
def test_lesson_runs_top_to_bottom(path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    lessons_dir = os.path.dirname(os.path.abspath(path))
    NotebookClient(nb, timeout=240, kernel_name="python3",
                   resources={"metadata": {"path": lessons_dir}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
