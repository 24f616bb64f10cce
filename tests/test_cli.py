"""The command line: same run folder and the same errors as the library."""
import subprocess
import sys

from nslab.cli import main
from nslab.records import load_run


def test_cli_run_writes_the_run_folder(data_dir, tmp_path, capsys):
    code = main(["run", "--model", "mlp", "--depth", "2", "--width", "16", "--epochs", "1", "--batch_size", "64",
                 "--method", "frobenius", "--data_dir", data_dir, "--out_dir", str(tmp_path), "--device", "cpu"])
    assert code == 0
    assert "epoch   1/1" in capsys.readouterr().out
    assert load_run(str(tmp_path / "mlp2x16-frobenius-s1")).status["status"] == "completed"


def test_cli_preset_with_override_and_errors(data_dir, tmp_path, capsys):
    assert main(["run", "--preset", "quick", "--width", "abc"]) == 2
    assert "width='abc' is not allowed: expected an integer" in capsys.readouterr().err
    assert main(["run", "--preset", "nope"]) == 2
    assert "preset='nope' is not allowed" in capsys.readouterr().err
    assert main(["run", "--preset", "quick", "--epochs", "1", "--train_subset", "100", "--test_subset", "50",
                 "--width", "16", "--data_dir", data_dir, "--out_dir", str(tmp_path), "--device", "cpu"]) == 0
    assert len(load_run(str(tmp_path / "mlp3x16-spectral-s1")).epochs) == 1


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "nslab", "presets"], capture_output=True, text=True, check=True)
    assert "mlp5x2000-spectral" in out.stdout and "quick" in out.stdout
