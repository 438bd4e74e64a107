"""invhvp.distributed on real gloo process groups (2 and 3 CPU processes) and single-process."""

import os
from datetime import timedelta

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

import invhvp as ih  # noqa: E402
from invhvp import distributed as D  # noqa: E402
from invhvp.errors import DTypeError, InputError, ShapeError  # noqa: E402

SIZES = [5, 3, 7]
N = 23

needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo"
)


def data(j, rows):
    """Block ``j`` rows of the test store: a function of the row index alone."""
    i = np.arange(rows.start, rows.stop)[:, None]
    c = np.arange(SIZES[j])[None, :]
    return np.sin(0.37 * i + 1.3 * c + j).astype(np.float32)


def make_store(path):
    with ih.GradientStore.create(path, SIZES) as st:
        st.append([data(j, slice(0, N)) for j in range(3)])


def local(rank, shape=(4, 3)):
    return np.random.default_rng(rank).standard_normal(shape)


# ----------------------------------------------------------------------------- worker


def _checks(rank, size, store_path):
    assert D.is_distributed() and D.world() == (rank, size)
    ranks = range(size)

    # all_reduce_sum: numpy (never modified), torch (in place), scalars, dtype, deterministic
    x = local(rank)
    x0 = x.copy()
    s = D.all_reduce_sum(x)
    np.testing.assert_allclose(s, sum(local(r) for r in ranks), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(x, x0)
    exact = D.all_reduce_sum(x, deterministic=True)
    ref = local(0)
    for r in ranks[1:]:
        ref = ref + local(r)
    np.testing.assert_array_equal(exact, ref)  # rank-order sum: the same bits everywhere
    ints = D.all_reduce_sum(np.arange(6.0).reshape(2, 3) * (rank + 1))
    np.testing.assert_array_equal(ints, np.arange(6.0).reshape(2, 3) * sum(r + 1 for r in ranks))
    t = torch.from_numpy(local(rank))
    assert D.all_reduce_sum(t) is t
    np.testing.assert_allclose(t.numpy(), s, rtol=1e-12, atol=1e-14)
    x32 = local(rank).astype(np.float32)
    s64 = D.all_reduce_sum(x32, dtype=np.float64, deterministic=True)
    ref64 = local(0).astype(np.float32).astype(np.float64)
    for r in ranks[1:]:
        ref64 = ref64 + local(r).astype(np.float32).astype(np.float64)
    assert s64.dtype == np.float64
    np.testing.assert_array_equal(s64, ref64)
    assert D.all_reduce_sum(rank + 1) == size * (size + 1) // 2
    assert D.all_reduce_sum(0.5) == 0.5 * size
    with pytest.raises(ShapeError, match="same shape on every rank"):  # raised on every rank: no hang
        D.all_reduce_sum(np.zeros(3 + (rank == 1)))

    # all_gather_rows: variable row counts (rank 0 has none), numpy and torch
    parts = [np.full((r, 2), 10.0 * r) + np.arange(2) for r in ranks]
    got = D.all_gather_rows(parts[rank])
    np.testing.assert_array_equal(got, np.concatenate(parts))
    tg = D.all_gather_rows(torch.from_numpy(parts[rank]).float())
    assert isinstance(tg, torch.Tensor) and tg.dtype == torch.float32
    np.testing.assert_array_equal(tg.numpy(), np.concatenate(parts).astype(np.float32))
    assert D.all_gather_rows(np.zeros((0, 4))).shape == (0, 4)
    with pytest.raises(ShapeError, match="same trailing shape"):
        D.all_gather_rows(np.zeros((2, 3 + (rank == 0))))
    with pytest.raises(DTypeError, match="same supported dtype"):
        D.all_gather_rows(np.zeros((2, 3), np.float32 if rank else np.float64))
    with pytest.raises(DTypeError, match="same supported dtype"):
        D.all_reduce_sum(np.zeros(3, np.float32 if rank else np.float64))

    # broadcast: receivers pass None (numpy/tensor of src's kind) or a matching tensor (in place)
    src = size - 1
    b = D.broadcast(local(7) if rank == src else None, src=src)
    np.testing.assert_array_equal(b, local(7))
    tb = torch.zeros(4, 3, dtype=torch.float64) if rank != src else torch.from_numpy(local(8))
    assert D.broadcast(tb, src=src) is tb
    np.testing.assert_array_equal(tb.numpy(), local(8))
    got = D.broadcast(torch.arange(5) if rank == 0 else None)
    assert isinstance(got, torch.Tensor) and got.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ShapeError, match="differ from src"):
        D.broadcast(np.zeros(3) if rank == 0 else np.zeros(4))
    with pytest.raises(InputError, match="same src"):
        D.broadcast(np.zeros(3), src=rank)

    # shard_rows agrees across ranks and covers the rows in order
    sl = D.shard_rows(N, rank, size)
    spans = D.all_gather_rows(np.array([[sl.start, sl.stop]]))
    assert spans[0, 0] == 0 and spans[-1, 1] == N and (spans[1:, 0] == spans[:-1, 1]).all()
    assert np.ptp(np.diff(spans, axis=1)) <= 1

    # a sharded reduction over a GradientStore (docs/theory.md §8): U^T U and tr(G) per block
    st = ih.GradientStore.open(store_path)
    assert st.shard() == sl
    grams = [np.zeros((d, d)) for d in SIZES]
    sq = np.zeros(len(SIZES))
    mine = [[] for _ in SIZES]
    for rows, blocks in st.iter_rows(4, rows=st.shard(), dtype="float64"):
        assert sl.start <= rows.start and rows.stop <= sl.stop
        for j, U in enumerate(blocks):
            grams[j] += U.T @ U
            sq[j] += float((U * U).sum())
            mine[j].append(U)
    sq = D.all_reduce_sum(sq)
    for j in range(len(SIZES)):
        full = data(j, slice(0, N)).astype(np.float64)
        np.testing.assert_allclose(D.all_reduce_sum(grams[j]), full.T @ full, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(sq[j], (full * full).sum(), rtol=1e-12)
        rows_all = D.all_gather_rows(np.concatenate(mine[j]) if mine[j] else np.zeros((0, SIZES[j])))
        np.testing.assert_array_equal(rows_all, full)
    st.close()


def _worker(rank, size, init_file, store_path):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=size, timeout=timedelta(seconds=60)
    )
    try:
        _checks(rank, size, store_path)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@needs_gloo
@pytest.mark.parametrize("size", [2, 3])
def test_collectives_on_gloo_match_single_process(tmp_path, size):
    store = tmp_path / "store"
    make_store(store)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # fork where available: the children inherit the imported torch instead of importing it
    # again (seconds each on two shared cores); the parent holds no process group and runs
    # torch single-threaded (conftest), so forking it is safe.
    method = "fork" if "fork" in torch.multiprocessing.get_all_start_methods() else "spawn"
    args = (size, str(tmp_path / "init"), str(store))
    torch.multiprocessing.start_processes(_worker, args=args, nprocs=size, join=True, start_method=method)


# ----------------------------------------------------------------------------- one process


def test_single_process_is_the_identity():
    assert not D.is_distributed() and D.world() == (0, 1)
    x = np.arange(6.0).reshape(2, 3)
    assert D.all_reduce_sum(x) is x
    assert D.all_reduce_sum(x, dtype=np.float32).dtype == np.float32
    t = torch.ones(3)
    assert D.all_reduce_sum(t) is t and D.all_reduce_sum(t, dtype=torch.float64).dtype == torch.float64
    assert D.all_reduce_sum(3) == 3 and D.all_reduce_sum(2.5) == 2.5
    assert D.all_gather_rows(x) is x and D.broadcast(t) is t
    with pytest.raises(InputError, match="None"):
        D.broadcast(None)
    with pytest.raises(InputError, match="src"):
        D.broadcast(x, src=1)
    with pytest.raises(DTypeError, match="numpy array or torch tensor"):
        D.all_gather_rows([1, 2])
    with pytest.raises(ShapeError, match="row dimension"):
        D.all_gather_rows(np.ones(()))


@pytest.mark.parametrize("n", [0, 1, 5, 23, 100])
@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_shard_rows_is_balanced_contiguous_and_covering(n, size):
    sl = [D.shard_rows(n, r, size) for r in range(size)]
    assert sl[0].start == 0 and sl[-1].stop == n
    assert all(a.stop == b.start for a, b in zip(sl, sl[1:]))
    lens = [s.stop - s.start for s in sl]
    assert max(lens) - min(lens) <= 1 and lens == sorted(lens, reverse=True)


def test_shard_rows_validation():
    for args, match in [
        ((5, 2, 2), "rank"),
        ((5, -1, 2), "rank"),
        ((5, 0, 0), "world_size"),
        ((-1, 0, 1), "n"),
    ]:
        with pytest.raises(InputError, match=match):
            D.shard_rows(*args)
    with pytest.raises(InputError, match="n"):
        D.shard_rows(2.0, 0, 1)
