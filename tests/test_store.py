"""GradientStore: round trips against independent references, on-disk format, validation."""

import json
import os

import numpy as np
import pytest

import invhvp as ih
from invhvp import _storeio as sio
from invhvp.errors import DeviceError, DTypeError, InputError, NonFiniteError, ShapeError

torch = pytest.importorskip("torch")

SIZES = [5, 3, 7]
NAMES = ["layer.0", "layer.1", "head"]


def ref(j, rows):
    """Row ``i`` of block ``j`` as a function of (i, j) alone (float64, exactly float32-valued)."""
    i = np.arange(rows.start, rows.stop)[:, None]
    c = np.arange(SIZES[j])[None, :]
    return (
        (((i * 7919 + c * 104729 + j * 13) % 1000003) / 1000003 - 0.5).astype(np.float32).astype(np.float64)
    )


def chunks(rows, kind="numpy", dtype=np.float32):
    out = [ref(j, rows).astype(dtype) for j in range(len(SIZES))]
    return [torch.from_numpy(x) for x in out] if kind == "torch" else out


def as_bf16_f32(x):
    """Independent reference: torch's own float32 -> bfloat16 -> float32 rounding."""
    return torch.from_numpy(np.asarray(x, np.float32)).to(torch.bfloat16).float().numpy()


@pytest.fixture
def path(tmp_path):
    return tmp_path / "store"


def filled(path, n=23, dtype="float32", step=6, **kw):
    st = ih.GradientStore.create(path, SIZES, dtype, names=NAMES, **kw)
    for s in range(0, n, step):
        st.append(chunks(slice(s, min(s + step, n)), "torch" if (s // step) % 2 else "numpy"))
    return st


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_round_trip_all_access_paths(path, dtype):
    n = 23
    filled(path, n, dtype).close()
    want = [ref(j, slice(0, n)) for j in range(3)]
    if dtype == "bfloat16":
        want = [as_bf16_f32(w) for w in want]
    with ih.GradientStore.open(path) as st:
        assert (st.n, st.sizes, st.names, st.dtype, len(st)) == (n, SIZES, NAMES, dtype, 3)
        seen = []
        for rows, blocks in st.iter_rows(4, dtype="float64"):
            seen.append(rows)
            for j, b in enumerate(blocks):
                assert b.dtype == np.float64 and b.shape == (rows.stop - rows.start, SIZES[j])
                np.testing.assert_array_equal(b, want[j][rows])  # float32-valued: exact
        assert seen == [slice(s, min(s + 4, n)) for s in range(0, n, 4)]
        for j in range(3):
            t = st.torch(j, dtype=torch.float64)
            np.testing.assert_array_equal(t.numpy(), want[j])
            got = np.concatenate([c for _, c in st.block_chunks(NAMES[j], 5)])
            np.testing.assert_array_equal(got, want[j])
            tparts = [c for _, c in st.block_chunks(j, 7, backend="torch", rows=slice(3, 20))]
            assert tparts[0].dtype == sio.torch_dtype(dtype)
            np.testing.assert_array_equal(torch.cat(tparts).double().numpy(), want[j][3:20])
        if dtype == "bfloat16":
            assert st[0].dtype == torch.bfloat16
            with pytest.raises(DTypeError, match="bfloat16"):
                st.numpy()
        else:
            mm = st[1]
            assert isinstance(mm, np.memmap) and mm.dtype == np.dtype(dtype) and not mm.flags.writeable
            np.testing.assert_array_equal(st["head"], want[2])


def test_on_disk_format_is_the_documented_one(path):
    st = filled(
        path,
        10,
        "float32",
        fingerprint={"model": "m", "params": ["a", "b"]},
        param_names=[["w"], ["v"], ["x", "y"]],
    )
    st.close()
    m = json.loads((path / "manifest.json").read_text())
    assert m["format"] == "invhvp.GradientStore" and m["version"] == 1 and m["n"] == 10
    assert (m["dtype"], m["byteorder"], m["layout"]) == ("float32", "little", "row-major")
    assert m["fingerprint"] == {"model": "m", "params": ["a", "b"]}
    for j, b in enumerate(m["blocks"]):
        assert (b["name"], b["size"]) == (NAMES[j], SIZES[j])
        raw = (path / b["file"]).read_bytes()
        assert raw == ref(j, slice(0, 10)).astype("<f4").tobytes()  # raw row-major little-endian, no header
    assert m["blocks"][2]["param_names"] == ["x", "y"]
    assert ih.GradientStore.open(path).param_names == [["w"], ["v"], ["x", "y"]]


def test_bfloat16_encoding_matches_torch_bits():
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.standard_normal(5000).astype(np.float32) * 10.0 ** rng.integers(-40, 38, 5000),
            np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 1e-40, -1e-45, 0.0, -0.0, 3.3e38], np.float32),
        ]
    )[None, :]
    mine = sio.encode_chunk(x, "bfloat16", "x")
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view("<u2")
    np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_array_equal(sio.encode_chunk(torch.from_numpy(x), "bfloat16", "x"), theirs)
    np.testing.assert_array_equal(sio.bf16_bits_to_f32(mine), as_bf16_f32(x))


def test_append_across_sessions_and_refresh(path):
    filled(path, 8).close()
    reader = ih.GradientStore.open(path)
    with ih.GradientStore.open(path, "a") as st:
        assert st.append(chunks(slice(8, 13), dtype=np.float64)) == 13
        a, b, c = chunks(slice(13, 15))
        assert st.append([np.asfortranarray(a), torch.from_numpy(b).T.contiguous().T, c[:, ::1]]) == 15
        assert st.append([np.zeros((0, d)) for d in SIZES]) == 15
    assert reader.n == 8 and reader.refresh() == 15
    got = np.concatenate([blocks[1] for _, blocks in reader.iter_rows(6)])
    np.testing.assert_array_equal(got, ref(1, slice(0, 15)))
    for p in path.iterdir():  # no temp files or stray bytes left
        if p.name.startswith("block_"):
            assert p.stat().st_size == 15 * SIZES[int(p.name[6:11])] * 4
    assert sorted(p.name for p in path.iterdir() if not p.name.startswith("block_")) == [
        ".lock",
        "manifest.json",
    ]


def test_torch_views_are_backed_by_the_file_and_copy_on_write(path):
    filled(path, 9).close()
    st = ih.GradientStore.open(path)
    t = st.torch(0)
    assert t.dtype == torch.float32 and tuple(t.shape) == (9, 5)
    t[0, 0] = 123.0  # private mapping: the file and other views are untouched
    assert float(st.numpy(0)[0, 0]) == float(ref(0, slice(0, 1))[0, 0])
    assert float(ih.GradientStore.open(path).torch(0)[0, 0]) != 123.0
    (_, blocks), *_ = st.iter_rows(4, backend="torch")
    assert isinstance(blocks[0], torch.Tensor) and blocks[0].dtype == torch.float32


def test_shard_rows_and_iter_rows_rows(path):
    st = filled(path, 23)
    parts = [st.shard(r, 3) for r in range(3)]
    assert parts == [slice(0, 8), slice(8, 16), slice(16, 23)]
    assert st.shard() == slice(0, 23)  # one process: every row
    got = [rows for rows, _ in st.iter_rows(5, rows=parts[1])]
    assert got == [slice(8, 13), slice(13, 16)]
    assert list(st.iter_rows(5, rows=slice(30, 40))) == []
    for rows, blocks in st.iter_rows(3, rows=slice(-5, None)):
        np.testing.assert_array_equal(blocks[2], ref(2, rows))
    st.close()


def test_empty_store(path):
    with ih.GradientStore.create(path, [4, 2]) as st:
        assert st.n == 0 and list(st.iter_rows(3)) == []
        assert [a.shape for a in st.numpy()] == [(0, 4), (0, 2)]
        assert tuple(st.torch(1).shape) == (0, 2)
        assert st.names == ["block0", "block1"] and st.fingerprint is None


def test_block_gradients_append_and_fingerprint(path):
    from invhvp.adapters import per_sample_gradients

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).eval()
    X, y = torch.randn(6, 3), torch.tensor([0, 1, 1, 0, 1, 0])
    g = per_sample_gradients(
        model, lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1], reduction="none"), [(X, y)]
    )
    fp = ih.fingerprint_module(model)
    with ih.GradientStore.create(
        path, g.sizes, names=g.names, param_names=g.param_names, fingerprint=fp
    ) as st:
        st.append(g)
    st = ih.GradientStore.open(path, fingerprint=fp)
    for a, b in zip(st, g):
        np.testing.assert_array_equal(a, b.numpy())
    with torch.no_grad():
        model[2].weight[1, 3] += 1e-3
    assert ih.fingerprint_module(model, samples=None) != fp
    with pytest.raises(InputError, match="fingerprint"):
        ih.GradientStore.open(path, fingerprint=ih.fingerprint_module(model))


def test_fingerprint_module_is_deterministic_and_sampled():
    torch.manual_seed(1)
    a = torch.nn.Linear(200, 100).to(torch.bfloat16)
    b = torch.nn.Linear(200, 100).to(torch.bfloat16)
    b.load_state_dict(a.state_dict())
    assert ih.fingerprint_module(a).startswith("sha256:")
    assert ih.fingerprint_module(a) == ih.fingerprint_module(b)
    assert ih.fingerprint_module(a, params=["bias"]) != ih.fingerprint_module(a)
    with torch.no_grad():
        b.weight.view(-1)[1] += 1  # entry 1 is not sampled (samples at 0, 4, 9, ...)
    assert ih.fingerprint_module(a) == ih.fingerprint_module(b)  # a documented blind spot
    assert ih.fingerprint_module(a, samples=None) != ih.fingerprint_module(b, samples=None)
    with torch.no_grad():
        b.weight.view(-1)[1] -= 1
        b.weight.view(-1)[-1] += 1  # the last entry is always sampled
    assert ih.fingerprint_module(a, samples=16) != ih.fingerprint_module(b, samples=16)
    with pytest.raises(InputError, match="params"):
        ih.fingerprint_module(a, params=["nope"])
    with pytest.raises(InputError, match="samples"):
        ih.fingerprint_module(a, samples=0)
    with pytest.raises(DTypeError, match="module"):
        ih.fingerprint_module(a.weight)


# ----------------------------------------------------------------------------- validation


def test_append_validation_leaves_the_store_unchanged(path):
    st = filled(path, 6)
    good = chunks(slice(6, 8))
    bad_cases = [
        (good[:2], ShapeError, "expected 3 arrays"),
        ([good[0], good[1][:, :2], good[2]], ShapeError, r"chunks\[1\] \(block 'layer.1'\).*3 columns"),
        ([good[0], good[1][:1], good[2]], ShapeError, "same number of rows"),
        ([good[0], good[1].ravel(), good[2]], ShapeError, "2-D"),
        ([good[0], good[1].astype(np.int64), good[2]], DTypeError, "floating"),
        ([good[0], good[1].tolist(), good[2]], DTypeError, "numpy array or torch tensor"),
        (good[0], ShapeError, "one \\(k, d_l\\) array per block"),
        (np.stack([good[0][:, :3]] * 3), ShapeError, "single|one \\(k, d_l\\) array per block"),
    ]
    for args, exc, match in bad_cases:
        with pytest.raises(exc, match=match):
            st.append(args)
    for j, where in [(0, "layer.0"), (2, "head")]:
        for bad in (np.nan, np.inf, 1e300):
            c = [x.astype(np.float64) for x in good]
            c[j][1, 2] = bad
            with pytest.raises(NonFiniteError, match=rf"chunks\[{j}\] \(block '{where}'\)"):
                st.append(c)
            tc = [torch.from_numpy(x) for x in c]
            with pytest.raises(NonFiniteError, match=where):
                st.append(tc)
    assert st.n == 6
    for p in path.glob("block_*"):  # the uncommitted tail was dropped
        assert p.stat().st_size == 6 * SIZES[int(p.name[6:11])] * 4
    assert st.append(good) == 8
    np.testing.assert_array_equal(st.numpy(2), ref(2, slice(0, 8)))
    st.close()


def test_bfloat16_overflow_is_non_finite(path):
    st = ih.GradientStore.create(path, [2], "bfloat16")
    with pytest.raises(NonFiniteError, match="overflow bfloat16"):
        st.append([np.array([[3.399e38, 1.0]], np.float32)])
    with pytest.raises(NonFiniteError, match="block0"):
        st.append([torch.tensor([[3.399e38, 1.0]])])
    assert st.append([np.array([[3.38e38, -1.0]])]) == 1
    st.close()


def test_create_and_open_validation(path, tmp_path):
    with pytest.raises(DTypeError, match="dtype"):
        ih.GradientStore.create(path, [3], "float16")
    with pytest.raises(DTypeError, match="dtype"):
        ih.GradientStore.create(path, [3], np.int32)
    for sizes in ([], [3, 0], [2.5], "abc", 3):
        with pytest.raises(InputError, match="sizes"):
            ih.GradientStore.create(path, sizes)
    with pytest.raises(InputError, match="names"):
        ih.GradientStore.create(path, [2, 2], names=["a", "a"])
    with pytest.raises(InputError, match="names"):
        ih.GradientStore.create(path, [2, 2], names=["a"])
    with pytest.raises(InputError, match="param_names"):
        ih.GradientStore.create(path, [2, 2], param_names=[["a"]])
    with pytest.raises(InputError, match="fingerprint"):
        ih.GradientStore.create(path, [2], fingerprint={"x": object()})
    assert not path.exists()  # nothing was written by a refused call
    filled(path, 4).close()
    with pytest.raises(InputError, match="overwrite=True"):
        ih.GradientStore.create(path, [2])
    with ih.GradientStore.create(path, [2], overwrite=True) as st:  # replaces the old store
        assert (
            st.n == 0
            and st.sizes == [2]
            and sorted(os.listdir(path)) == [".lock", "block_00000.bin", "manifest.json"]
        )
    with pytest.raises(InputError, match="names"):
        ih.GradientStore.create(tmp_path / "x", [2, 2, 2], names="abc")
    (path / "manifest.json").unlink()  # as if create() died before writing its manifest
    with pytest.raises(InputError, match="overwrite=True"):
        ih.GradientStore.create(path, [2])
    ih.GradientStore.create(path, [2], overwrite=True).close()
    other = tmp_path / "notastore"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="refusing to overwrite.*precious.txt"):
        ih.GradientStore.create(other, [2], overwrite=True)
    (other / "manifest.json").write_text("{}")
    with pytest.raises(InputError, match="not a gradient store"):
        ih.GradientStore.create(other, [2], overwrite=True)
    assert (other / "precious.txt").read_text() == "keep me"
    with pytest.raises(InputError, match="not a directory"):
        ih.GradientStore.create(other / "precious.txt", [2], overwrite=True)
    with pytest.raises(InputError, match="mode"):
        ih.GradientStore.open(path, "w")
    with pytest.raises(ih.StoreFormatError, match="does not describe"):
        ih.GradientStore.open(other)
    with pytest.raises(ih.StoreFormatError, match="no manifest"):
        ih.GradientStore.open(tmp_path)
    with pytest.raises(ih.StoreFormatError, match="not a directory"):
        ih.GradientStore.open(tmp_path / "missing")


def test_corrupt_stores_raise_typed_errors(path):
    filled(path, 10).close()
    mpath = path / "manifest.json"
    good = json.loads(mpath.read_text())

    def with_manifest(**kw):
        mpath.write_text(json.dumps(dict(good, **kw)))

    with_manifest(version=2)
    with pytest.raises(ih.StoreFormatError, match="newer invhvp"):
        ih.GradientStore.open(path)
    with_manifest(dtype="int8")
    with pytest.raises(ih.StoreFormatError, match="dtype"):
        ih.GradientStore.open(path)
    with_manifest(blocks=[dict(good["blocks"][0], file="../../etc/passwd")])
    with pytest.raises(ih.StoreFormatError, match="block 0"):
        ih.GradientStore.open(path)
    with_manifest(n=11)  # more rows than the files hold
    with pytest.raises(ih.StoreFormatError, match=r"block 0 \('layer.0'\).*shorter|truncated"):
        ih.GradientStore.open(path)
    mpath.write_text("{not json")
    with pytest.raises(ih.StoreFormatError, match="JSON"):
        ih.GradientStore.open(path)
    with_manifest()
    os.truncate(path / good["blocks"][1]["file"], 10 * 3 * 4 - 1)
    with pytest.raises(ih.StoreFormatError, match="layer.1.*truncated"):
        ih.GradientStore.open(path, "a")
    os.truncate(path / good["blocks"][1]["file"], 10 * 3 * 4)
    (path / good["blocks"][2]["file"]).unlink()
    with pytest.raises(ih.StoreFormatError, match="missing"):
        ih.GradientStore.open(path)


def test_state_and_argument_errors(path):
    st = filled(path, 5)
    with pytest.raises(InputError, match="another process|only one process"):
        ih.GradientStore.open(path, "a")  # the lock is per open file description: refused here too
    r = ih.GradientStore.open(path)
    with pytest.raises(InputError, match="read-only"):
        r.append(chunks(slice(5, 6)))
    with pytest.raises(IndexError):
        r[3]
    with pytest.raises(InputError, match="block"):
        r.numpy("nope")
    with pytest.raises(InputError, match="chunk_rows"):
        r.iter_rows(0)
    with pytest.raises(InputError, match="rows"):
        r.iter_rows(2, rows=slice(0, 5, 2))
    with pytest.raises(InputError, match="backend"):
        r.iter_rows(2, backend="jax")
    with pytest.raises(DeviceError, match="device"):
        r.iter_rows(2, device="cuda")
    with pytest.raises(DTypeError, match="bfloat16"):
        r.iter_rows(2, dtype="bfloat16")
    assert [len(x) for x in r[0:2]] == [5, 5] and len(list(r)) == 3
    st.close()
    st.close()  # idempotent
    with pytest.raises(InputError, match="closed"):
        st.append(chunks(slice(5, 6)))
    with pytest.raises(InputError, match="closed"):
        st.n  # noqa: B018
    assert "closed" in repr(st) and "n=5" in repr(r)
    with ih.GradientStore.open(path, "a") as st2:  # the lock was released
        assert st2.append(chunks(slice(5, 6))) == 6
