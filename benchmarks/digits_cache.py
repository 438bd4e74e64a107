"""The digits LoRA-MLP setting of ``invhvp validate`` (n = 1000), cached in /tmp for the benchmarks.

``problem(rank)`` returns the :class:`~invhvp.validate.problem.InfluenceProblem` of
:func:`invhvp.validate.digits.digits_problems` (6 LoRA tensors, float64 per-sample gradients),
pickled to ``/tmp/invhvp_digits_r<rank>_s<seed>.pkl`` on first use (about 20 s).
"""

from __future__ import annotations

import os
import pickle

CACHE_DIR = os.environ.get("INVHVP_CACHE", "/tmp")


def problem(rank=4, seed=0):
    path = os.path.join(CACHE_DIR, f"invhvp_digits_r{rank}_s{seed}.pkl")
    if os.path.exists(path):
        with open(path, "rb") as f:
            return pickle.load(f)
    from invhvp.validate.digits import digits_problems

    (prob,) = digits_problems([rank], seed=seed)
    with open(path, "wb") as f:
        pickle.dump(prob, f)
    return prob
