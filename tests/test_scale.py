"""invhvp.scale.influence_scores: equal to the in-memory influence functions, on stores, arrays,
torch tensors and torch.distributed shards (2 and 3 gloo processes), in bounded memory."""

import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

import invhvp as ih
from invhvp.distributed import shard_rows
from invhvp.errors import (
    ConvergenceError,
    DampingError,
    DTypeError,
    InputError,
    NonFiniteError,
    OperatorTooLargeError,
    ShapeError,
    UnsupportedOperatorError,
)

ROOT = str(Path(ih.__file__).resolve().parents[1])
SOLVERS = {"exact": ih.Exact(), "datainf": ih.DataInf()}


def problem(n=240, sizes=(6, 9), m=4, seed=0):
    """Low-rank-plus-noise gradients with uneven row norms (float64), and test gradients."""
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.standard_normal((n, 1)))
    U = [
        scale
        * (rng.standard_normal((n, 2)) @ rng.standard_normal((2, d)) + 0.3 * rng.standard_normal((n, d)))
        for d in sizes
    ]
    T = [rng.standard_normal((m, d)) for d in sizes]
    return U, T


def make_store(path, U, dtype="float64"):
    with ih.GradientStore.create(path, [u.shape[1] for u in U], dtype=dtype) as st:
        st.append(U)
    return ih.GradientStore.open(path)


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def check_against_memory(res, U, T, solver, damping, k, *, tol):
    """Every output of ``res`` against the in-memory functions and argsort of the full matrix."""
    ref = SOLVERS[solver]
    full = ih.influence_matrix(U, T, ref, damping=damping)
    assert rel(res.average, ih.average_influence(U, T, ref, damping=damping)) < tol
    if res.self_influence is not None:
        assert rel(res.self_influence, ih.self_influence(U, ref, damping=damping)) < tol
    if res.matrix is not None:
        assert rel(res.matrix, full) < tol
    kk = min(k, full.shape[1])
    order_h, order_l = np.argsort(-full, axis=1)[:, :kk], np.argsort(full, axis=1)[:, :kk]
    np.testing.assert_array_equal(np.asarray(res.top_harmful.indices), order_h)
    np.testing.assert_array_equal(np.asarray(res.top_helpful.indices), order_l)
    assert rel(res.top_harmful.values, np.take_along_axis(full, order_h, axis=1)) < tol
    assert rel(res.top_helpful.values, np.take_along_axis(full, order_l, axis=1)) < tol


# ----------------------------------------------------------------------------- one process


@pytest.mark.parametrize("source", ["store", "arrays"])
@pytest.mark.parametrize("solver", ["exact", "datainf"])
@pytest.mark.parametrize("damping", [None, 0.2])
def test_matches_in_memory_float64(tmp_path, source, solver, damping):
    U, T = problem()
    train = make_store(tmp_path / "st", U) if source == "store" else U
    res = ih.scale.influence_scores(
        train, T, solver, damping=damping, k=7, self_influence=True, return_matrix=True, chunk_rows=37
    )
    check_against_memory(res, U, T, solver, damping, 7, tol=1e-9)
    names = [p["name"] for p in res.info["passes"]]
    expected = {"exact": ["gram", "score"], "datainf": ["norms", "datainf", "score"]}[solver]
    assert names == (
        expected[1:] if solver == "datainf" and damping else expected
    )  # 2 passes, 3 for DataInf + rule
    assert res.info["bytes_read"] == len(names) * 240 * 15 * 8
    lam = ih.default_damping(U) if damping is None else (damping, damping)
    np.testing.assert_allclose(res.damping, lam, rtol=1e-12)
    assert res.status is ih.Status.SUCCESS and res.n == 240 and res.rows == slice(0, 240)
    if source == "store":
        train.close()


def test_dual_and_primal_routes_and_chunking():
    U, T = problem(n=40, sizes=(6, 90, 50))  # d > n for two blocks: Woodbury on the gathered rows
    results = [
        ih.scale.influence_scores(U, T, "exact", k=5, self_influence=True, return_matrix=True, chunk_rows=c)
        for c in (1, 13, None)
    ]
    assert [b["route"] for b in results[0].info["blocks"]] == ["primal", "dual", "dual"]
    assert [b["method"] for b in results[0].info["blocks"]] == ["cholesky", "woodbury", "woodbury"]
    for res in results:
        check_against_memory(res, U, T, "exact", None, 5, tol=1e-9)
    np.testing.assert_allclose(results[0].matrix, results[2].matrix, rtol=1e-12, atol=1e-14)


def test_float32_store_and_torch(tmp_path):
    torch = pytest.importorskip("torch")
    U, T = problem()
    st = make_store(tmp_path / "st32", U, dtype="float32")
    U32 = [u.astype(np.float32).astype(np.float64) for u in U]  # what the store holds
    T32 = [t.astype(np.float32) for t in T]
    for solver in ("exact", "datainf"):
        full = ih.influence_matrix(U32, [t.astype(np.float64) for t in T32], SOLVERS[solver])
        res = ih.scale.influence_scores(st, T32, solver, k=5, self_influence=True, return_matrix=True)
        assert res.average.dtype == np.float32 and res.matrix.dtype == np.float32
        assert rel(res.matrix, full) < 1e-5
        res_t = ih.scale.influence_scores(
            st, [torch.from_numpy(t) for t in T32], solver, k=5, return_matrix=True
        )
        assert isinstance(res_t.average, torch.Tensor) and res_t.top_harmful.indices.dtype == torch.int64
        assert rel(res_t.matrix.numpy(), full) < 1e-5
        # float64 computation on the float32 store: the store is read as float64 chunks
        res64 = ih.scale.influence_scores(
            st, [t.astype(np.float64) for t in T32], solver, k=5, self_influence=True
        )
        check_against_memory(res64, U32, [t.astype(np.float64) for t in T32], solver, None, 5, tol=1e-9)
        tU = [torch.from_numpy(u) for u in U]
        res_a = ih.scale.influence_scores(
            tU, [torch.from_numpy(t) for t in T], solver, k=5, self_influence=True
        )
        check_against_memory(res_a, U, T, solver, None, 5, tol=1e-9)
    st.close()


def test_out_file_auto_choice_and_small_n(tmp_path):
    U, T = problem(n=8, sizes=(3, 4))
    res = ih.scale.influence_scores(U, T, k=20, out=tmp_path / "scores.npy")  # k > n: all rows, sorted
    assert res.info["solver"] == "exact" and "auto" in res.info
    full = ih.influence_matrix(U, T, ih.Exact())
    np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), full, rtol=1e-10, atol=1e-14)
    assert res.top_harmful.indices.shape == (4, 8)
    check_against_memory(res, U, T, "exact", None, 20, tol=1e-9)
    with pytest.raises(InputError, match="out: .* already exists"):
        ih.scale.influence_scores(U, T, out=tmp_path / "scores.npy")
    auto = ih.scale.influence_scores(U, T, max_dense=2)  # no exact route: DataInf, and says why
    assert auto.info["solver"] == "datainf" and "DataInf" in auto.info["auto"]


def test_store_rows_sequences_and_progress(tmp_path, capsys):
    U, T = problem(n=60, sizes=(4, 5))
    st = make_store(tmp_path / "st", U)
    res = ih.scale.influence_scores(
        st, T, "exact", rows=slice(10, 50), k=3, out=tmp_path / "m.npy", progress=True
    )
    sub = [u[10:50] for u in U]  # the training set is rows 10..49; indices stay store rows
    full = ih.influence_matrix(sub, T, ih.Exact())
    assert res.rows == slice(10, 50) and res.n == 40
    assert rel(res.average, full.mean(axis=0)) < 1e-9
    np.testing.assert_array_equal(res.top_harmful.indices, np.argsort(-full, axis=1)[:, :3] + 10)
    assert rel(np.load(tmp_path / "m.npy"), full) < 1e-9
    assert "invhvp gram" in capsys.readouterr().err
    st.close()

    class Blocks(Sequence):  # e.g. adapters.BlockGradients: a Sequence of per-block arrays
        def __init__(self, b):
            self.b = b

        def __getitem__(self, i):
            return self.b[i]

        def __len__(self):
            return len(self.b)

    got = ih.scale.influence_scores(Blocks(U), Blocks(T), "datainf", k=3)
    assert rel(got.average, ih.average_influence(U, T, ih.DataInf())) < 1e-9


def test_inaccurate_status_is_reported():
    rng = np.random.default_rng(3)
    U = [rng.standard_normal((200, 2)) @ rng.standard_normal((2, 12))]  # rank 2: κ ≈ ‖G‖/λ
    T = [rng.standard_normal((3, 12))]
    with pytest.raises(ConvergenceError, match="condition"):
        ih.scale.influence_scores(U, T, "exact", damping=1e-14)
    with pytest.warns(RuntimeWarning):
        res = ih.scale.influence_scores(U, T, "exact", damping=1e-14, on_failure="warn")
    assert res.status is ih.Status.INACCURATE
    assert res.info["blocks"][0]["setup_status"] == "inaccurate"


def test_typed_errors_name_the_argument(tmp_path):
    U, T = problem(n=30, sizes=(4, 5))
    cases = [
        (dict(solver=ih.CG()), UnsupportedOperatorError, "solver"),
        (dict(solver="cholesky"), InputError, "solver"),
        (dict(solver="exact", max_dense=3), OperatorTooLargeError, "solver: no exact route fits block 0"),
        (dict(solver="datainf", self_influence=True, max_dense=4), OperatorTooLargeError, "self_influence"),
        (dict(damping=0.0), DampingError, "damping"),
        (dict(damping=[0.1]), DampingError, "damping"),
        (dict(k=0), InputError, "k"),
        (dict(chunk_rows=0), InputError, "chunk_rows"),
        (dict(rows=slice(0, 3)), InputError, "rows"),
        (dict(out=3), InputError, "out"),
        (dict(self_influence="yes"), InputError, "self_influence"),
    ]
    for kw, err, match in cases:
        with pytest.raises(err, match=match):
            ih.scale.influence_scores(U, T, **kw)
    with pytest.raises(ShapeError, match=r"test_grads\[1\]: has 4 columns"):
        ih.scale.influence_scores(U, [T[0], T[0]])
    with pytest.raises(ShapeError, match="expected 2 blocks"):
        ih.scale.influence_scores(U, T[:1])
    with pytest.raises(DTypeError, match=r"train\[0\]"):
        ih.scale.influence_scores([u.astype(np.float32) for u in U], T)
    bad = [U[0].copy(), U[1]]
    bad[0][3, 1] = np.nan
    with pytest.raises(NonFiniteError, match=r"train\[0\]"):
        ih.scale.influence_scores(bad, T, "datainf", damping=0.1)
    with pytest.raises(InputError, match="test_grads"):
        ih.scale.influence_scores(U, None)
    st = make_store(tmp_path / "st", U)
    with pytest.raises(InputError, match="rows"):
        ih.scale.influence_scores(st, T, rows=slice(0, 10, 2))
    st.close()
    with pytest.raises(InputError, match="closed"):
        ih.scale.influence_scores(st, T)


# ----------------------------------------------------------------------------- torch.distributed

# (name, source, solver, keyword arguments); sizes: block 2 is wider than n (dual route)
CONFIGS = [
    ("store-exact", "store", "exact", dict(self_influence=True, k=25)),
    ("store-datainf", "store", "datainf", dict(self_influence=True, k=10)),
    ("arrays-exact-dual", "arrays", "exact", dict(self_influence=True, k=10, return_matrix=True)),
    ("arrays-datainf", "arrays", "datainf", dict(damping=0.3, k=10, return_matrix=True)),
]
DIST_N, DIST_SIZES = 61, (6, 9, 80)


def dist_inputs(source, store_path, rank, size):
    U, T = problem(n=DIST_N, sizes=DIST_SIZES, seed=5)
    if source == "store":
        return ih.GradientStore.open(store_path), T
    sl = shard_rows(DIST_N, rank, size)
    return [u[sl] for u in U], T


def single_process_results(store_path):
    out = {}
    for name, source, solver, kw in CONFIGS:
        train, T = dist_inputs(source, store_path, 0, 1)
        res = ih.scale.influence_scores(train, T, solver, chunk_rows=8, **kw)
        out[name] = res
    return out


def _same(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, what
    assert rel(a, b) < 1e-10, (what, rel(a, b))


def _dist_worker(rank, size, init_file, store_path, ref_path, out_dir):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=size, timeout=timedelta(seconds=60)
    )
    try:
        with open(ref_path, "rb") as f:
            ref = pickle.load(f)
        for name, source, solver, kw in CONFIGS:
            train, T = dist_inputs(source, store_path, rank, size)
            res = ih.scale.influence_scores(train, T, solver, chunk_rows=8, **kw)
            exp = ref[name]
            assert res.n == DIST_N and res.rows == slice(0, DIST_N) and res.info["world_size"] == size
            _same(res.damping, exp.damping, (name, "damping"))
            _same(res.average, exp.average, (name, "average"))
            for attr in ("top_harmful", "top_helpful"):
                got, want = getattr(res, attr), getattr(exp, attr)
                np.testing.assert_array_equal(got.indices, want.indices, err_msg=f"{name} {attr}")
                _same(got.values, want.values, (name, attr))
            for attr in ("self_influence", "matrix"):
                if getattr(exp, attr) is not None:
                    _same(getattr(res, attr), getattr(exp, attr), (name, attr))
            if source == "store":
                train.close()
        # gather=False keeps this rank's rows; out= is written by every rank
        train, T = dist_inputs("arrays", store_path, rank, size)
        loc = ih.scale.influence_scores(train, T, "exact", gather=False, out=os.path.join(out_dir, "m.npy"))
        sl = shard_rows(DIST_N, rank, size)
        assert loc.rows == sl
        _same(loc.average, ref["arrays-exact-dual"].average[sl], "gather=False")
        _same(np.load(os.path.join(out_dir, "m.npy")), ref["arrays-exact-dual"].matrix, "out file")
        # every rank passing all store rows is refused on every rank (no double counting, no hang)
        st = ih.GradientStore.open(store_path)
        with pytest.raises(InputError, match="disjoint"):
            ih.scale.influence_scores(st, T, rows=slice(0, DIST_N))
        # shards in reverse rank order: results still in row order
        rev = ih.scale.influence_scores(st, T, "exact", rows=shard_rows(DIST_N, size - 1 - rank, size), k=25)
        _same(rev.average, ref["store-exact"].average, "reversed shards")
        np.testing.assert_array_equal(rev.top_harmful.indices, ref["store-exact"].top_harmful.indices)
        st.close()
        # 2 rows over 2 or 3 ranks: a rank may hold none (dual route, k > rows per rank)
        U2, T2 = problem(n=2, sizes=(5,), seed=9)
        mine = [U2[0][shard_rows(2, rank, size)]]
        tiny = ih.scale.influence_scores(mine, T2, "exact", k=2, self_influence=True)
        check_against_memory(tiny, U2, T2, "exact", None, 2, tol=1e-9)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(sys.platform == "win32", reason="gloo process groups with fork")
@pytest.mark.parametrize("size", [2, 3])
def test_gloo_ranks_match_one_process(tmp_path, size):
    torch = pytest.importorskip("torch")
    dist = pytest.importorskip("torch.distributed")
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo")
    U, _ = problem(n=DIST_N, sizes=DIST_SIZES, seed=5)
    make_store(tmp_path / "store", U).close()
    ref = single_process_results(str(tmp_path / "store"))
    assert [b["route"] for b in ref["arrays-exact-dual"].info["blocks"]] == ["primal", "primal", "dual"]
    with open(tmp_path / "ref.pkl", "wb") as f:
        pickle.dump(ref, f)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    method = "fork" if "fork" in torch.multiprocessing.get_all_start_methods() else "spawn"
    args = (size, str(tmp_path / "init"), str(tmp_path / "store"), str(tmp_path / "ref.pkl"), str(tmp_path))
    torch.multiprocessing.start_processes(
        _dist_worker, args=args, nprocs=size, join=True, start_method=method
    )


# ----------------------------------------------------------------------------- bounded memory

MEMORY_CHILD = r"""
import json, sys
import numpy as np
import invhvp as ih

def rss_mb(kind):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(kind + ":"):
                return int(line.split()[1]) / 1024

path, chunk = sys.argv[1], int(sys.argv[2])
st = ih.GradientStore.open(path)
T = [np.random.default_rng(1).standard_normal((32, d)) for d in st.sizes]  # m = 32: m×n = 16 MiB
out = {"store_mb": st.nbytes / 2**20}
T32 = [t.astype(np.float32) for t in T]
for name, tg, kw in [("exact32", T32, dict(self_influence=True)), ("datainf64", T, dict(self_influence=True)),
                     ("exact64", T, {})]:
    solver = name[:-2]
    ih.scale.influence_scores(st, tg, solver, chunk_rows=chunk, k=10, **kw)  # warm-up: imports, caches
    base = [rss_mb("RssAnon"), rss_mb("RssFile")]
    peak = list(base)
    import invhvp.scale._source as S
    orig = S.Rows.chunks
    def chunks(self, c, orig=orig):
        for item in orig(self, c):
            peak[:] = [max(peak[0], rss_mb("RssAnon")), max(peak[1], rss_mb("RssFile"))]
            yield item
    S.Rows.chunks = chunks
    res = ih.scale.influence_scores(st, tg, solver, chunk_rows=chunk, k=10, **kw)
    S.Rows.chunks = orig
    out[name] = max(peak[0], rss_mb("RssAnon")) - base[0]
    out[name + "_file"] = peak[1] - base[1]
print(json.dumps(out))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux)")
def test_scoring_a_store_holds_only_a_chunk(tmp_path):
    path = tmp_path / "big"
    sizes, n = [96, 160], 1 << 16  # 64 MiB of float32 on disk; chunks of 512 rows = 0.5 MiB
    with ih.GradientStore.create(path, sizes, fsync=False) as st:
        rng = np.random.default_rng(0)
        block = [rng.standard_normal((4096, d)).astype(np.float32) for d in sizes]
        for _ in range(n // 4096):
            st.append(block)
    env = dict(
        os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1"
    )
    try:
        res = subprocess.run(
            [sys.executable, "-c", MEMORY_CHILD, str(path), "512"],
            capture_output=True, text=True, env=env, timeout=120, check=True,
        )  # fmt: skip
    finally:
        shutil.rmtree(path, ignore_errors=True)
    out = json.loads(res.stdout)
    assert out["store_mb"] == pytest.approx(64.0)
    for key in ("exact32", "datainf64", "exact64"):
        # per-row results (average, self-influence: n floats, <= 0.5 MiB each) and one chunk's
        # temporaries; holding the store (64 MiB), a float64 copy of it (128 MiB) or chunks kept
        # mapped (file pages) would not fit
        assert out[key] < 8 and out[key + "_file"] < 8, out
