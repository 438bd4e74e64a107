"""Real MiniLM-L6 LoRA gradients for the preconditioning benchmarks, cached in /tmp as .npy.

``load(n_train, n_test, n_blocks)`` returns ``(train, test, names)``: per-block float32 numpy
arrays of shape ``(n, d_l)`` / ``(m, d_l)`` for the first ``n_blocks`` of the 24 LoRA tensors
of :func:`invhvp.adapters.minilm_lora_setup` (rank 8 on query/value, d_l = 3072).  The first
call computes them with :func:`invhvp.adapters.per_sample_gradients` (≈ 1 minute per 1000
samples on one core) and writes ``/tmp/invhvp_minilm_<n>_<m>_<L>_{train,test}.npy``; later calls
memory-map the files.  Needs the ``lora`` extra; nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

CACHE_DIR = os.environ.get("INVHVP_CACHE", "/tmp")


def _paths(n_train, n_test, n_blocks, seed):
    stem = os.path.join(CACHE_DIR, f"invhvp_minilm_{n_train}_{n_test}_{n_blocks}_s{seed}")
    return stem + "_train.npy", stem + "_test.npy", stem + ".json"


def load(n_train=2000, n_test=32, n_blocks=8, seed=0, finetune_steps=30, verbose=True):
    """``(train_blocks, test_blocks, names)`` as float32 numpy arrays (see the module docstring)."""
    p_tr, p_te, p_meta = _paths(n_train, n_test, n_blocks, seed)
    if os.path.exists(p_meta):
        meta = json.load(open(p_meta))
        tr, te = np.load(p_tr, mmap_mode="r"), np.load(p_te, mmap_mode="r")
        split = np.cumsum(meta["sizes"])[:-1]
        return np.split(np.asarray(tr), split, axis=1), np.split(np.asarray(te), split, axis=1), meta["names"]
    import torch

    from invhvp.adapters import minilm_lora_setup, per_sample_gradients

    t0 = time.perf_counter()
    s = minilm_lora_setup(n_train, n_test, rank=8, finetune_steps=finetune_steps, seed=seed)
    names = [n for n, p in s.model.named_parameters() if "lora_" in n][:n_blocks]
    g_tr = per_sample_gradients(s.model, s.loss_fn, s.train, params=names, chunk_size=64, dtype=torch.float32)
    g_te = per_sample_gradients(s.model, s.loss_fn, s.test, params=names, chunk_size=64, dtype=torch.float32)
    tr = np.concatenate([b.numpy() for b in g_tr], axis=1)
    te = np.concatenate([b.numpy() for b in g_te], axis=1)
    np.save(p_tr, tr)
    np.save(p_te, te)
    with open(p_meta, "w") as f:
        json.dump({"names": list(g_tr.names), "sizes": list(g_tr.sizes), "seconds": time.perf_counter() - t0}, f)
    if verbose:
        print(f"cached MiniLM gradients ({time.perf_counter() - t0:.0f} s): {p_tr}", flush=True)
    return load(n_train, n_test, n_blocks, seed, finetune_steps, verbose)


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    tr, te, names = load()
    print([t.shape for t in tr], names)
