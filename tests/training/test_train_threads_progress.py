"""`resgraph train`'s CPU thread default (threads.default_threads) and its progress lines when output is
not a terminal. Timings are in bench/train_threads.py, never here."""
import io
import os
import re
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
pytest.importorskip("sklearn", reason="scikit-learn (digits) is not installed")

from resgraph.training import threads  # noqa: E402
from resgraph.training.loop import TrainConfig, train  # noqa: E402
from resgraph.training.progress import Bar, Lines, NoProgress, default_every, progress  # noqa: E402
from conftest import ROOT  # noqa: E402

SPEC = """resgraph: 1
name: digits_tiny
input: {shape: [1, 8, 8]}
layers:
  - conv: {out: 4, kernel: 3}
  - relu
  - global_avgpool
  - flatten
  - linear: {out: 10}
"""


@pytest.fixture
def spec(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(SPEC)
    return str(p)


@pytest.fixture
def keep_torch_threads(monkeypatch):
    """The test process's torch threads as they were, whatever train set; no OMP_NUM_THREADS."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("cpus,workers,procs,want", [
    (1, 0, 1, 1), (2, 0, 1, 1), (2, 1, 1, 1), (4, 0, 1, 3), (16, 0, 1, 15), (16, 4, 1, 11), (8, 8, 1, 1),
    (16, 0, 4, 3), (17, 2, 4, 2), (64, 60, 1, 3)])
def test_the_default_leaves_a_cpu_free_and_one_per_worker(cpus, workers, procs, want):
    assert threads.default_threads(cpus, workers, procs) == want


def test_options_and_environment_override_the_rule(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 8)
    assert threads.choose_threads(3, 5, env={})[0] == 3
    assert threads.choose_threads(None, 0, env={"OMP_NUM_THREADS": "1"}) == (None, "OMP_NUM_THREADS=1")
    assert threads.choose_threads(None, 1, env={})[0] == 6
    assert threads.choose_threads(None, 1, env={"LOCAL_WORLD_SIZE": "2"})[0] == 2   # torchrun, 2 processes here


def test_usable_cpus_is_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    assert threads.usable_cpus() == 3


@pytest.mark.parametrize("cpus,workers,given,want", [(5, 0, None, 4), (5, 1, None, 3), (5, 0, 3, 3)])
def test_train_computes_on_the_count_it_chose(spec, tmp_path, monkeypatch, keep_torch_threads, cpus, workers, given,
                                              want):
    """torch.get_num_threads() while training is the rule's count (or --threads), not torch's default;
    the caller's count is back afterwards."""
    monkeypatch.setattr(threads, "usable_cpus", lambda: cpus)
    before = 2 if want != 2 else 1   # something else beforehand
    torch.set_num_threads(before)
    seen = []
    train(TrainConfig(spec=spec, data="digits", out=str(tmp_path / "run"), epochs=1, batch_size=256, save_every=0,
                      workers=workers, threads=given, progress=False, on_epoch=lambda row: seen.append(
                          torch.get_num_threads())))
    assert seen == [want] and torch.get_num_threads() == before


def test_default_every_is_a_tenth_of_an_epoch_at_most_50():
    assert [default_every(n) for n in (1, 5, 10, 22, 100, 499, 500, 501, 5000)] == [1, 1, 1, 3, 10, 50, 50, 50, 50]


def test_a_terminal_keeps_the_bar_and_other_output_gets_lines():
    from rich.console import Console
    term = Console(file=io.StringIO(), force_terminal=True)
    piped = Console(file=io.StringIO(), force_terminal=False)
    bar = progress(term, True, 0, 3, 20, 5)
    bar.close()
    assert isinstance(bar, Bar)
    assert isinstance(progress(piped, True, 0, 3, 20, None), Lines)
    assert isinstance(progress(piped, True, 0, 3, 20, 0), NoProgress)
    assert isinstance(progress(piped, False, 0, 3, 20, 5), NoProgress)
    assert isinstance(progress(None, True, 0, 3, 20, 5), NoProgress)


# The real CLI, its output a pipe, held at the end of each epoch (before validation, checkpoints and the
# epoch's summary line) until the test has read that epoch's progress lines: lines that waited for the
# end of the epoch (or of the process) never arrive while it is held, and the run gives up (exit 3).
HELD = """
import os, sys, time
import resgraph.training.loop as loop
end, go = loop._end_epoch, sys.argv.pop(1)
def held(run, epoch, *a, **k):
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(go, str(epoch + 1))):
        if time.monotonic() > deadline:
            print(f"held: no go for epoch {epoch + 1}", file=sys.stderr, flush=True)
            os._exit(3)
        time.sleep(0.01)
    return end(run, epoch, *a, **k)
loop._end_epoch = held
from resgraph.cli import main
sys.argv[0] = "resgraph"
main()
"""
LINE = re.compile(r"epoch (\d+)/2  batch (\d+)/(\d+)  loss \d+\.\d{4}  acc [01]\.\d{4}  \d+\.\d img/s")


def _rows(out) -> int:
    path = os.path.join(out, "metrics.csv")
    return len(open(path).read().splitlines()) - 1 if os.path.exists(path) else 0


def _read_held_run(proc, go, out) -> tuple[list[str], dict, dict]:
    """Every stdout line; per epoch, the batches of its progress lines, and the epochs metrics.csv held
    when the epoch's last line came (one fewer than the epoch: it had not ended)."""
    lines, seen, rows = [], {1: [], 2: []}, {}
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        m = LINE.fullmatch(lines[-1])
        if not m:
            continue
        epoch, batch, steps = map(int, m.groups())
        seen[epoch].append(batch)
        if batch + 5 > steps:   # the epoch's last line at --log-every 5: let it end
            rows[epoch] = _rows(out)
            open(os.path.join(go, str(epoch)), "w").close()
    return lines, seen, rows


def test_progress_lines_come_during_the_epoch_when_output_is_not_a_terminal(spec, tmp_path):
    go, out = tmp_path / "go", tmp_path / "run"
    go.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "PYTHONUNBUFFERED")} | {"NO_COLOR": "1"}
    t0 = time.monotonic()
    with open(tmp_path / "stderr", "w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", HELD, str(go), "train", spec, "--data", "digits", "--epochs", "2",
                                 "--batch-size", "64", "--log-every", "5", "--save-every", "0", "-o", str(out)],
                                stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, env=env)
        lines, seen, rows = _read_held_run(proc, str(go), str(out))
        rc = proc.wait(timeout=120)
        err.seek(0)
        stderr = err.read()
    assert rc == 0, (stderr, lines, time.monotonic() - t0)
    assert LINE.fullmatch(lines[0]).group(3) == "22"   # digits: 1,797 images, 20% held out, batch 64
    assert seen == {1: [5, 10, 15, 20], 2: [5, 10, 15, 20]}
    assert rows == {1: 0, 2: 1}
    summaries = [i for i, l in enumerate(lines) if re.match(r"epoch \d/2  loss ", l)]
    assert len(summaries) == 2 and all(LINE.fullmatch(lines[i - 1]) for i in summaries)
    want = threads.default_threads(threads.usable_cpus(), 0)
    assert re.findall(r"^resgraph: training on (\d+) CPU threads?, 0 loader workers \(", stderr, re.M) == [str(want)]
