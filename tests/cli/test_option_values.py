"""Values that are not what an option means are refused, by name, before any work: non-finite floats
(click's float ranges let nan through every bound), batch lists with empty, zero or repeated entries,
a back end named twice, and an engine profile no build could have recorded (a forged engine.json)."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import run_cli


@pytest.mark.parametrize("option", ["--duration", "--warmup", "--cv-threshold"])
@pytest.mark.parametrize("value", ["nan", "-inf"])
def test_bench_refuses_non_finite_seconds(digits_folder, option, value):
    r = run_cli("bench", str(digits_folder), option, value)
    assert r.returncode == 2 and f"'{value}' is not a finite number" in r.stderr and option in r.stderr, r.stderr


@pytest.mark.parametrize("option", ["--lr", "--label-smoothing", "--val-split"])   # the rest: the walk below
def test_train_refuses_non_finite_floats(option):
    r = run_cli("train", "specs/digits_resnet.yaml", "--data", "digits", option, "nan")
    assert r.returncode == 2 and "is not a finite number" in r.stderr and option in r.stderr, r.stderr


def test_every_float_option_of_every_command_is_finite():
    """Not one float option is left to click's FloatRange (nan passes its bounds) or to float."""
    import click

    from resgraph.cli import cli
    from resgraph.cli.common import FiniteFloat

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, f"{path} {name}")
            return
        for p in cmd.params:
            if isinstance(p.type, (click.types.FloatParamType, click.FloatRange)):
                yield f"{path} {p.opts[0]}", isinstance(p.type, FiniteFloat)
    floats = dict(walk(cli, "resgraph"))
    assert len(floats) >= 9 and all(floats.values()), [k for k, ok in floats.items() if not ok]


@pytest.mark.parametrize("batch, says", [
    ("1,,2", "'1,,2' is not a list of batch sizes"), ("0", "'0' is not a list of batch sizes"),
    ("8,", "is not a list of batch sizes"), ("-1", "is not a list of batch sizes"),
    ("70000", "is not a list of batch sizes"), ("8,8", "names batch 8 twice"), ("1,8,1,8", "names batch 1, 8 twice"),
])
def test_bench_batch_lists(digits_folder, batch, says):
    r = run_cli("bench", str(digits_folder), "--batch", batch, "--backend", "ort-cpu")
    assert r.returncode == 1 and says in r.stderr and "--batch" in r.stderr and "hint:" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("command, option", [("bench", "--backend"), ("parity", "--backends")])
@pytest.mark.parametrize("names, says", [
    ("ort-cpu,ort-cpu", "names 'ort-cpu' twice"),
    ("ort-cpu,ort", "names 'ort-cpu' and 'ort', both ort-cpu here"),
    ("ort-cpu,,torch-cpu", "has an empty back end name"),
])
def test_a_back_end_named_twice(digits_folder, command, option, names, says):
    r = run_cli(command, str(digits_folder), option, names)
    assert r.returncode == 1 and says in r.stderr and option in r.stderr, r.stderr


@pytest.mark.parametrize("profile", [[100, 1, -5], [0, 1, 1], [1, 8, 4], [1, 2, 1 << 20], [1, 2.5, 4], [True, 1, 1]])
def test_a_forged_engine_profile_is_a_damaged_engine_json(digits_folder, tmp_path, profile):
    from test_tensorrt import _info
    folder = tmp_path / "d"
    shutil.copytree(digits_folder, folder)
    (folder / "model.engine").write_bytes(b"plan")
    d = _info().to_json()
    d["build"]["batch"] = profile
    (folder / "engine.json").write_text(json.dumps(d))
    r = run_cli("engine", "info", str(folder))
    assert r.returncode == 1 and "a damaged engine.json" in r.stderr and "is not a batch profile" in r.stderr, r.stderr
    assert "rebuild the engine" in r.stderr
