"""Op plugins (resgraph/ops/plugins.py): the example package examples/resgraph-eca installed with pip (into
a folder on PYTHONPATH: the same entry points and dist-info a venv holds), a spec naming its op checked
without torch, compiled and run; and broken plugins, each refused by a clean error that names it."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

EXAMPLE = ROOT / "examples" / "resgraph-eca"
SPEC = EXAMPLE / "specs" / "eca_resnet20.yaml"


def _run(args, path, timeout=120):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, path)), "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """pip install of the example (from a copy: setuptools builds in the source tree) into a folder."""
    tmp = tmp_path_factory.mktemp("plugin")
    src = shutil.copytree(EXAMPLE, tmp / "src", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--no-index", "--target", str(tmp / "site"), str(src)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return tmp / "site"


def test_check_imports_no_torch(installed):
    """`check` loads the plugin's OpDef alone: its lowerings (and torch) stay unimported."""
    code = textwrap.dedent(f"""
        import sys, resgraph
        c = resgraph.check({str(SPEC)!r})
        from resgraph.ops import OPS
        assert OPS["eca"].plugin == "resgraph-eca", OPS["eca"].plugin
        print(c.params, sorted(m for m in sys.modules if m == "torch" or m.startswith("resgraph_eca")))
    """)
    p = _run(["-c", code], [installed])
    assert p.returncode == 0, p.stderr
    assert p.stdout.split(maxsplit=1) == ["272501", "['resgraph_eca', 'resgraph_eca.op']\n"]


def test_compiled_and_run(installed, tmp_path):
    """compile lowers it to ONNX and PyTorch, parity finds them equal, run uses it (the three commands
    in one process); the plugin's own tests (against ECA-Net's reference layer) pass."""
    import numpy as np
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((3, 32, 32), dtype=np.float32))
    out = tmp_path / "c"
    code = textwrap.dedent(f"""
        from click.testing import CliRunner
        from resgraph.cli import cli
        for args in (["compile", {str(SPEC)!r}, "-o", {str(out)!r}], ["parity", {str(out)!r}],
                     ["run", {str(out)!r}, {str(tmp_path / "x.npy")!r}]):
            r = CliRunner().invoke(cli, args)
            print(args[0], r.exit_code, r.output.replace("\\n", " | "))
    """)
    p = _run(["-c", code], [installed])
    assert p.returncode == 0, p.stderr
    lines = {line.split()[0]: line for line in p.stdout.splitlines() if line.split()}
    assert lines["compile"].startswith("compile 0 compiled eca_resnet20"), p.stdout
    assert lines["parity"].startswith("parity 0") and "parity ok" in lines["parity"], p.stdout
    assert lines["run"].startswith("run 0") and "x.npy" in lines["run"], p.stdout
    p = _run(["-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "-c", os.devnull, "--rootdir", str(EXAMPLE),
              str(EXAMPLE / "tests")], [installed])
    assert p.returncode == 0, p.stdout[-3000:]


def _plugin(root, dist, ops, files):
    """An installed distribution as pip leaves it: a package and its dist-info with entry points."""
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[resgraph.ops]\n" + "".join(f"{k} = {v}\n" for k, v in ops.items()))
    for name, text in files.items():
        (root / name).write_text(textwrap.dedent(text))


GOOD = ["import resgraph_eca"]


@pytest.mark.parametrize("dist, ops, files, says", [
    ("raising-op", {"eca": "raising:ECA"}, {"raising.py": "raise RuntimeError('no CUDA here')"},
     "plugin raising-op (entry point eca = raising:ECA) failed to load: RuntimeError: no CUDA here"),
    ("clashing-op", {"relu": "clash:RELU", "eca": "clash:RELU"}, {"clash.py": "RELU = None"},
     "plugin clashing-op (entry point relu = clash:RELU) registers op 'relu', a name resgraph's own ops already use"),
    ("misnamed-op", {"eca": "misnamed:OP"},
     {"misnamed.py": "from resgraph.ops import OPS\nimport dataclasses\nOP = dataclasses.replace(OPS['relu'])\n"},
     "is registered as 'eca' but its OpDef is named 'relu'"),
    ("no-lowering", {"eca": "nolower:OP"},
     {"nolower.py": "from resgraph.ops import OPS\nimport dataclasses\nOP = dataclasses.replace(OPS['relu'], name='eca')\n"},
     "needs its lowerings as 'module:function' strings"),
])
def test_broken_plugin_is_named(tmp_path, write_spec, dist, ops, files, says):
    """A plugin that raises, clashes with a built-in name or breaks the table's rules: exit 1, the spec's
    line, the plugin named, a hint; the built-ins keep working when no spec names a plugin op."""
    _plugin(tmp_path, dist, ops, files)
    spec = write_spec(SPEC.read_text())
    p = _run(["-m", "resgraph", "check", spec], [tmp_path])
    assert p.returncode == 1, p.stdout + p.stderr
    assert says in p.stderr and f"{spec}:" in p.stderr and "hint:" in p.stderr and p.stdout == "", p.stderr
    p = _run(["-m", "resgraph", "check", str(ROOT / "specs" / "cifar_resnet20_b.yaml")], [tmp_path])
    assert p.returncode == 0, p.stderr


def test_unknown_op_hint_lists_plugin_ops(installed, write_spec):
    """A misspelt plugin op gets the "did you mean" of a built-in one."""
    spec = write_spec(SPEC.read_text().replace("        - eca ", "        - ecaa "))
    p = _run(["-m", "resgraph", "check", spec], [installed])
    assert p.returncode == 1 and "unknown op or block 'ecaa'" in p.stderr and "did you mean 'eca'" in p.stderr, p.stderr
