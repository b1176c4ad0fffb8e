"""The Colab notebooks run top to bottom on CPU with SMOKE = True (papermill's convention: the
value is injected in a cell after the one tagged "parameters"); committed files carry no outputs."""

import glob
import os

import nbformat
import pytest

COLAB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "colab")
NOTEBOOKS = sorted(glob.glob(os.path.join(COLAB, "*.ipynb")))


def test_the_three_notebooks_exist():
    names = [os.path.basename(p) for p in NOTEBOOKS]
    assert names == ["01_rope_frequencies.ipynb", "02_extend_a_model.ipynb", "03_tpu_continued_pretraining.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_committed_notebook_is_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert "colab.research.google.com" in nb.cells[0].source, "the first cell carries the Open-in-Colab badge"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "strip outputs before committing"
    parameters = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1 and parameters[0].source.strip() == "SMOKE = False"
    kinds = [c.cell_type for c in nb.cells]
    assert all(kinds[i - 1] == "markdown" for i, k in enumerate(kinds) if k == "code"), \
        "every code cell follows a markdown cell that explains it"


def with_smoke(nb):
    """papermill's injection: a cell right after the parameters cell overrides its values."""
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell("SMOKE = True")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, injected)
    return nb


# Where each notebook's kernel starts: its own folder (Colab-like), the repository root, and a
# folder outside the checkout (nbconvert run from elsewhere) -- the notebook finds the root from each.
START_DIRS = {"01_rope_frequencies.ipynb": "root", "02_extend_a_model.ipynb": "elsewhere",
              "03_tpu_continued_pretraining.ipynb": "colab"}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_on_cpu(path, tmp_path):
    from nbclient import NotebookClient

    start = {"colab": COLAB, "root": os.path.dirname(COLAB), "elsewhere": str(tmp_path)}[START_DIRS[os.path.basename(path)]]
    nb = with_smoke(nbformat.read(path, as_version=4))
    env = {"JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg", "YARN_JAX_NOTEBOOK_WORKDIR": str(tmp_path)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": start}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if os.path.basename(path) == "03_tpu_continued_pretraining.ipynb":
        from yarn_jax import plan

        printed = "".join(o.get("text", "") for cell in nb.cells if "plan.plan(" in cell.source for o in cell.outputs)
        if plan.find_libtpu():  # make installs it: the notebook's run compiled for Colab's TPU v2-8
            assert "compiled for v2-8 with attention splash | fits: True" in printed, printed
