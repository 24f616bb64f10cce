"""notebooks/01_reproduce.ipynb: parameters mirror RunConfig; papermill runs it and writes the run folder."""
import json
import os
from dataclasses import fields

import papermill
import pytest

from nslab.config import RunConfig
from nslab.notebook import parameters_source
from nslab.presets import PRESETS
from nslab.records import load_run

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "notebooks", "01_reproduce.ipynb")


def _parameters_cell():
    nb = json.load(open(NOTEBOOK))
    return [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]


def test_parameters_cell_mirrors_run_config_name_type_and_default():
    cells = _parameters_cell()
    assert len(cells) == 1
    source = "".join(cells[0]["source"])
    assert source == parameters_source(), "run `python -m nslab.notebook` to regenerate the parameters cell"
    namespace = {}
    exec(source, namespace)  # the cell as papermill's kernel runs it
    config = RunConfig.from_dict({f.name: namespace[f.name] for f in fields(RunConfig)})
    # The shipped defaults are the quick preset (safe to Run All); every other field is RunConfig's default.
    assert config == RunConfig.from_dict({k: v for k, v in PRESETS["quick"].items() if k != "name"})
    for f in fields(RunConfig):
        assert type(namespace[f.name]) is (list if f.name == "milestones" else type(f.default)), f.name


def test_papermill_parses_every_parameter_with_its_type():
    inferred = papermill.inspect_notebook(NOTEBOOK)  # a line it cannot parse is left out
    assert list(inferred) == [f.name for f in fields(RunConfig)]
    assert inferred["width"]["inferred_type_name"] == "int" and inferred["lr"]["inferred_type_name"] == "float"


@pytest.mark.parametrize("name", ["01_reproduce.ipynb", "02_dashboard.ipynb", "03_report.ipynb"])
def test_notebooks_are_committed_without_outputs(name):
    nb = json.load(open(os.path.join(os.path.dirname(NOTEBOOK), name)))
    assert all(not c.get("outputs") and not c.get("execution_count") for c in nb["cells"] if c["cell_type"] == "code")


def test_papermill_writes_the_run_folder(data_dir, tmp_path):
    out = tmp_path / "executed.ipynb"
    papermill.execute_notebook(NOTEBOOK, str(out), kernel_name="python3", progress_bar=False, parameters=dict(
        model="mlp", depth=2, width=16, method="spectral", epochs=2, batch_size=64, train_subset=200,
        test_subset=100, data_dir=data_dir, out_dir=str(tmp_path), device="cpu", spectra_every=1))
    run = load_run(str(tmp_path / "mlp2x16-spectral-s1"))
    assert run.status["status"] == "completed" and len(run.epochs) == 2
    executed = json.load(open(out))
    text = json.dumps(executed["cells"])
    assert "epoch   2/2" in text and "application/vnd.plotly.v1+json" in text


def test_papermill_rejects_a_wrong_type_before_training(data_dir, tmp_path):
    with pytest.raises(papermill.PapermillExecutionError, match="width='abc' is not allowed: expected an integer"):
        papermill.execute_notebook(NOTEBOOK, str(tmp_path / "bad.ipynb"), kernel_name="python3", progress_bar=False,
                                   parameters=dict(width="abc", data_dir=data_dir, out_dir=str(tmp_path)))
    assert not [p for p in os.listdir(tmp_path) if p != "bad.ipynb"]


def test_a_misspelt_parameter_stops_the_notebook_with_the_message_first(data_dir, tmp_path):
    out = tmp_path / "typo.ipynb"
    with pytest.raises(papermill.PapermillExecutionError, match=r"unknown parameter 'widht' \(did you mean 'width'\?\)"):
        papermill.execute_notebook(NOTEBOOK, str(out), kernel_name="python3", progress_bar=False,
                                   parameters=dict(widht=10, data_dir=data_dir, out_dir=str(tmp_path)))
    errors = [o for c in json.load(open(out))["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert len(errors) == 1
    # The message comes first and the traceback is short: no screenful from inside nslab.
    assert errors[0]["traceback"][0].startswith("ValueError: unknown parameter 'widht'")
    assert len(errors[0]["traceback"]) == 2
    assert not [p for p in os.listdir(tmp_path) if p != "typo.ipynb"]  # nothing trained, nothing written


def test_relative_paths_resolve_from_the_repository_root_in_notebooks(monkeypatch, tmp_path):
    from nslab import paths

    monkeypatch.chdir(paths.NOTEBOOKS)
    assert paths.resolve("outputs") == os.path.join(paths.REPO_ROOT, "outputs")
    monkeypatch.chdir(paths.REPO_ROOT)
    assert paths.resolve("outputs") == os.path.join(paths.REPO_ROOT, "outputs")
    monkeypatch.chdir(tmp_path)
    assert paths.resolve("outputs") == str(tmp_path / "outputs") and paths.resolve("/abs") == "/abs"
    assert paths.resolve("") == ""
