"""The runtime's parts against references: preprocess vs torchvision's own transforms, the manifest's
versions, back-end selection, decoding of every image kind a user can hand it, and what it imports."""
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import ROOT
from resgraph.manifest import FORMAT, ArtifactError, Manifest, read_manifest
from resgraph.errors import DataError
from resgraph.runtime import BackendError, Options, Preprocess, choose, expand, open_session
from resgraph.runtime.inputs import Item, load
from resgraph.runtime.preprocess import PIL_FILTERS, InputError

IMAGENET = {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth, non-symmetric RGB picture with noise: resampling differences would show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.stack([xx / w * 255, yy / h * 255, (xx * yy) / (w * h) * 255], -1) + rng.normal(0, 20, (h, w, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


def jpeg_roundtrip(im):
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return Image.open(io.BytesIO(buf.getvalue()))


def test_interpolation_names_are_the_spec_languages():
    from resgraph.spec.model import INTERPOLATIONS
    assert set(PIL_FILTERS) == set(INTERPOLATIONS) and INTERPOLATIONS[0] == "bilinear"
    from PIL.Image import Resampling
    assert PIL_FILTERS == {n: getattr(Resampling, n.upper()).value for n in PIL_FILTERS}


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (224, 224), (100, 80), (257, 301), (640, 480)])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_imagenet_eval_transform_equals_torchvisions(size, interpolation):
    """resize 256 -> centre crop 224 -> ToTensor -> Normalize, computed as torchvision computes it."""
    from torchvision import transforms as T
    mode = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC,
            "nearest": T.InterpolationMode.NEAREST}[interpolation]
    tv = T.Compose([T.Resize(256, interpolation=mode), T.CenterCrop(224), T.ToTensor(),
                    T.Normalize(IMAGENET["mean"], IMAGENET["std"])])
    pre = Preprocess.resolve({**IMAGENET, "interpolation": interpolation}, (3, 224, 224))
    im = jpeg_roundtrip(photo(*size))
    ours, ref = pre.image(im), tv(im).numpy()
    assert ours.shape == ref.shape == (3, 224, 224) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= 1e-6


@pytest.mark.parametrize("size", [(200, 150), (300, 224), (224, 100)])
def test_crop_only_pads_like_torchvisions_center_crop(size):
    from torchvision import transforms as T
    pre = Preprocess.resolve({"crop": 224}, (3, 224, 224))
    im = photo(*size)
    ref = T.Compose([T.CenterCrop(224), T.ToTensor()])(im).numpy()
    assert np.abs(pre.image(im) - ref).max() == 0


def test_no_geometry_keys_is_a_plain_resize_to_the_input_size():
    from torchvision import transforms as T
    pre = Preprocess.resolve({"mean": [0.5], "std": [0.25]}, (1, 32, 48))
    im = photo(100, 70).convert("L")
    ref = T.Compose([T.Resize((32, 48)), T.ToTensor(), T.Normalize([0.5], [0.25])])(im).numpy()
    assert np.abs(pre.image(im) - ref).max() <= 1e-6


def test_greyscale_to_rgb_and_back():
    rgb = Preprocess.resolve({}, (3, 8, 8))
    grey = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, "L")
    x = rgb.image(grey)
    assert x.shape == (3, 8, 8) and np.array_equal(x[0], x[2])
    assert Preprocess.resolve({}, (1, 8, 8)).image(photo(8, 8)).shape == (1, 8, 8)


def test_sixteen_bit_images_keep_their_depth():
    """Pillow's convert('L') clips 16-bit values at 255; the runtime scales by 65535 instead."""
    pre = Preprocess.resolve({}, (1, 8, 8))
    v = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    im = Image.fromarray(v)
    assert im.mode == "I;16"
    x = pre.image(im)
    assert np.allclose(x[0], v / 65535.0, atol=1e-6)


def test_palette_rgba_and_exif_orientation(tmp_path):
    pre = Preprocess.resolve({}, (3, 16, 24))
    upright = photo(24, 16, seed=3)
    want = pre.image(upright)
    # RGBA: alpha dropped, colours kept
    upright.convert("RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(pre.file(str(tmp_path / "rgba.png")), want)
    # palette with transparency: decoded through RGBA as Pillow asks, no warning
    p = upright.quantize(64)
    p.info["transparency"] = 0
    p.save(tmp_path / "pal.png", transparency=0)
    assert np.array_equal(pre.file(str(tmp_path / "pal.png")), pre.image(p.convert("RGBA")))
    # EXIF orientation 6 ("rotate 90 CW to view"): the pixels are stored rotated
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rotated.png", exif=exif)
    assert np.array_equal(pre.file(str(tmp_path / "rotated.png")), want)


def test_gif_first_frame_and_formats(tmp_path):
    pre = Preprocess.resolve({}, (3, 16, 16))
    frames = [photo(16, 16, seed=s) for s in (1, 2)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with Image.open(tmp_path / "anim.gif") as g:
        first = pre.image(g.convert("RGB"))
    assert np.array_equal(pre.file(str(tmp_path / "anim.gif")), first)
    for fmt in ("bmp", "tiff", "webp", "jpeg", "png"):
        frames[0].save(tmp_path / f"x.{fmt}")
        assert pre.file(str(tmp_path / f"x.{fmt}")).shape == (3, 16, 16)


def bad_files(folder):
    """Every broken input a user can hand `run`, by name."""
    good = io.BytesIO()
    photo(8, 8).convert("L").save(good, "PNG")
    data = good.getvalue()
    files = {"corrupt.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "truncated.png": data[: len(data) // 2],
             "empty.png": b"", "notes.txt": b"not an image\n", "fake.jpg": b"\xff\xd8\xff\xe0" + b"\x00" * 40}
    for name, content in files.items():
        (folder / name).write_bytes(content)
    np.save(folder / "wrong_shape.npy", np.zeros((3, 8, 8), np.float32))
    (folder / "broken.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    np.save(folder / "nan.npy", np.full((1, 8, 8), np.nan, np.float32))
    return sorted([*files, "wrong_shape.npy", "broken.npy", "nan.npy"])


def test_every_bad_input_is_an_input_error(tmp_path):
    pre = Preprocess.resolve({}, (1, 8, 8))
    for name in bad_files(tmp_path):
        [item] = expand([str(tmp_path / name)], None, (1, 8, 8))
        with pytest.raises(InputError):
            load(item, pre)
    with pytest.raises(InputError, match="no such file"):
        load(Item(str(tmp_path / "absent.png")), pre)


FUZZ_FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]
FUZZ_HOWS = ("clean", "tail", "pixels", "flips", "magic", "cut", "empty")
# what the decoder must make of each kind of file: a sample, an InputError, or either
FUZZ_INTENT = {"clean": "ok", "tail": "ok", "pixels": "ok", "flips": "either", "magic": "refused", "cut": "refused",
               "empty": "refused"}


def fuzz_file(fmt: str, how: str, rng) -> bytes:
    """A valid 20 x 12 file of `fmt`, changed as `how` says:
    clean   unchanged
    tail    random bytes after its end (every one of these formats says where it ends)
    pixels  random bytes flipped in the pixel data of an uncompressed BMP or TIFF (others: clean)
    flips   random bytes flipped anywhere, maybe truncated too: damage of unknown consequence
    magic   its first 1-4 bytes zeroed: no format's signature left
    cut     truncated to 20-90% of its length
    empty   nothing"""
    buf = io.BytesIO()
    photo(20, 12).save(buf, fmt)
    data = bytearray(buf.getvalue())
    if how == "tail":
        data += rng.integers(0, 256, int(rng.integers(1, 300)), dtype=np.uint8).tobytes()
    elif how == "pixels" and fmt in ("BMP", "TIFF"):
        with Image.open(io.BytesIO(bytes(data))) as im:
            [tile] = im.tile
        assert tile.codec_name == "raw" and tile.offset + 20 * 12 * 3 <= len(data), tile
        for at in rng.integers(tile.offset, tile.offset + 20 * 12 * 3, int(rng.integers(1, 50))):
            data[at] = int(rng.integers(0, 256))
    elif how == "flips":
        for _ in range(int(rng.integers(1, 13))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        data = data[: max(1, len(data) * (100 - int(rng.integers(0, 101))) // 100)]
    elif how == "magic":
        k = int(rng.integers(1, 5))
        data[:k] = bytes(k)
    elif how == "cut":
        data = data[: int(len(data) * rng.uniform(0.2, 0.9))]
    elif how == "empty":
        data = bytearray()
    return bytes(data)


def fuzz_decode(path, fmt: str, how: str, seed: int):
    """Write the fuzzed file and decode it: (the sample or the InputError's message, the clean sample)."""
    pre = Preprocess.resolve({}, (3, 8, 8))
    path.write_bytes(fuzz_file(fmt, how, np.random.default_rng(seed)))
    clean = pre.image(Image.open(io.BytesIO(fuzz_file(fmt, "clean", None))))
    try:
        x = pre.file(str(path))
    except InputError as e:
        return str(e), clean
    assert x.shape == (3, 8, 8) and x.dtype == np.float32
    return x, clean


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(FUZZ_FORMATS), st.sampled_from(FUZZ_HOWS), st.integers(0, 2**32 - 1))
def test_mutated_images_never_escape_as_anything_but_input_errors(tmp_path, fmt, how, seed):
    """Fuzz: a valid file of each format, changed: a sample or an InputError, and the one the change
    makes certain where it does (a file with bytes after its end still decodes, to the same pixels; one
    without its signature or cut short is refused)."""
    got, clean = fuzz_decode(tmp_path / f"fuzz.{fmt.lower()}", fmt, how, seed)
    intent = FUZZ_INTENT[how]
    if intent == "ok":
        assert not isinstance(got, str), (fmt, how, seed, got)
        if how != "pixels" or fmt not in ("BMP", "TIFF"):
            assert np.array_equal(got, clean), (fmt, how, seed)
    elif intent == "refused":
        assert isinstance(got, str), (fmt, how, seed)


@pytest.mark.filterwarnings("ignore:Tag data larger than file:UserWarning")   # Pillow on a cut TIFF: expected
def test_fuzzed_images_decode_as_many_as_the_generator_intended(tmp_path):
    """The fuzz counted: every format, every kind of change, seeded. As many decode and as many are
    refused as the generator meant (a decoder that refused every image would fail here), the intact
    ones to the clean file's pixels; the randomly flipped ones are a sample or an InputError."""
    counts = {"ok": 0, "refused": 0}
    intended = {"ok": 0, "refused": 0}
    flips = {"ok": 0, "refused": 0}
    for fmt in FUZZ_FORMATS:
        for how in FUZZ_HOWS:
            for seed in range(4):
                got, clean = fuzz_decode(tmp_path / f"fuzz.{fmt.lower()}", fmt, how, seed)
                outcome = "refused" if isinstance(got, str) else "ok"
                if FUZZ_INTENT[how] == "either":
                    flips[outcome] += 1
                    continue
                intended[FUZZ_INTENT[how]] += 1
                counts[outcome] += 1
                assert outcome == FUZZ_INTENT[how], (fmt, how, seed, got if outcome == "refused" else "decoded")
                if how in ("clean", "tail"):
                    assert np.array_equal(got, clean), (fmt, how, seed)
    assert intended == {"ok": 6 * 3 * 4, "refused": 6 * 3 * 4}
    assert counts == intended
    assert sum(flips.values()) == 6 * 4


def test_npy_inputs(tmp_path):
    pre = Preprocess.resolve({"mean": [0.3], "std": [0.38]}, (1, 8, 8))
    batch = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "batch.npy", batch)
    np.save(tmp_path / "one.npy", batch[0].astype(np.float64))
    items = expand([str(tmp_path)], None, (1, 8, 8))
    assert [i.name for i in items] == [f"{tmp_path}/batch.npy[{k}]" for k in range(5)] + [f"{tmp_path}/one.npy"]
    assert np.array_equal(load(items[3], pre), batch[3])          # as stored: not normalised again
    assert np.array_equal(load(items[5], pre), batch[0])


# --- the manifest -------------------------------------------------------------------------------

def test_manifest_round_trip_and_versions(digits_folder, tmp_path):
    m = read_manifest(digits_folder)
    assert m.format == FORMAT and m.input.name == "image" and m.input.sample_shape == (1, 8, 8)
    assert m.labels == tuple("0123456789") and m.preprocess["interpolation"] == "bilinear"
    assert Manifest.from_json(json.loads(json.dumps(m.to_json()))) == m
    d = m.to_json()
    with pytest.raises(ArtifactError, match="newer than this resgraph") as e:
        Manifest.from_json({**d, "format": FORMAT + 1, "resgraph_version": "9.0"})
    assert "upgrade resgraph" in e.value.hint
    old = {k: v for k, v in d.items() if k != "format"}
    with pytest.raises(ArtifactError, match="before manifests had a format") as e:
        Manifest.from_json(old)
    assert "recompile" in e.value.hint
    with pytest.raises(ArtifactError, match="damaged manifest"):
        Manifest.from_json({k: v for k, v in d.items() if k != "input"})


def test_compile_keeps_the_spec_beside_the_model(digits_folder):
    import hashlib
    m = read_manifest(digits_folder)
    text = (digits_folder / "spec.yaml").read_bytes()
    assert text == (ROOT / "specs" / "digits_resnet.yaml").read_bytes()
    assert hashlib.sha256(text).hexdigest() == m.spec_sha256 == m.artifacts["spec.yaml"].sha256


def test_torch_back_end_refuses_an_edited_spec_copy(digits_folder, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(digits_folder, folder)
    with open(folder / "spec.yaml", "a") as f:
        f.write("# edited\n")
    with pytest.raises(ArtifactError, match="changed after compiling"):
        open_session(str(folder), "torch-cpu")


def test_torch_back_end_does_not_need_the_labels_file(tmp_path):
    """A spec whose labels live in a file: the folder's spec.yaml rebuilds without it."""
    from resgraph.compile import compile_spec
    spec = (ROOT / "specs" / "digits_resnet.yaml").read_text().replace(
        'labels: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]', "labels: classes.txt")
    (tmp_path / "digits.yaml").write_text(spec)
    (tmp_path / "classes.txt").write_text("\n".join(f"digit {i}" for i in range(10)))
    c = compile_spec(str(tmp_path / "digits.yaml"), weights=str(ROOT / "specs/weights/digits_resnet.safetensors"),
                     out=str(tmp_path / "out"))
    with open_session(c.out, "torch-cpu") as s:
        assert s.labels[7] == "digit 7" and s.run(np.zeros((2, 1, 8, 8), np.float32)).shape == (2, 10)


# --- back ends ----------------------------------------------------------------------------------

def test_auto_says_what_it_picked_and_why(digits_folder):
    name, why = choose("auto", str(digits_folder))
    assert name == "ort-cpu"      # no GPU here (the CUDA tests cover the GPU order)
    assert "passed over tensorrt" in why and "ort-cuda" in why


def test_unusable_and_unknown_back_ends(digits_folder):
    with pytest.raises(BackendError, match="tensorrt back end is not usable") as e:
        choose("tensorrt", str(digits_folder))
    assert "pip install" in e.value.hint
    with pytest.raises(BackendError, match="unknown back end 'ort-cpo'") as e:
        choose("ort-cpo", str(digits_folder))
    assert "ort-cpu" in e.value.hint
    if "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
        with pytest.raises(BackendError) as e:
            choose("ort-cuda", str(digits_folder))
        assert "resgraph[gpu]" in e.value.hint


def test_sessions_agree_and_check_their_batches(digits_folder):
    x = np.random.default_rng(1).standard_normal((7, 1, 8, 8)).astype(np.float32)
    with open_session(str(digits_folder), "ort-cpu", Options(threads=1)) as a, open_session(str(digits_folder), "torch-cpu") as b:
        assert np.abs(a.run(x) - b.run(x)).max() <= 1e-4
        with pytest.raises(DataError, match=r"the model takes \[N, 1, 8, 8\]"):
            a.run(np.zeros((2, 3, 8, 8), np.float32))
        assert a.run(x.astype(np.float64)).shape == (7, 10)


def test_a_damaged_model_file_is_a_clear_error(digits_folder, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(digits_folder, folder)
    (folder / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match="model.onnx is not the file compile wrote"):
        open_session(str(folder), "ort-cpu")                      # what it loads is checked first
    with pytest.raises(BackendError, match="ONNX Runtime cannot load the model"):
        open_session(str(folder), "ort-cpu", Options(verify=False))


# --- what the ONNX Runtime path imports ---------------------------------------------------------

PROBE = """
import sys
from resgraph.cli import cli
for args in ({run!r}, {bench!r}):
    try:
        cli(args, standalone_mode=False)
    except SystemExit as e:
        assert not e.code, e.code
print("LOADED", sorted(m for m in sys.modules if m.split(".")[0] == "torch" or m in
      ("resgraph.frontend", "resgraph.spec", "resgraph.ir", "resgraph.passes", "resgraph.ops")))
"""


def test_run_and_bench_on_onnxruntime_import_neither_torch_nor_the_front_end(digits_folder):
    import importlib.util
    assert importlib.util.find_spec("torch") is not None, "install torch (the CI does) so this test can fail"
    samples = str(ROOT / "examples" / "digits" / "samples")
    probe = PROBE.format(run=["run", str(digits_folder), samples, "--json"],
                         bench=["bench", str(digits_folder), "--batch", "1", "--duration", "0.05", "--warmup", "0"])
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == "LOADED []", p.stdout[-500:]
    # and the probe can fail: the torch back end does import both
    p = subprocess.run([sys.executable, "-c", probe.replace("'--json'", "'--json', '--backend', 'torch-cpu'")],
                       capture_output=True, text=True, cwd=ROOT)
    assert "'torch'" in p.stdout.strip().splitlines()[-1] and "resgraph.frontend" in p.stdout


def png_header_only(path, width: int, height: int) -> None:
    """A PNG that claims width x height (greyscale) and holds one empty IDAT: Pillow reads the size
    from the header, so a decompression bomb is refused before any pixel is decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_not_decoded(tmp_path):
    png_header_only(tmp_path / "bomb.png", 60_000, 60_000)     # 3.6 G pixels
    with pytest.raises(InputError, match="refused"):
        Preprocess.resolve({}, (1, 8, 8)).file(str(tmp_path / "bomb.png"))


def test_an_fp16_folder_runs_and_passes_parity_at_the_fp16_tolerance(tmp_path):
    from resgraph.compile import compile_spec
    from conftest import run_cli
    c = compile_spec(str(ROOT / "specs" / "digits_resnet.yaml"), weights=str(ROOT / "specs/weights/digits_resnet.safetensors"),
                     out=str(tmp_path / "fp16"), precision="fp16")
    p = run_cli("parity", c.out, "--json")
    r = json.loads(p.stdout)
    assert p.returncode == 0 and r["precision"] == "fp16" and r["pairs"][0]["tolerance"].startswith("|a-b| <= 0.02")
    assert 1e-5 < r["pairs"][0]["max_abs"] and r["pairs"][0]["top1_agreement"] == 1.0
