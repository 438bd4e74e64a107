"""Streaming influence at n = 10⁶ (issue 12): ``invhvp.scale.influence_scores`` on an on-disk store.

The n = 10⁶ study needs gigabytes on disk: run it as a script from the repository root::

    OMP_NUM_THREADS=1 python -m benchmarks.bench_scale --path /tmp/scale_store             # 10⁶ × 2 × 256
    OMP_NUM_THREADS=1 python -m benchmarks.bench_scale --path /tmp/scale_store --blocks 4 --d 512

It creates a float32 :class:`~invhvp.GradientStore` of ``n`` rows (low rank plus noise, log-normal
row norms), checks the free disk space first (refuses below 1.5× the store plus 2 GiB), and
reports for DataInf and Exact (m = 8 test points, top-10, default damping):

- wall time of ``influence_scores`` (median of ``--repeat`` runs) on a cold page cache (the store's
  pages are evicted with ``posix_fadvise(DONTNEED)`` first; only this store's pages) and warm;
- the **GEMM floor**: the same matrix products on one in-memory chunk, times ``n / chunk_rows``;
- the **read floor**: passes × store bytes / the bandwidth of a plain sequential read of the block
  files (cold and warm);
- the peak *extra* anonymous memory (``RssAnon`` sampled every 5 ms minus its value before the call);
- agreement of DataInf with Exact (Pearson correlation of average influence, top-10 overlap).

The store is deleted at the end unless ``--keep``.  Results go to stdout (a Markdown table) and
to ``--json``.

asv: :class:`StreamingScores` runs the same path on a small store (n = 20 000, 2 blocks of 256,
48 MiB in a temporary directory) for the history run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import threading
import time

import numpy as np

import invhvp as ih
from invhvp._arrays import row_sq_norms
from invhvp.scale._blocks import SELF_CHUNK_ELEMENTS
from invhvp.solvers.datainf import datainf_partial


def make_store(path, n, blocks, d, rank=16, seed=0, chunk=1 << 16):
    """Rows ``s_i · (z_i A_l + 0.3 ε_i)``: rank-``rank`` signal plus noise, log-normal scales ``s_i``."""
    rng = np.random.default_rng(seed)
    A = [rng.standard_normal((rank, d), dtype=np.float32) / math.sqrt(rank) for _ in range(blocks)]
    t0 = time.perf_counter()
    with ih.GradientStore.create(path, [d] * blocks, fsync=False) as st:
        for start in range(0, n, chunk):
            k = min(chunk, n - start)
            s = np.exp(0.5 * rng.standard_normal((k, 1), dtype=np.float32))
            z = rng.standard_normal((k, rank), dtype=np.float32)
            st.append([s * (z @ a + 0.3 * rng.standard_normal((k, d), dtype=np.float32)) for a in A])
    os.sync()
    return time.perf_counter() - t0


def block_files(st):
    return [os.path.join(st.path, f) for f in sorted(os.listdir(st.path)) if f.endswith(".bin")]


def evict(st):
    """Drop this store's pages from the page cache (clean pages only; nothing else is touched)."""
    for f in block_files(st):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_bandwidth(st, cold):
    """Bytes/s of a plain sequential read of the block files (16 MiB buffer)."""
    if cold:
        evict(st)
    buf = bytearray(16 << 20)
    total, t0 = 0, time.perf_counter()
    for f in block_files(st):
        with open(f, "rb", buffering=0) as fh:
            while (k := fh.readinto(buf)) > 0:
                total += k
    return total / (time.perf_counter() - t0)


def rss_anon_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakAnon:
    """Peak RssAnon while the ``with`` body runs, sampled every 5 ms, minus the value before it."""

    def __enter__(self):
        self.base = self.peak = rss_anon_mb()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_anon_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_anon_mb())
        self.extra = self.peak - self.base


def best_of(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def gemm_floor(st, T, chunk_rows, solver, self_influence):
    """Seconds of the method's matrix products on one in-memory chunk, times ``n / chunk_rows``."""
    import scipy.linalg

    rows = min(chunk_rows, st.n)
    chunk = [np.array(st[j][:rows]) for j in range(len(st))]
    m = int(T[0].shape[0])
    W = [np.ones((u.shape[1], m), np.float32) for u in chunk]
    w = np.full(rows, 1e-6, np.float32)
    L = {u.shape[1]: np.eye(u.shape[1]) for u in chunk}

    def exact():
        for u, Wl in zip(chunk, W):
            u.T @ u  # Gram pass
            u @ Wl  # score pass
            if self_influence:  # a solve with the factor, in float64, on sub-chunks as the method does
                d = u.shape[1]
                step = max(1, SELF_CHUNK_ELEMENTS // d)
                for i in range(0, rows, step):
                    v = u[i : i + step].astype(np.float64)
                    np.sum(scipy.linalg.cho_solve((L[d], True), v.T, check_finite=False) * v.T, axis=0)

    def datainf():
        for u, t, Wl in zip(chunk, T, W):
            row_sq_norms(u)  # norms pass (default damping)
            row_sq_norms(u)
            datainf_partial(u, w, t.T)  # DataInf pass
            u @ Wl  # score pass

    return best_of(exact if solver == "exact" else datainf) * st.n / rows


def run(st, T, solver, cold, **kw):
    if cold:
        evict(st)
    with PeakAnon() as mem:
        t0 = time.perf_counter()
        res = ih.scale.influence_scores(st, T, solver, k=10, **kw)
        seconds = time.perf_counter() - t0
    return res, seconds, mem.extra


class StreamingScores:
    """asv: ``influence_scores`` streaming a small on-disk store, against the in-memory influence."""

    params = (["datainf", "exact"],)
    param_names = ["solver"]
    timeout = 300

    def setup(self, solver):
        import tempfile

        self.tmp = tempfile.mkdtemp(prefix="invhvp-asv-store-")
        make_store(os.path.join(self.tmp, "s"), 20_000, 2, 256, chunk=5_000)
        self.st = ih.GradientStore.open(os.path.join(self.tmp, "s"))
        self.T = [np.random.default_rng(1).standard_normal((8, 256)).astype(np.float32) for _ in range(2)]

    def teardown(self, solver):
        self.st.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _scores(self, solver):
        return ih.scale.influence_scores(self.st, self.T, solver, k=10)

    def time_scores(self, solver):
        self._scores(solver)

    def peakmem_scores(self, solver):
        self._scores(solver)

    def track_rel_error_vs_in_memory(self, solver):
        """Average influence from the stream against ``influence_matrix`` on the rows in memory (float32 rounding)."""
        res = self._scores(solver)
        U = [np.asarray(b, dtype=np.float64) for b in self.st]  # 20 000 × 256 per block: fits in memory
        T = [t.astype(np.float64) for t in self.T]
        ref = ih.average_influence(U, T, ih.Exact() if solver == "exact" else ih.DataInf(), damping=list(res.damping))
        ref = np.asarray(ref)
        return float(np.linalg.norm(np.asarray(res.average) - ref) / np.linalg.norm(ref))

    track_rel_error_vs_in_memory.unit = "relative error"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--path", required=True, help="directory for the store (created, then deleted)")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--m", type=int, default=8)
    p.add_argument("--chunk-rows", type=int, default=None)
    p.add_argument("--self-influence", action="store_true", help="also time exact self-influence")
    p.add_argument("--repeat", type=int, default=3, help="runs per setting (medians are reported)")
    p.add_argument("--keep", action="store_true", help="keep the store (and reuse an existing one)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    nbytes = a.n * a.blocks * a.d * 4
    out = {"n": a.n, "blocks": a.blocks, "d": a.d, "m": a.m, "store_gib": nbytes / 2**30}
    reuse = a.keep and os.path.exists(os.path.join(a.path, "manifest.json"))
    if not reuse:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(a.path)) or ".").free
        if free < 1.5 * nbytes + (2 << 30):
            raise SystemExit(
                f"not enough disk: the store needs {nbytes / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
            )
        out["create_seconds"] = make_store(a.path, a.n, a.blocks, a.d)
    st = ih.GradientStore.open(a.path)
    try:
        assert st.n == a.n and st.sizes == [a.d] * a.blocks, "an existing store of another layout"
        rng = np.random.default_rng(1)
        T = [
            np.asarray(st[j][: a.m]) + 0.1 * rng.standard_normal((a.m, a.d), dtype=np.float32)
            for j in range(a.blocks)
        ]
        bw_cold, bw_warm = read_bandwidth(st, cold=True), read_bandwidth(st, cold=False)
        out["read_gib_s"] = {"cold": bw_cold / 2**30, "warm": bw_warm / 2**30}
        rows, results = [], {}
        configs = [("datainf", {}), ("exact", {})]
        if a.self_influence:
            configs.append(("exact", {"self_influence": True}))
        for solver, kw in configs:
            label = solver + (" + self-influence" if kw else "")
            cold = [run(st, T, solver, True, chunk_rows=a.chunk_rows, **kw) for _ in range(a.repeat)]
            warm = [run(st, T, solver, False, chunk_rows=a.chunk_rows, **kw) for _ in range(a.repeat)]
            res_w = warm[-1][0]
            t_cold, t_warm = float(np.median([c[1] for c in cold])), float(np.median([w[1] for w in warm]))
            mem = max(r[2] for r in cold + warm)
            results[label] = res_w
            passes = len(res_w.info["passes"])
            floor = float(
                np.median(
                    [gemm_floor(st, T, res_w.info["chunk_rows"], solver, bool(kw)) for _ in range(a.repeat)]
                )
            )
            rows.append(
                {
                    "method": label,
                    "passes": passes,
                    "cold_s": t_cold,
                    "warm_s": t_warm,
                    "gemm_floor_s": floor,
                    "read_floor_cold_s": passes * nbytes / bw_cold,
                    "read_floor_warm_s": passes * nbytes / bw_warm,
                    "peak_extra_anon_mb": mem,
                    "gib_read": res_w.info["bytes_read"] / 2**30,
                    "pass_seconds": {p["name"]: round(p["seconds"], 2) for p in res_w.info["passes"]},
                    "status": res_w.status.value,
                    "chunk_rows": res_w.info["chunk_rows"],
                }
            )
        ex, di = results["exact"], results["datainf"]
        out["datainf_vs_exact"] = {
            "pearson_average": float(np.corrcoef(ex.average, di.average)[0, 1]),
            "top10_harmful_overlap": float(
                np.mean(
                    [
                        len(set(a_) & set(b_)) / 10
                        for a_, b_ in zip(ex.top_harmful.indices, di.top_harmful.indices)
                    ]
                )
            ),
        }
        out["damping"] = list(ex.damping)
        out["runs"] = rows
    finally:
        st.close()
        if not a.keep:
            shutil.rmtree(a.path, ignore_errors=True)
    print(json.dumps(out, indent=1))
    print()
    print(
        "| method | passes | cold s | warm s | GEMM floor s | read floor s (cold / warm) | peak extra anon MB | GiB read |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in out["runs"]:
        print(
            f"| {r['method']} | {r['passes']} | {r['cold_s']:.1f} | {r['warm_s']:.1f} | {r['gemm_floor_s']:.1f} | "
            f"{r['read_floor_cold_s']:.1f} / {r['read_floor_warm_s']:.1f} | {r['peak_extra_anon_mb']:.0f} | {r['gib_read']:.1f} |"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
