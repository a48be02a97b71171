"""mapped.py: a safetensors file as zero-copy numpy views gives exactly what safetensors' own loader gives."""
import numpy as np
import pytest

safetensors = pytest.importorskip("safetensors")
from safetensors.numpy import load_file, save_file  # noqa: E402

from resgraph.mapped import open_mapped  # noqa: E402


def test_views_equal_safetensors_load_for_every_numpy_dtype(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "conv.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "half": rng.standard_normal((5, 7)).astype(np.float16),
        "double": rng.standard_normal(4),
        "bn.num_batches_tracked": np.array(12, dtype=np.int64),   # a 0-d tensor
        "empty": np.zeros((0, 3), dtype=np.float32),
        "mask": rng.random(9) > 0.5,
        "bytes": rng.integers(0, 255, (2, 2), dtype=np.uint8),
        "i32": rng.integers(-9, 9, 6, dtype=np.int32),
    }
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path), metadata={"untrained": "true"})
    m = open_mapped(str(path))
    ref = load_file(str(path))
    assert set(m.tensors) == set(ref) and m.metadata == {"untrained": "true"}
    for k, v in ref.items():
        got = m.tensors[k]
        assert got.dtype == v.dtype and got.shape == v.shape and np.array_equal(got, v), k
        assert not got.flags.writeable and got.flags.c_contiguous
        if got.size:
            assert got.base is not None   # a view, not a copy


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_file_raises_safetensors_error(tmp_path, damage):
    path = tmp_path / "w.safetensors"
    save_file({"a": np.ones((64, 64), np.float32)}, str(path))
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:-100], "garbage": b"not a checkpoint at all", "empty": b""}[damage])
    with pytest.raises((safetensors.SafetensorError, OSError, ValueError)):
        open_mapped(str(path))


def test_bfloat16_is_widened_to_float32_exactly(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch
    path = tmp_path / "bf16.safetensors"
    x = torch.randn(5, 7).to(torch.bfloat16)
    save_torch({"w": x, "b": torch.tensor([1.0, -0.0, float("inf")], dtype=torch.bfloat16)}, str(path))
    m = open_mapped(str(path))
    assert m.tensors["w"].dtype == np.float32 and np.array_equal(m.tensors["w"], x.float().numpy())
    assert m.tensors["b"].tolist() == [1.0, -0.0, float("inf")] and not m.tensors["w"].flags.writeable
