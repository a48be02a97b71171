"""The command line as a user meets it: check, summary, graph, schema, launchers, exit codes."""
import json
import subprocess
import sys

from conftest import ROOT, run_cli


def test_check_human():
    p = run_cli("check", "specs/resnet18.yaml")
    assert p.returncode == 0 and p.stderr == ""
    assert "ok specs/resnet18.yaml: resnet18  image [3, 224, 224] -> logits [1000]" in p.stdout
    assert "params 11,689,512" in p.stdout and "1,814,073,344" in p.stdout
    assert "Ws at layer2.0: conv1x1 [64, 56, 56] -> [128, 28, 28], stride 2, 8,448 params" in p.stdout


def test_check_several_files_fails_if_any_fails():
    p = run_cli("check", "specs/resnet18.yaml", "tests/broken/unknown_op.yaml")
    assert p.returncode == 1 and "ok specs/resnet18.yaml" in p.stdout and "unknown op" in p.stderr


def test_check_json_is_one_object(tmp_path):
    p = run_cli("check", "specs/cifar_resnet20_a.yaml", "--json")
    d = json.loads(p.stdout)
    assert d["projections"][0] == {"at": "layer2.0", "kind": "zeropad", "from": [16, 32, 32], "to": [32, 16, 16],
                                   "stride": 2, "params": 0}


def test_strict_turns_warnings_into_failure(tmp_path):
    f = tmp_path / "w.yaml"
    f.write_text("resgraph: 1\nname: w\ninput: {shape: [3, 8, 8]}\nlayers:\n  - conv: {out: 4, kernel: 3}\n  - bn\n")
    assert run_cli("check", str(f)).returncode == 0
    p = run_cli("check", str(f), "--strict")
    assert p.returncode == 1 and f"{f}:5:5: warning: 'conv1' has a bias right before a bn" in p.stderr


def test_summary_table():
    p = run_cli("summary", "specs/resnet18.yaml")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    for col in ("Layer (path)", "Op", "Output shape", "Params", "MACs", "Connected to"):
        assert col in out
    ws_rows = [l for l in out.splitlines() if l.startswith("+ ")]
    assert len(ws_rows) == 6 and ws_rows[0].startswith("+ layer2.0.shortcut.conv") and "(Ws)" in ws_rows[0]
    add = next(l for l in out.splitlines() if l.startswith("layer2.0 ") and " add " in l)
    assert add.rstrip().endswith("  layer1.1.post (via Ws)")
    assert next(l for l in out.splitlines() if l.startswith("layer1.0 ")).rstrip().endswith("  maxpool")
    assert "11,689,512" in out and "1,814,073,344" in out and "Inserted shortcut projections (Ws): 3, 173,824 params" in out


def test_summary_depth_collapses():
    p = run_cli("summary", "specs/resnet50.yaml", "--depth", "1")
    rows = [l.split()[0] for l in p.stdout.splitlines()[2:] if l.strip()]
    assert rows[:9] == ["image", "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    assert "25,557,032" in p.stdout


def test_summary_of_a_broken_spec():
    p = run_cli("summary", "tests/broken/unknown_op.yaml")
    assert p.returncode == 1 and "did you mean 'conv'" in p.stderr


def test_graph_command():
    p = run_cli("graph", "specs/residual_mlp.yaml")
    assert p.returncode == 0
    assert p.stdout.startswith("def residual_mlp(features: f32[128]):")
    assert "block_shortcut = linear(features, out=256, bias=False)" in p.stdout


def test_schema_command_matches_committed_file():
    p = run_cli("schema")
    assert p.returncode == 0
    assert json.loads(p.stdout) == json.loads((ROOT / "docs" / "resgraph.schema.json").read_text()), \
        "docs/resgraph.schema.json is stale: run `resgraph schema -o docs/resgraph.schema.json`"


def test_launchers():
    for cmd in ([sys.executable, "-m", "resgraph"], [sys.executable, "cli.py"]):
        p = subprocess.run(cmd + ["check", "specs/resnet18.yaml", "--json"], capture_output=True, text=True, cwd=ROOT)
        assert p.returncode == 0 and json.loads(p.stdout)["params"] == 11_689_512
    p = run_cli("--version")
    assert p.returncode == 0 and "resgraph" in p.stdout


def test_usage_error_exit_code():
    p = run_cli("check")
    assert p.returncode == 2 and "Missing argument" in p.stderr


def test_check_reads_standard_input():
    import subprocess as sp
    from conftest import resgraph_cmd
    text = "resgraph: 1\nname: t\ninput: {shape: [3, 8, 8]}\nlayers:\n  - cnov: {out: 4, kernel: 3}\n"
    p = sp.run(resgraph_cmd() + ["check", "-"], input=text, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1 and "<stdin>:5:5: error: unknown op or block 'cnov'" in p.stderr
    assert "  - cnov: {out: 4, kernel: 3}" in p.stderr
    good = (ROOT / "specs" / "resnet18.yaml").read_text()
    # its labels file (imagenet_classes.txt) is read relative to the working directory, as a file name is
    p = sp.run(resgraph_cmd() + ["check", "-", "--json"], input=good, capture_output=True, text=True,
               cwd=ROOT / "specs")
    assert p.returncode == 0 and json.loads(p.stdout)["params"] == 11_689_512


def test_bench_script_runs():
    """A smoke run keeps bench/check_speed.py working; its numbers are printed, never asserted."""
    p = subprocess.run([sys.executable, "bench/check_speed.py", "--quick", "--repeat", "1"], capture_output=True,
                       text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "ratio" in p.stdout and "per-node time" in p.stdout


def test_one_version_everywhere():
    """pip's metadata (pyproject.toml reads resgraph/version.py), the package and the CLI say the same."""
    import importlib.metadata

    import resgraph
    p = run_cli("--version")
    assert importlib.metadata.version("resgraph") == resgraph.__version__
    assert p.returncode == 0 and p.stdout.strip() == f"resgraph, version {resgraph.__version__}"
