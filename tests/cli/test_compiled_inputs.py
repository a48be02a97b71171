"""check, summary and graph take a spec; given a compiled folder (or its model.onnx) they read the
spec compiled into it (checked against the manifest) and say so; given a bare ONNX file or another
folder, one line says what they take."""
import shutil
import subprocess

from conftest import ROOT, resgraph_cmd


def run(*args, cwd=None):
    return subprocess.run(resgraph_cmd() + list(args), capture_output=True, text=True, cwd=cwd)


def compiled(tmp_path):
    out = tmp_path / "digits"
    p = run("compile", str(ROOT / "specs" / "digits_resnet.yaml"), "-o", str(out))
    assert p.returncode == 0, p.stderr
    return out


def test_a_compiled_folder_is_checked_and_summarised_from_its_spec(tmp_path):
    out = compiled(tmp_path)
    for args in (["check", str(out)], ["check", str(out / "model.onnx")], ["summary", str(out), "--depth", "1"],
                 ["graph", str(out)]):
        p = run(*args)
        assert p.returncode == 0, (args, p.stderr)
        assert f"checking {out / 'spec.yaml'}" in p.stderr and "digits_resnet" in p.stdout
    assert "params 77,754" in run("check", str(out)).stdout
    # an edited spec.yaml is not the compiled one: refused, as the runtime refuses it
    (out / "spec.yaml").write_text((out / "spec.yaml").read_text() + "\n# edited\n")
    p = run("check", str(out))
    assert p.returncode == 1 and "changed after compiling" in p.stderr and p.stdout == ""


def test_a_bare_onnx_file_or_a_plain_folder_is_one_line_saying_what_check_takes(tmp_path):
    shutil.copy(compiled(tmp_path) / "model.onnx", tmp_path / "m.onnx")
    p = run("check", str(tmp_path / "m.onnx"))
    assert p.returncode == 1 and "takes a spec (YAML), not an ONNX model" in p.stderr and p.stdout == ""
    p = run("summary", str(ROOT / "specs"))
    assert p.returncode == 1 and "a folder, not a spec" in p.stderr
