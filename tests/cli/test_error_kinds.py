"""Which kind of ResgraphError each user mistake raises (resgraph/errors.py has the hierarchy).

For one real case of each kind: the class, that it is a ResgraphError (what the CLI catches), that
the message or location names the file or option, that the hint says what to do; and, through the
command line, exit status 1, the diagnostic and its hint on stderr, nothing on stdout and nothing
written.
"""
import errno
import os

import pytest

import resgraph
from conftest import ROOT, run_cli
from resgraph.errors import (ArtifactError, BackendError, DataError, OptionError, PathError, ResgraphError,
                             SpecError, WeightsError)

pytest.importorskip("safetensors", reason="safetensors is not installed")

SPEC = str(ROOT / "specs" / "digits_resnet.yaml")
WEIGHTS = str(ROOT / "specs" / "weights" / "digits_resnet.safetensors")


def kind_of(e: ResgraphError, cls, names: str) -> None:
    assert type(e) is cls, f"{type(e).__name__}, not {cls.__name__}: {e}"
    assert isinstance(e, ResgraphError)
    assert names in e.file or names in e.message, (names, e.file, e.message)
    assert e.hint.strip(), f"no hint: {e.message}"


@pytest.fixture(scope="module")
def graph():
    return resgraph.check(SPEC).graph


def _image_folder_without_val(root):
    """DIR/train/<class>/ but no DIR/val/: a layout load_data refuses."""
    (root / "train" / "zero").mkdir(parents=True)
    (root / "train" / "zero" / "a.png").write_bytes(b"not read: the layout is refused first")
    return root


def _fifo(path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    os.mkfifo(path)
    return str(path)


# --- the Python API -------------------------------------------------------------------------------

def test_a_missing_weights_file_is_a_path_error(graph, tmp_path):
    from resgraph.compile import load_weights
    missing = str(tmp_path / "nope.safetensors")
    with pytest.raises(PathError) as e:
        load_weights(missing, graph)
    kind_of(e.value, PathError, missing)
    assert "no such weights file" in e.value.message


def test_a_corrupt_checkpoint_is_a_weights_error(graph, tmp_path):
    from resgraph.compile import load_weights
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(WeightsError) as e:
        load_weights(str(bad), graph)
    kind_of(e.value, WeightsError, str(bad))
    assert "not a readable safetensors file" in e.value.message


def test_a_checkpoint_of_another_spec_is_a_weights_error(tmp_path):
    pytest.importorskip("torch", reason="torch is not installed")
    with pytest.raises(WeightsError) as e:
        resgraph.to_torch(ROOT / "specs" / "cifar_resnet20_a.yaml", weights=WEIGHTS)
    kind_of(e.value, WeightsError, WEIGHTS)
    assert "does not fit the spec" in e.value.message


def test_a_bad_data_folder_is_a_data_error(tmp_path):
    pytest.importorskip("torch", reason="torch is not installed")
    from resgraph.training.data import load_data
    folder = _image_folder_without_val(tmp_path / "data")
    with pytest.raises(DataError) as e:
        load_data(str(folder), resgraph.check(SPEC).spec)
    kind_of(e.value, DataError, str(folder))
    assert "train/ but no val/" in e.value.message
    with pytest.raises(DataError) as e:
        load_data(str(tmp_path / "nowhere"), resgraph.check(SPEC).spec)
    kind_of(e.value, DataError, str(tmp_path / "nowhere"))


def test_a_non_regular_path_is_a_path_error(graph, tmp_path):
    from resgraph.compile import load_weights
    fifo = _fifo(tmp_path / "pipe.safetensors")
    with pytest.raises(PathError) as e:   # refused before anything opens it: a pipe would block forever
        load_weights(fifo, graph)
    kind_of(e.value, PathError, fifo)
    assert "named pipe" in e.value.message
    with pytest.raises(PathError) as e:
        load_weights(str(tmp_path), graph)
    kind_of(e.value, PathError, str(tmp_path))
    assert "is a folder" in e.value.message


def test_the_environments_os_errors_are_path_errors(tmp_path):
    from resgraph.fileio import os_error
    e = os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x")))
    kind_of(e, PathError, str(tmp_path / "x"))
    assert "ENOSPC" in e.message and "disk is full" in e.hint
    pytest.importorskip("torch", reason="torch is not installed")
    from resgraph.backends.torch.checkpoint import writing
    with pytest.raises(PathError) as info:
        with writing(str(tmp_path / "w.safetensors")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / ".resgraph-tmp"))
    kind_of(info.value, PathError, str(tmp_path / "w.safetensors"))
    assert info.value.message.startswith("cannot write:") and "left as it was" in info.value.hint


def test_a_bad_compiled_folder_is_an_artifact_error(tmp_path):
    from resgraph.manifest import read_manifest
    with pytest.raises(ArtifactError) as e:
        read_manifest(str(tmp_path))
    kind_of(e.value, ArtifactError, str(tmp_path))
    assert "not a compiled folder" in e.value.message
    (tmp_path / "manifest.json").write_text('{"format": 1, "name": "x"}')
    with pytest.raises(ArtifactError) as e:
        read_manifest(str(tmp_path))
    kind_of(e.value, ArtifactError, "manifest.json")
    assert "damaged manifest" in e.value.message


def test_a_bad_option_is_an_option_error():
    from resgraph.backends.tensorrt.options import BatchProfile, BuildOptions
    with pytest.raises(OptionError) as e:
        BuildOptions(precision="fp8")
    kind_of(e.value, OptionError, "--precision")
    with pytest.raises(OptionError) as e:
        BatchProfile.parse("8:4:16")
    kind_of(e.value, OptionError, "--batch")


def test_an_unusable_back_end_is_a_backend_error():
    from resgraph.runtime import choose
    with pytest.raises(BackendError) as e:
        choose("ort-cpo", None)
    kind_of(e.value, BackendError, "ort-cpo")


def test_the_hierarchy():
    for name in resgraph.__all__:
        value = getattr(resgraph, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, ResgraphError), name
    from resgraph.backends.tensorrt.engine_json import EngineMismatch
    from resgraph.runtime import BackendError as RuntimeBackendError
    from resgraph.runtime import InputError
    assert issubclass(EngineMismatch, ArtifactError)
    assert RuntimeBackendError is BackendError and not issubclass(BackendError, SpecError)
    assert not issubclass(InputError, ResgraphError)   # a per-input signal, caught beside its input
    kinds = (SpecError, resgraph.WeightsError, DataError, resgraph.DownloadError, PathError, ArtifactError,
             BackendError, OptionError)
    assert all(not issubclass(a, b) for a in kinds for b in kinds if a is not b)   # no kind is another


def test_a_missing_spec_is_a_path_error_at_line_one(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(PathError) as e:
        resgraph.check(missing)
    kind_of(e.value, PathError, missing)
    assert (e.value.line, e.value.column) == (1, 1)   # what check --json reports for it


# --- the command line: exit 1, the diagnostic on stderr, nothing on stdout, nothing written ---------

def cli_refuses(args, names: str, says: str, out=None):
    p = run_cli(*args)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert p.stdout == "", p.stdout
    assert "Traceback" not in p.stderr and "internal error" not in p.stderr
    assert names in p.stderr and says in p.stderr and "error:" in p.stderr and "hint:" in p.stderr, p.stderr
    if out is not None:
        assert not os.path.exists(out), os.listdir(out)


def test_cli_missing_weights_file(tmp_path):
    missing, out = str(tmp_path / "nope.safetensors"), str(tmp_path / "out")
    cli_refuses(["compile", SPEC, "--weights", missing, "-o", out], missing, "no such weights file", out)


def test_cli_corrupt_checkpoint(tmp_path):
    bad, out = tmp_path / "bad.safetensors", str(tmp_path / "out")
    bad.write_bytes(b"garbage, not a checkpoint")
    cli_refuses(["compile", SPEC, "--weights", str(bad), "-o", out], str(bad), "not a readable safetensors file", out)


def test_cli_bad_data_folder(tmp_path):
    pytest.importorskip("torch", reason="torch is not installed")
    folder = _image_folder_without_val(tmp_path / "data")
    cli_refuses(["eval", SPEC, "--weights", WEIGHTS, "--data", str(folder)], str(folder), "train/ but no val/")


def test_cli_non_regular_path(tmp_path):
    fifo, out = _fifo(tmp_path / "pipe.safetensors"), str(tmp_path / "out")
    cli_refuses(["compile", SPEC, "--weights", fifo, "-o", out], fifo, "named pipe", out)


def test_cli_bad_compiled_folder(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    folder = tmp_path / "not_compiled"
    folder.mkdir()
    cli_refuses(["run", str(folder), str(ROOT / "examples" / "digits" / "samples")], str(folder),
                "not a compiled folder")


def test_cli_bad_option_combination(tmp_path):
    out = str(tmp_path / "out")
    cli_refuses(["compile", SPEC, "--precision", "bf16", "-o", out], "--precision", "it needs --engine", out)
    cli_refuses(["compile", SPEC, "--batch", "1:8:8", "-o", out], "--batch", "an engine option without --engine", out)
