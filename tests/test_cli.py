import subprocess
import sys

import pytest

from dmrilib.cli import build_parser, main


@pytest.mark.parametrize("command", ["info", "simulate", "train", "predict", "evaluate"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: dmri " + command in capsys.readouterr().out


def test_unknown_profile_is_one_clear_line_and_status_2(capsys):
    status = main(["train", "--config", "no-such-profile", "--model", "dae", "--variant", "lsd16-linear"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("dmri train: error:") and "Shipped profiles" in err
    assert "Traceback" not in err


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "dmrilib.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("dmri ")


def test_parser_lists_the_planned_subcommands():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {"info", "simulate", "train", "predict", "evaluate"}


# ------------------------------------------------------------- one line, exit 2


def _one_error_line(err: str, command: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"dmri {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_corrupt_checkpoint_is_one_line_naming_it_and_status_2(tmp_path, capsys):
    import os

    checkpoint = tmp_path / "checkpoint-best.pt"
    checkpoint.write_bytes(os.urandom(4096))
    status = main(["predict", "--checkpoint", str(checkpoint), "--dwi", str(tmp_path / "dwi.nii.gz"),
                   "--out", str(tmp_path / "map.nii.gz")])
    line = _one_error_line(capsys.readouterr().err, "predict")
    assert status == 2
    assert f"error: {checkpoint}: not a readable dmrilib checkpoint" in line


def test_truncated_npy_is_one_line_and_status_2(tmp_path, capsys, monkeypatch):
    import numpy as np

    from dmrilib import pipeline

    path = tmp_path / "attenuation.npy"
    np.save(path, np.zeros(1000, dtype=np.float32))
    path.write_bytes(path.read_bytes()[:500])
    monkeypatch.setattr(pipeline, "run_train", lambda *a, **k: np.load(path))  # numpy's own error
    status = main(["train", "--config", "smoke", "--model", "dae", "--variant", "lsd16-linear"])
    line = _one_error_line(capsys.readouterr().err, "train")
    assert status == 2 and "not fully written" in line


def test_multiline_value_error_becomes_one_line(tmp_path, capsys, monkeypatch):
    from dmrilib import io

    def fail(path, **kwargs):
        raise ValueError(f"{path}: something is wrong\n  on a second line")

    monkeypatch.setattr(io, "check_input", fail)
    status = main(["info", str(tmp_path / "x.nii.gz")])
    line = _one_error_line(capsys.readouterr().err, "info")
    assert status == 2 and line.endswith("x.nii.gz: something is wrong on a second line")


def test_checkpoint_mismatch_is_one_line_and_status_2(tmp_path, capsys, monkeypatch):
    from dmrilib import scoring
    from dmrilib.train import CheckpointMismatchError

    def fail(checkpoint, *a, **k):
        raise CheckpointMismatchError(f"{checkpoint}: written by config hash abc, expected def.")

    monkeypatch.setattr(scoring, "predict_dwi", fail)
    status = main(["predict", "--checkpoint", "c.pt", "--dwi", "d.nii.gz", "--out", "m.nii.gz"])
    line = _one_error_line(capsys.readouterr().err, "predict")
    assert status == 2 and "c.pt: written by config hash abc" in line


def test_disk_full_without_a_path_names_the_output(tmp_path, capsys, monkeypatch):
    from dmrilib import scoring

    def fail(*a, **k):
        raise OSError(28, "No space left on device")  # what a full disk raises on write(): no filename

    monkeypatch.setattr(scoring, "predict_dwi", fail)
    out = tmp_path / "map.nii.gz"
    status = main(["predict", "--checkpoint", "c.pt", "--dwi", "d.nii.gz", "--out", str(out)])
    line = _one_error_line(capsys.readouterr().err, "predict")
    assert status == 2
    assert line.startswith(f"dmri predict: error: {out}: No space left on device [Errno 28]")


def test_os_error_names_its_file(tmp_path, capsys, monkeypatch):
    from dmrilib import io

    def fail(path, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(io, "check_input", fail)
    status = main(["info", str(tmp_path)])
    line = _one_error_line(capsys.readouterr().err, "info")
    assert status == 2 and line.startswith(f"dmri info: error: {tmp_path}: Permission denied [Errno 13]")


@pytest.mark.parametrize("how", ["env", "flag-before", "flag-after"])
def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch, how):
    from dmrilib import io

    def fail(path, **kwargs):
        raise ValueError(f"{path}: broken")

    monkeypatch.setattr(io, "check_input", fail)
    argv = ["info", str(tmp_path)]
    if how == "env":
        monkeypatch.setenv("DMRI_DEBUG", "1")
    elif how == "flag-before":
        argv = ["--debug", *argv]
    else:
        argv = [*argv, "--debug"]
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2
    assert "Traceback" in err and err.splitlines()[-1] == f"dmri info: error: {tmp_path}: broken"


def test_internal_error_shows_traceback_and_says_it_is_a_bug(tmp_path, capsys, monkeypatch):
    from dmrilib import io

    def fail(path, **kwargs):
        return {}["missing"]

    monkeypatch.setattr(io, "check_input", fail)
    status = main(["info", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 1
    assert "Traceback" in err and "KeyError" in err
    assert "internal error" in err.splitlines()[-1] and "bug" in err.splitlines()[-1]


def test_corrupt_checkpoint_from_the_shell_prints_exactly_one_line(tmp_path):
    import os

    checkpoint = tmp_path / "c.pt"
    checkpoint.write_bytes(os.urandom(4096))
    out = subprocess.run([sys.executable, "-m", "dmrilib.cli", "predict", "--checkpoint", str(checkpoint),
                          "--dwi", str(tmp_path / "d.nii.gz"), "--out", str(tmp_path / "m.nii.gz")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    _one_error_line(out.stderr, "predict")


# ---------------------------------------------------------------- dmri info


def _bids(tmp_path):
    from _io_fixtures import make_bids

    return make_bids(tmp_path / "bids")


def test_info_exits_0_on_a_good_dataset(tmp_path, capsys):
    assert main(["info", str(_bids(tmp_path))]) == 0
    assert "subjects: 3" in capsys.readouterr().out


def test_info_exits_2_on_a_dataset_with_a_broken_subject(tmp_path, capsys):
    root = _bids(tmp_path)
    image = root / "sub-H02/ses-pre/dwi/sub-H02_ses-pre_dwi.nii.gz"
    image.write_bytes(image.read_bytes()[:-200])  # truncated copy: the header still reads
    status = main(["info", str(root)])
    out, err = capsys.readouterr()
    assert status == 2
    assert "problem: sub-H02_ses-pre_dwi.nii.gz" in out
    assert _one_error_line(err, "info").endswith(f"{root}: 1 problem(s), listed above.")
    assert main(["info", "--header-only", str(root)]) == 0


def test_info_exits_2_on_a_bids_root_without_dwi(tmp_path, capsys):
    root = _bids(tmp_path)
    for image in root.glob("sub-*/ses-pre/dwi/*_dwi.nii.gz"):
        image.unlink()
    assert main(["info", str(root)]) == 2
    assert "no diffusion data found" in capsys.readouterr().out


def test_info_exits_2_on_a_nan_voxel(tmp_path, capsys):
    import nibabel as nib
    import numpy as np

    root = _bids(tmp_path)
    image = root / "sub-P01/ses-pre/dwi/sub-P01_ses-pre_dwi.nii.gz"
    img = nib.load(image)
    data = img.get_fdata(dtype=np.float32)
    data[2, 2, 2, 1] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), image)
    assert main(["info", str(image)]) == 2
    assert "NaN or infinite" in _one_error_line(capsys.readouterr().err, "info")


def test_train_folds_trains_several_dae_folds_at_once_and_fold_one(capsys, monkeypatch):
    from dmrilib import pipeline

    calls = []
    monkeypatch.setattr(pipeline, "run_train_stack",
                        lambda profile, model, variant, folds, results: calls.append(("stack", folds)) or
                        [{"best_epoch": f, "best_val_loss": 0.5} for f in folds])
    monkeypatch.setattr(pipeline, "run_train",
                        lambda profile, model, variant, fold, results: calls.append(("one", fold)) or
                        {"best_epoch": 3, "best_val_loss": 0.25})
    args = ["train", "--config", "smoke", "--model", "dae", "--variant", "lsd16-linear"]
    assert main(args + ["--folds", "0", "2"]) == 0
    assert main(args + ["--fold", "1"]) == 0
    assert calls == [("stack", [0, 2]), ("one", 1)]
    out = capsys.readouterr().out
    assert "fold 0: best epoch 0" in out and "fold 2: best epoch 2" in out and "fold 1: best epoch 3" in out
    with pytest.raises(SystemExit):  # one or the other
        main(args + ["--fold", "1", "--folds", "0", "2"])
