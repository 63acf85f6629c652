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
