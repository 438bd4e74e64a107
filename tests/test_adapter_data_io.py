"""Batches as users hold them, and BlockGradients files (safetensors, torch.save)."""

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from invhvp.adapters import BatchError, BlockGradients, per_sample_gradients  # noqa: E402
from invhvp.errors import DTypeError, InputError, ShapeError  # noqa: E402

F = torch.nn.functional


def ce(m, b):
    return F.cross_entropy(m(b[0]), b[1], reduction="none")


def setup(n=10, dtype=torch.float64):
    torch.manual_seed(0)
    model = (
        torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).to(dtype).eval()
    )
    g = torch.Generator().manual_seed(0)
    return model, torch.randn(n, 3, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


@pytest.fixture(scope="module")
def ref():
    model, X, y = setup()
    return per_sample_gradients(model, ce, [(X[:4], y[:4]), (X[4:], y[4:])], chunk_size=3).flat()


# ------------------------------------------------------------------------------ batches


def test_one_batch_forms(ref):
    model, X, y = setup()
    for data in ((X, y), [X, y]):  # a tuple/list of tensors is ONE batch
        g = per_sample_gradients(model, ce, data)
        assert g.n == 10
        torch.testing.assert_close(g.flat(), ref)
    g = per_sample_gradients(
        model, lambda m, b: F.cross_entropy(m(b["x"]), b["y"], reduction="none"), {"x": X, "y": y}
    )
    torch.testing.assert_close(g.flat(), ref)

    # a bare tensor is one batch too (an unsupervised loss), and [X] a list holding that batch
    def unsupervised(m, x):
        return m(x).logsumexp(-1)

    assert per_sample_gradients(model, unsupervised, X).n == 10
    assert per_sample_gradients(model, unsupervised, [X]).n == 10
    # several single-tensor batches: 1-tuples
    g = per_sample_gradients(model, lambda m, b: unsupervised(m, b[0]), [(X[:4],), (X[4:],)])
    assert g.n == 10
    with pytest.raises(ShapeError, match=r"ONE batch.*\[\(X1,\), \(X2,\)\]"):
        per_sample_gradients(model, unsupervised, [X[:4], X[4:]])


def test_many_batch_forms(ref):
    model, X, y = setup()
    ds = torch.utils.data.TensorDataset(X, y)
    loaders = (
        torch.utils.data.DataLoader(ds, batch_size=4),  # yields lists [X_b, y_b]
        [(X[:4], y[:4]), [X[4:], y[4:]]],
        ((X[:4], y[:4]), (X[4:], y[4:])),
        ((X[i : i + 3], y[i : i + 3]) for i in range(0, 10, 3)),  # a generator
    )
    for data in loaders:
        g = per_sample_gradients(model, ce, data)
        torch.testing.assert_close(g.flat(), ref)


def test_batch_encoding_is_one_batch():
    transformers = pytest.importorskip("transformers")
    model, X, y = setup()
    enc = transformers.BatchEncoding({"x": X, "y": y})

    def loss(m, b):
        return F.cross_entropy(m(b["x"]), b["y"], reduction="none")

    assert per_sample_gradients(model, loss, enc).n == 10
    assert per_sample_gradients(model, loss, [enc, enc]).n == 20


def test_bad_data_raises_typed_errors_naming_data():
    model, X, y = setup()
    bad = (
        (3, "data: expected an iterable of batches"),
        (None, "data: expected an iterable of batches"),
        ("text", "data: expected an iterable of batches"),
        (X.numpy(), r"numpy.*torch\.as_tensor"),
        ([1, 2, 3], "data: batch 0 is a int"),
        ([{"text": "hello", "x": X}], r"data: batch 0 contains a str at \['text'\].*return_tensors"),
        ((X, y.numpy()), r"data contains a ndarray at \[1\].*torch\.as_tensor"),
        ([(X, [1, 2])], r"data: batch 0 contains a int at \[1\]\[0\]"),
    )
    for data, match in bad:
        with pytest.raises(BatchError, match=match) as info:
            per_sample_gradients(model, ce, data)
        assert isinstance(info.value, InputError) and isinstance(info.value, DTypeError)
    with pytest.raises(
        ShapeError, match=r"data has tensors with different leading sizes \[4, 10\].*ONE batch"
    ):
        per_sample_gradients(model, ce, (X, y[:4]))
    with pytest.raises(ShapeError, match=r"data: batch 1 has tensors with different leading sizes"):
        per_sample_gradients(model, ce, [(X, y), (X, y[:4])])
    with pytest.raises(ShapeError, match="0-d tensor"):
        per_sample_gradients(model, ce, (X, torch.tensor(1)))
    with pytest.raises(InputError, match="data: yielded no batch"):
        per_sample_gradients(model, ce, iter([]))


# ------------------------------------------------------------------------ saving, loading


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_safetensors_roundtrip(tmp_path, dtype):
    model, X, y = setup(dtype=dtype)
    g = per_sample_gradients(model, ce, (X, y), blocks="module")
    path = tmp_path / "g.safetensors"
    g.save(path)
    h = BlockGradients.load(path)
    assert h.names == g.names == ["0", "2"] and h.param_names == g.param_names
    assert h.shapes == g.shapes == {"0.weight": (4, 3), "0.bias": (4,), "2.weight": (3, 4), "2.bias": (3,)}
    assert h.info == g.info and h.info["engine"] == "hooks"
    assert h.dtype == dtype and len(h) == 2
    for a, b in zip(h, g):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(h.losses, g.losses, rtol=0, atol=0)
    # a plain safetensors reader sees tensors and JSON metadata: no pickle anywhere
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == ["block.0", "block.1", "losses"]
        assert f.metadata()["format"] == "invhvp.BlockGradients"


def test_load_refuses_other_files(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.ones(2)}, str(other))
    with pytest.raises(InputError, match="not one written by BlockGradients.save"):
        BlockGradients.load(other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="path: cannot read"):
        BlockGradients.load(junk)


def test_torch_save_and_weights_only_load(tmp_path):
    model, X, y = setup()
    g = per_sample_gradients(model, ce, (X, y))
    path = tmp_path / "g.pt"
    torch.save(g, path)
    h = torch.load(path, weights_only=True)  # torch's default; the class is allow-listed on import
    assert isinstance(h, BlockGradients) and h.names == g.names and h.info == g.info
    torch.testing.assert_close(h.flat(), g.flat(), rtol=0, atol=0)
    # a process that has not imported invhvp.adapters' BlockGradients gets torch's refusal,
    # and one that has loads it (documented in BlockGradients)
    fresh = f"import torch; torch.load({str(path)!r}, weights_only=True)"
    r = subprocess.run([sys.executable, "-c", fresh], capture_output=True, text=True)
    assert r.returncode != 0 and "BlockGradients" in r.stderr
    ok = f"from invhvp.adapters import BlockGradients; import torch; print(torch.load({str(path)!r}).n)"
    r = subprocess.run([sys.executable, "-c", ok], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "10"


def test_numpy_blocks_still_work_downstream():
    """BlockGradients stays a sequence of (n, d_l) tensors for the solvers."""
    model, X, y = setup()
    g = per_sample_gradients(model, ce, (X, y))
    assert [tuple(b.shape) for b in g] == [(10, 12), (10, 4), (10, 12), (10, 3)]
    assert np.allclose(np.concatenate([b.numpy() for b in g], axis=1), g.flat().numpy())


def test_per_sample_gradients_streamed_to_a_store(tmp_path):
    import numpy as np

    import invhvp as ih
    from invhvp.adapters import per_sample_gradients

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
    X, y = torch.randn(23, 5, dtype=torch.float64), torch.randint(0, 3, (23,))

    def loss(m, b):
        return torch.nn.functional.cross_entropy(m(b[0]), b[1], reduction="none")

    ref = per_sample_gradients(model, loss, (X, y))
    got = per_sample_gradients(model, loss, (X, y), chunk_size=5, store=tmp_path / "g")
    assert got.info["store"] == str(tmp_path / "g")
    for a, b in zip(ref.blocks, got.blocks):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    store = ih.GradientStore.open(tmp_path / "g")
    assert store.n == 23 and store.sizes == ref.sizes and store.fingerprint.startswith("sha256:")
    # the store is accepted where per-block gradient arrays are
    T = [g[:3].numpy() for g in ref.blocks]
    np.testing.assert_allclose(
        ih.influence_matrix(store, T), ih.influence_matrix([g.numpy() for g in ref.blocks], T), rtol=1e-10
    )
    # appending to an open store adds rows
    with ih.GradientStore.open(tmp_path / "g", mode="a") as st:
        per_sample_gradients(model, loss, (X[:4], y[:4]), store=st)
    assert ih.GradientStore.open(tmp_path / "g").n == 27
