"""The README's quick start stays true: two commands, and CI runs the test command word for word."""
import re

from conftest import ROOT


def quick_start_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", text, re.S).group(1)
    return [l for l in block.splitlines() if l.strip() and not l.startswith("#")]


def test_two_commands_and_ci_runs_the_test_command():
    main_job, tests = quick_start_commands()
    assert "resgraph check specs/" in main_job and "resgraph run compiled/digits_resnet examples/digits/samples" in main_job and "torch" not in main_job
    assert tests.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert main_job in ci and tests in ci                    # word for word
    assert ci.index(main_job) < ci.index(tests)              # the main job first, on a machine without torch
    assert " -o " not in main_job                            # compile's default folder, compiled/<name>/


def test_main_job_specs_exist():
    main_job, _ = quick_start_commands()
    for spec in re.findall(r"specs/\S+\.yaml", main_job):
        assert (ROOT / spec).exists(), spec
