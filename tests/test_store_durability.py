"""GradientStore under SIGKILL (real subprocesses) and its memory bound while appending/iterating."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import invhvp as ih

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and /proc are POSIX/Linux")

ROOT = str(Path(ih.__file__).resolve().parents[1])
SIZES = [5, 3000, 7]

# Rows are a function of (block, row index) alone, so the parent checks them independently.
REF = """
import numpy as np
SIZES = [5, 3000, 7]
def ref(j, start, stop):
    i = np.arange(start, stop)[:, None]
    c = np.arange(SIZES[j])[None, :]
    return (((i * 7919 + c * 104729 + j * 13) % 1000003) / 1000003 - 0.5).astype(np.float32)
"""

CHILD = (
    REF
    + r"""
import os, sys, time
import invhvp as ih

path, mode, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
calls = [0]

def pause():
    print("PAUSE", flush=True)
    time.sleep(120)

if mode == "between":  # data written and fsync'ed, manifest temp written, not yet renamed
    real_replace = os.replace
    def hook(a, b):
        calls[0] += 1
        if calls[0] == 4:  # create's manifest, then appends 1, 2; pause in append 3
            pause()
        return real_replace(a, b)
    os.replace = hook
elif mode == "midwrite":  # block 1 of append 3 half written
    real_pwrite = os.pwrite
    def hook(fd, data, offset):
        calls[0] += 1
        if calls[0] == 8:
            real_pwrite(fd, data[: len(data) // 2], offset)
            pause()
        return real_pwrite(fd, data, offset)
    os.pwrite = hook

rng = np.random.default_rng(seed)
st = ih.GradientStore.create(path, SIZES, names=["a", "b", "c"])
n = 0
while True:
    k = 7 if mode != "random" else int(rng.integers(1, 60))
    n = st.append([ref(j, n, n + k) for j in range(3)])
    print("COMMITTED", n, flush=True)
"""
)


def ref(j, start, stop):
    ns = {}
    exec(REF, ns)
    return ns["ref"](j, start, stop)


def run_and_kill(path, mode, seed=0, after=3):
    """Run the appending child, SIGKILL it (at its pause, or after ``after`` commits); return commits."""
    env = dict(
        os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), mode, str(seed)], stdout=subprocess.PIPE, text=True, env=env
    )
    watchdog = threading.Timer(60, p.kill)
    watchdog.start()
    committed, paused = 0, False
    try:
        for line in p.stdout:
            if line.startswith("COMMITTED"):
                committed = int(line.split()[1])
                if mode == "random" and committed >= after:
                    threading.Event().wait(np.random.default_rng(seed).uniform(0, 0.03))
                    break
            elif line.startswith("PAUSE"):
                paused = True
                break
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        for line in p.stdout:  # lines printed before the kill that were not read yet
            if line.startswith("COMMITTED"):
                committed = int(line.split()[1])
    finally:
        watchdog.cancel()
        p.stdout.close()
    assert p.returncode == -signal.SIGKILL, "the child ended before it was killed"
    assert paused or mode == "random"
    return committed


def check_rows(path, n):
    with ih.GradientStore.open(path) as st:
        assert st.n == n
        for rows, blocks in st.iter_rows(13):
            for j, b in enumerate(blocks):
                np.testing.assert_array_equal(b, ref(j, rows.start, rows.stop))


def reopen_and_append(path, n):
    """Mode 'a' drops the uncommitted tail and temp manifests; appending continues at row n."""
    with ih.GradientStore.open(path, "a") as st:
        assert st.n == n
        for j, d in enumerate(SIZES):
            assert os.path.getsize(path / f"block_{j:05d}.bin") == n * d * 4
        assert sorted(os.listdir(path)) == [".lock"] + [f"block_{j:05d}.bin" for j in range(3)] + [
            "manifest.json"
        ]
        assert st.append([ref(j, n, n + 5) for j in range(3)]) == n + 5
    check_rows(path, n + 5)


@pytest.mark.parametrize("mode", ["between", "midwrite"])
def test_sigkill_inside_append_keeps_exactly_the_committed_rows(tmp_path, mode):
    path = tmp_path / "store"
    committed = run_and_kill(path, mode)
    assert committed == 14  # two appends of 7 finished; the third was interrupted
    # the interrupted append really left data past the committed rows
    tail = [os.path.getsize(path / f"block_{j:05d}.bin") - committed * d * 4 for j, d in enumerate(SIZES)]
    assert tail[1] > 0 and (tail[2] > 0 if mode == "between" else tail[2] == 0)
    if mode == "between":
        assert any(name.startswith("manifest.json.tmp") for name in os.listdir(path))
    check_rows(path, committed)
    reopen_and_append(path, committed)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_a_random_time(tmp_path, seed):
    path = tmp_path / "store"
    committed = run_and_kill(path, "random", seed=seed, after=3)
    with ih.GradientStore.open(path) as st:
        n = st.n
    # the kill may land after a commit and before its line was printed: at most one append more
    assert committed <= n <= committed + 59
    check_rows(path, n)
    reopen_and_append(path, n)


MEMORY_CHILD = r"""
import json, sys, time
import numpy as np
import torch  # imported before measuring: importing torch alone takes ~100 MiB
import invhvp as ih

def rss_mb(kind="RssAnon"):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(kind + ":"):
                return int(line.split()[1]) / 1024

anon_mb = rss_mb

path, rows, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sizes = [1000, 3000, 4000]
rng = np.random.default_rng(0)
data = [rng.standard_normal((chunk, d)).astype(np.float32) for d in sizes]
out = {}
st = ih.GradientStore.create(path, sizes, fsync=False)
base = peak = anon_mb()
t = time.perf_counter()
for _ in range(rows // chunk):
    st.append(data)
    peak = max(peak, anon_mb())
out["append_s"] = time.perf_counter() - t
out["append_growth_mb"] = peak - base
st.close()
st = ih.GradientStore.open(path)
for backend, dtype in [("numpy", "float64"), ("numpy", None), ("torch", None)]:
    base, fbase = anon_mb(), rss_mb("RssFile")
    peak, fpeak = base, fbase
    total = 0.0
    for _, blocks in st.iter_rows(chunk, backend=backend, dtype=dtype):
        total += sum(float(b.sum()) for b in blocks)  # touches every page of the chunk
        peak, fpeak = max(peak, anon_mb()), max(fpeak, rss_mb("RssFile"))
    out[f"iter_{backend}_{dtype}_growth_mb"] = peak - base
    out[f"iter_{backend}_{dtype}_file_growth_mb"] = fpeak - fbase  # mapped pages stay O(chunk) too
out["store_mb"] = st.nbytes / 2**20
print(json.dumps(out))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux)")
def test_append_and_iterate_hold_only_a_chunk(tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "big"
    env = dict(
        os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1"
    )
    try:
        # 2048 rows x 8000 float32 = 62.5 MiB on disk; chunks of 64 rows = 2 MiB (4 MiB as float64)
        res = subprocess.run(
            [sys.executable, "-c", MEMORY_CHILD, str(path), "2048", "64"],
            capture_output=True, text=True, env=env, timeout=120, check=True,
        )  # fmt: skip
    finally:
        shutil.rmtree(path, ignore_errors=True)
    out = json.loads(res.stdout)
    assert out["store_mb"] == pytest.approx(62.5)
    for key, grew in out.items():
        if key.endswith("growth_mb"):
            assert grew < 16, (key, out)  # reading, copying or keeping the store mapped: >= 62 MiB
