"""Status fuzz: does every SUCCESS that invhvp reports keep its solver's claim?

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/fuzz_status.py --seed 0 --json out.json

Random problems from ``fuzz_problems.make_problem`` (every operator type, dtype float32/float64,
numpy and a fraction torch-CPU, κ up to 1e12, damping 1e-12 to 10 × the mean eigenvalue, entries
scaled by up to 1e±30), each solved by every applicable solver with ``on_failure="ignore"``.  A
*silent failure* is SUCCESS with the claim violated (x* from an independent long-double-refined
reference); a *defect* is an exception that is not an ``InvhvpError``; *over-reporting* is a
non-SUCCESS status whose claim would have held.  Part 2 runs diverging explicit LiSSA configurations
(divergence confirmed by a plain numpy loop) and counts how many are reported as failures.
``--case I`` reruns problem I of ``--seed`` verbosely.  See benchmarks/README.md, "Status fuzz".
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's invhvp

import numpy as np  # noqa: E402

import invhvp as ih  # noqa: E402
from benchmarks import fuzz_problems as FP  # noqa: E402
from invhvp.errors import InvhvpError  # noqa: E402

SOLVERS = ("exact", "cg", "cg_jacobi", "datainf", "lissa_auto", "lissa_explicit", "identity")
STATUSES = [s.value for s in ih.Status]


# ----------------------------------------------------------------------------- solvers
def draw_solvers(p, rng):
    """(label, solver, claim parameters) for every solver that applies to problem ``p``."""
    f32 = p.dtype == "float32"
    out = []
    rt = None if rng.random() < 0.7 else float(10 ** (rng.uniform(-4, -1) if f32 else rng.uniform(-8, -2)))
    out.append(("exact", ih.Exact(rtol=rt), {"rtol": rt if rt is not None else (1e-2 if f32 else 1e-6)}))
    for label in ("cg", "cg_jacobi"):
        if label == "cg_jacobi" and not FP.has_diagonal(p.op):
            continue
        rtol = float(10 ** rng.uniform(-10, -2))
        atol = 0.0 if rng.random() < 0.8 else float(10 ** rng.uniform(-6, 0) * np.max(np.linalg.norm(p.B, axis=0)))
        maxiter = None if rng.random() < 0.8 else int(rng.integers(1, 2 * p.d + 2))
        pre = "jacobi" if label == "cg_jacobi" else None
        out.append((label, ih.CG(rtol=rtol, atol=atol, maxiter=maxiter, preconditioner=pre), {"rtol": rtol, "atol": atol}))
    if FP.all_lowrank(p.op):
        out.append(("datainf", ih.DataInf(), {}))
    rtol = float(rng.choice([0.05, 0.1, 0.2, 0.5]))
    mm = None if rng.random() < 0.7 else float(10 ** rng.uniform(1, 3))
    out.append(("lissa_auto", ih.LiSSA(rtol=rtol, max_matvec=mm, rng=int(rng.integers(2**31))), {"rtol": rtol}))
    lmax = float(np.max(np.abs(p.eig_M))) if np.all(np.isfinite(p.eig_M)) else 1.0
    step = float(10 ** rng.uniform(-2, np.log10(3)) / max(lmax, 1e-300))
    if p.op.supports_minibatch and rng.random() < 0.5:
        nmax = max([getattr(lf.op, "n_samples", None) or 100 for _, lf in p.leaves])
        batch = int(10 ** rng.uniform(0, np.log10(2 * nmax)))
    else:
        batch = "full"
    steps = int(10 ** rng.uniform(1, 3.3))
    rtol = float(rng.choice([0.05, 0.1, 0.3]))
    if np.isfinite(step) and step > 0:
        out.append(("lissa_explicit", ih.LiSSA(step=step, batch_size=batch, steps=steps, rtol=rtol,
                                               rng=int(rng.integers(2**31))), {"rtol": rtol}))
    out.append(("identity", ih.Identity(), {}))
    return out


# ----------------------------------------------------------------------------- checks
def _col(v, k):
    return None if v is None else np.broadcast_to(np.asarray(v, dtype=np.float64).reshape(-1), (k,))


def _infos(info):
    """The info dict and those of its blocks (recursively)."""
    yield info
    for b in info.get("blocks", []) or []:
        yield from _infos(b)


def _bucket(ratio):
    return "<=1+1e-6" if ratio <= 1 + 1e-6 else "<=1.1" if ratio <= 1.1 else "<=2" if ratio <= 2 else ">2"


def evaluate(p, label, solver, claim, res):
    """Claim checks of one SolveResult: (silent "category|detail" list, over-reported?, suspicious notes, numbers)."""
    silent, sus = [], []
    k = p.B.shape[1]
    if type(res.x) is not type(p.rhs) or res.x.dtype != p.rhs.dtype or tuple(res.x.shape) != tuple(p.rhs.shape):
        sus.append("x type/dtype/shape differs from rhs|")
    x = np.asarray(FP._host(res.x), dtype=np.float64).reshape(p.d, -1)
    finite = bool(np.all(np.isfinite(x)))
    rn = _col(res.residual_norm, k)
    r_true = FP.true_residual(p, x) if finite else np.full(k, np.inf)
    bnorm = np.linalg.norm(p.B, axis=0)
    have = p.x_ref is not None and finite
    err = rel = None
    fi = np.finfo(p.dtype)
    rng_note = ""
    if have:
        xs = np.linalg.norm(p.x_ref, axis=0)
        err = np.linalg.norm(x - p.x_ref, axis=0)
        rel = np.where(xs > 0, err / np.where(xs > 0, xs, 1.0), np.where(err > 0, np.inf, 0.0))
        margin = 4 * p.ref_err * xs
        big = float(np.max(np.abs(p.x_ref)))
        rng_note = " [x* outside the dtype's range]" if (0 < big < 1e3 * float(fi.tiny) or big > 1e-3 * float(fi.max)) else ""
    ok = strict = None  # claim held (with the reference margin) / held with room for over-reporting
    why = ""
    if label == "exact" and have:
        ok = bool(np.all(rel <= claim["rtol"] + 4 * p.ref_err))
        strict = bool(np.all(rel <= claim["rtol"] - 4 * p.ref_err))
        zero = any(i.get("condition_estimate") == 0.0 for i in _infos(res.info))
        why = "condition_estimate 0 (norm under/overflow)" if zero else "condition_estimate > 0"
        est = _col(res.info.get("error_estimate"), k)
        if est is not None and not zero and np.any((rel > 10 * est + 8 * p.ref_err) & (rel > 10 * float(fi.eps))):
            sus.append("exact error_estimate optimistic >10x|")
    elif label.startswith("cg") and finite:
        tol = np.maximum(claim["rtol"] * bnorm, claim["atol"])
        ok = strict = bool(np.all(r_true <= tol * (1 + 1e-9)))
        ratio = float(np.max(r_true / np.maximum(tol, 1e-300)))
        below = bool(np.any(tol < fi.eps * (bnorm + float(np.max(np.abs(p.eig_M))) * np.linalg.norm(x, axis=0))))
        why = f"true/tol {_bucket(ratio)}" + (", tol below eps·(‖b‖+‖A‖‖x‖)" if below else "")
        why += ", reported residual 0" if rn is not None and np.any(rn == 0) else ""
        cg_detail = f"true residual / tol {ratio:.3g}"
    elif label.startswith("lissa") and have:
        ok = bool(np.all(rel <= 3 * claim["rtol"]))
        strict = bool(np.all(rel <= claim["rtol"]))
        est = [i.get("estimates", {}) for i in _infos(res.info)]
        plans = [i.get("plan", {}) for i in _infos(res.info)]
        zero_var = any(e.get("sigma1_sq") == 0.0 and pl.get("batch_size") for e, pl in zip(est, plans))
        why = "sigma1_sq = 0 with mini-batches" if zero_var else "x = 0" if not np.any(x) else "other"
    elif label == "datainf" and have:
        ab = _col(res.info.get("approximation_bound"), k)
        ok = strict = ab is not None and bool(np.all(err <= ab + margin))
        if ab is not None and not ok:
            sus.append(f"datainf approximation_bound violated|err/bound {float(np.max(err / np.maximum(ab, 1e-300))):.3g}")
    elif label == "identity":
        ok = strict = finite and rn is not None and bool(np.all(np.isfinite(rn)))
    eb = _col(res.info.get("error_bound"), k)
    eb_ok = True
    if eb is not None and have:
        eb_ok = bool(np.all(err <= eb + margin))
        if not eb_ok:
            ratio = float(np.max(err / np.maximum(eb, 1e-300)))
            what = "error_bound violated" + (" (declared psd, A indefinite)" if not p.psd_true else "")
            if not res.status.ok:
                sus.append(f"{what} on a non-SUCCESS result|{res.status.value} err/bound {ratio:.3g}")
            elif not p.psd_true:
                sus.append(f"{what}|err/bound {ratio:.3g}")
            else:
                silent.append(f"error_bound: err/bound {_bucket(ratio)}|{ratio:.3g}")
    if res.status.ok:
        if not finite:
            silent.append("SUCCESS with non-finite x|")
        if rn is None or not np.all(np.isfinite(rn)):
            silent.append("SUCCESS with non-finite/absent residual_norm|")
        if ok is False:
            detail = f"rel err {np.max(rel):.3g}, rtol {claim.get('rtol')}" if rel is not None else ""
            detail = cg_detail if label.startswith("cg") else detail
            silent.append(f"claim: {why}{rng_note}|{detail}")
    if rn is not None and finite and np.all(np.isfinite(rn)):
        allow = fi.eps * p.d * (bnorm + float(np.max(np.abs(p.eig_M))) * np.linalg.norm(x, axis=0))
        if np.any((rn * 10 < r_true) & (r_true - rn > allow)):
            sus.append("residual_norm under-reports the true residual >10x|")
    over = (not res.status.ok) and finite and strict is True and eb_ok
    nums = {"rel_err": None if rel is None else float(np.max(rel)), "kappa": p.kappa}
    return silent, over, sus, nums


def run_one(p, label, solver, claim):
    rec = {"op": p.op_kind, "solver": label, "dtype": p.dtype, "backend": p.backend, "index": p.index,
           "silent": [], "over": False, "sus": [], "warn": 0}
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        try:
            res = ih.solve(p.op, p.rhs, solver, damping=p.damping, on_failure="ignore")
        except InvhvpError as e:
            rec["outcome"] = "E:" + type(e).__name__
            rec["msg"] = str(e)[:160]
            structural = isinstance(e, (ih.errors.UnsupportedOperatorError, ih.errors.DampingError))
            rec["over"] = not structural and p.well_posed()
            return rec
        except Exception as e:  # noqa: BLE001 - any other exception is a defect
            rec["outcome"] = "DEFECT:" + type(e).__name__
            rec["msg"] = (str(e)[:160] + " @ " + traceback.extract_tb(e.__traceback__)[-1].filename.split("/")[-1]
                          + ":" + str(traceback.extract_tb(e.__traceback__)[-1].lineno))
            return rec
        rec["warn"] = sum(1 for x in w if issubclass(x.category, RuntimeWarning))
    rec["outcome"] = res.status.value
    try:
        rec["silent"], rec["over"], rec["sus"], rec["nums"] = evaluate(p, label, solver, claim, res)
    except Exception as e:  # noqa: BLE001 - a result the checks cannot read (e.g. wrong type) is a defect
        rec["outcome"] = "DEFECT:check:" + type(e).__name__
        rec["msg"] = str(e)[:160]
    return rec


# ----------------------------------------------------------------------------- part 2: diverging LiSSA
def _own_lissa(Ud, shift, s, lam, v, eta, B, T, rng, xref, dense=None):
    """Plain numpy LiSSA (float64); returns the final relative error (inf on blow-up)."""
    n = 0 if Ud is None else Ud.shape[0]
    u = np.zeros_like(v)
    xs = np.linalg.norm(xref)
    for _ in range(T):
        if dense is not None:
            Au = dense @ u
        elif B is None:
            Au = s * (Ud.T @ (Ud @ u)) + shift * u
        else:
            R = Ud[rng.integers(0, n, B)]
            Au = (s * n / B) * (R.T @ (R @ u)) + shift * u
        u = u - eta * (Au + lam * u - v)
        if not np.linalg.norm(u) < 1e8 * xs:
            return np.inf
    return float(np.linalg.norm(u - xref) / xs)


def diverging_lissa(seed, n_target, log):
    rng = np.random.default_rng([seed, 2**20])
    rows, tries = [], 0
    while len(rows) < n_target and tries < 20 * n_target:
        tries += 1
        dense = rng.random() < 0.35
        d = int(rng.integers(2, 31))
        dtype = "float64" if rng.random() < 0.8 else "float32"
        n = int(rng.integers(30, 400))
        U = rng.standard_normal((n, d)) * np.exp(rng.standard_normal(n) * rng.uniform(0.5, 2.0))[:, None]
        U = U.astype(dtype).astype(np.float64)
        s, shift = 1.0 / n, 0.0
        G = s * U.T @ U
        ev = np.linalg.eigvalsh(G)
        lam = float(10 ** rng.uniform(-3, 0) * np.trace(G) / d)
        t = s * n * np.sum(U * U, axis=1)  # ‖g̃_i‖²
        sig = float(np.linalg.eigvalsh((U.T * (t * s)) @ U - G @ G)[-1])  # ‖E(g gᵀ − G)²‖
        mode = "step" if dense else str(rng.choice(["step", "batch", "both"]))
        top = ev[-1] + lam
        eta = (rng.uniform(1.05, 4.0) * 2 / top) if mode in ("step", "both") else rng.uniform(0.3, 1.0) / top
        thr = eta * sig / (lam * abs(2 - eta * lam))
        if mode == "step":
            B = None if dense or rng.random() < 0.5 else int(rng.integers(max(1, n // 4), n + 1))
        else:
            B = int(np.floor(thr / 10 ** rng.uniform(1, 3)))
            if B < 1:
                continue
        T = int(10 ** rng.uniform(2, 3.5))
        v = rng.standard_normal(d)
        xref = np.linalg.solve(G + lam * np.eye(d), v)
        trials = [_own_lissa(U, shift, s, lam, v, eta, B, T, np.random.default_rng(j), xref, G if dense else None)
                  for j in range(1 if B is None else 2)]
        if not min(trials) > 1.0:
            continue  # not confirmed as diverging: draw another configuration
        op = ih.Dense((0.5 * (G + G.T)).astype(dtype)) if dense else ih.LowRankPlusIdentity(U.astype(dtype))
        cfg = ih.LiSSA(step=float(eta), batch_size="full" if B is None else B, steps=T, rng=int(rng.integers(2**31)))
        row = {"op": "dense" if dense else "lowrank", "dtype": dtype, "mode": mode, "batch": B, "steps": T,
               "step_over_2_lmax": float(eta * top / 2), "batch_over_threshold": None if B is None else float(B / thr)}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = ih.solve(op, v.astype(dtype), cfg, damping=lam, on_failure="ignore")
            row["status"] = r.status.value
            row["returned_rel_err"] = float(np.linalg.norm(r.x.astype(np.float64) - xref) / np.linalg.norm(xref))
        except InvhvpError as e:
            row["status"] = "E:" + type(e).__name__
        except Exception as e:  # noqa: BLE001
            row["status"] = "DEFECT:" + type(e).__name__
        rows.append(row)
    c = collections.Counter(r["status"] for r in rows)
    m = len(rows)
    summary = {"configs": m, "draws": tries, "by_status": dict(c),
               "not_success": sum(v for k, v in c.items() if k != "success") / max(m, 1),
               "diverged_or_nonfinite": (c["diverged"] + c["nonfinite"]) / max(m, 1),
               "by_mode": {md: dict(collections.Counter(r["status"] for r in rows if r["mode"] == md))
                           for md in ("step", "batch", "both")},
               "by_operator": {f"{o}/{b}": dict(collections.Counter(
                   r["status"] for r in rows if r["op"] == o and (r["batch"] is None) == (b == "full")))
                   for o in ("dense", "lowrank") for b in ("full", "mini-batch")}}
    log(f"\nPart 2: {m} diverging explicit LiSSA configurations (confirmed by a numpy loop; {tries} draws)")
    log(f"  statuses: {dict(c)}")
    log(f"  not SUCCESS: {summary['not_success']:.1%}   DIVERGED/NONFINITE: {summary['diverged_or_nonfinite']:.1%}")
    for md, cc in list(summary["by_mode"].items()) + list(summary["by_operator"].items()):
        log(f"  {md:18s}: {cc}")
    for r in [r for r in rows if r["status"] not in ("diverged", "nonfinite")][:10]:
        log(f"  not DIVERGED/NONFINITE: {r}")
    return summary, rows


# ----------------------------------------------------------------------------- report
def table(recs, log, key=lambda r: (r["op"], r["solver"], r["dtype"]), head=("op", "solver", "dtype")):
    cells = collections.defaultdict(collections.Counter)
    for r in recs:
        c = cells[key(r)]
        c["total"] += 1
        o = r["outcome"]
        c[o if o in STATUSES else ("typed" if o.startswith("E:") else "defect")] += 1
        c["silent"] += bool(r["silent"])
        c["over"] += bool(r["over"])
        c["warn"] += bool(r["warn"])
    cols = ["total", "success", "inaccurate", "max_iter", "diverged", "nonpositive_curvature", "nonfinite",
            "typed", "defect", "silent", "over"]
    short = ["total", "SUCC", "INACC", "MAXIT", "DIVG", "NONPOS", "NONFIN", "typed", "DEFECT", "SILENT", "over"]
    log("\n| " + " | ".join(head) + " | " + " | ".join(short) + " |")
    log("|" + "---|" * (len(head) + len(cols)))
    for key in sorted(cells):
        log("| " + " | ".join(key) + " | " + " | ".join(str(cells[key][c]) for c in cols) + " |")
    tot = collections.Counter()
    for c in cells.values():
        tot.update(c)
    log("| **all** |" + " |" * (len(head) - 1) + " " + " | ".join(f"**{tot[c]}**" for c in cols) + " |")
    return {"|".join(k): dict(v) for k, v in cells.items()}, tot


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=10000, help="operator problems (each solved by every applicable solver)")
    ap.add_argument("--quick", action="store_true", help="300 problems and 30 diverging LiSSA configurations")
    ap.add_argument("--n-diverge", type=int, default=240)
    ap.add_argument("--json", default=None)
    ap.add_argument("--case", type=int, default=None, help="rerun problem CASE verbosely")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    n, n_div = (300, 30) if a.quick else (a.n, a.n_diverge)
    out = []
    log = lambda s="": (print(s, flush=True), out.append(s))  # noqa: E731
    if a.case is not None:
        p = FP.make_problem(a.seed, a.case)
        print(p.desc, "\nkappa", p.kappa, "ref_err", p.ref_err, "psd_true", p.psd_true)
        for label, solver, claim in draw_solvers(p, np.random.default_rng([a.seed, a.case, 1])):
            print(label, solver, run_one(p, label, solver, claim))
        return 0
    t0 = time.perf_counter()
    log(f"invhvp from {os.path.dirname(ih.__file__)}; seed {a.seed}; {n} operator problems")
    recs, untrusted = [], collections.Counter()
    for i in range(n):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # overflow in has_diagonal() etc. is counted inside run_one
            p = FP.make_problem(a.seed, i)
            cfgs = draw_solvers(p, np.random.default_rng([a.seed, i, 1]))
        untrusted[p.op_kind] += p.x_ref is None
        for label, solver, claim in cfgs:
            recs.append(run_one(p, label, solver, claim))
        if (i + 1) % 200 == 0:
            print(f"  ... {i + 1}/{n} problems, {len(recs)} solves, {time.perf_counter() - t0:.0f} s", flush=True)
    t1 = time.perf_counter()
    cells, tot = table(recs, log)
    table(recs, log, key=lambda r: (r["solver"], r["dtype"]), head=("solver", "dtype"))
    log(f"\n{len(recs)} solves of {n} operator problems in {t1 - t0:.0f} s; reference untrusted (claims that need x* "
        f"unchecked) for {sum(untrusted.values())} problems: {dict(untrusted)}")
    typed = collections.Counter((r["solver"], r["outcome"][2:]) for r in recs if r["outcome"].startswith("E:"))
    log("typed errors (solver, type): " + ", ".join(f"{k[0]}/{k[1]}: {v}" for k, v in sorted(typed.items())))
    over = collections.Counter((r["solver"], r["outcome"]) for r in recs if r["over"])
    log("over-reporting (solver, status): " + ", ".join(f"{k[0]}/{k[1]}: {v}" for k, v in sorted(over.items())))
    sus = collections.Counter((r["solver"], s.split("|")[0]) for r in recs for s in r["sus"])
    log("suspicious notes (solver, note): " + "; ".join(f"{k[0]}: {k[1]}: {v}" for k, v in sorted(sus.items())))
    warned = collections.Counter(r["solver"] for r in recs if r["warn"])
    log(f"solves that emitted RuntimeWarnings: {dict(warned)}")
    log(f"\nSilent failures: {int(tot['silent'])} solves   defects: {int(tot['defect'])}")
    cat = collections.defaultdict(list)
    for r in recs:
        for s in r["silent"]:
            cat[(r["solver"], r["dtype"], s.split("|")[0])].append(r["index"])
        if r["outcome"].startswith("DEFECT"):
            cat[(r["solver"], r["dtype"], r["outcome"] + ": " + r.get("msg", "")[:60])].append(r["index"])
    for key in sorted(cat):
        log(f"  {len(cat[key]):4d}  {' / '.join(key)}   cases {cat[key][:6]}")
    div, div_rows = diverging_lissa(a.seed, n_div, log)
    log(f"\ntotal time {time.perf_counter() - t0:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"seed": a.seed, "n": n, "solves": len(recs), "seconds": time.perf_counter() - t0,
                       "cells": cells, "totals": dict(tot), "untrusted": dict(untrusted),
                       "records": [r for r in recs if r["silent"] or r["over"] or r["sus"] or r["outcome"].startswith(("DEFECT", "E:"))],
                       "diverging_lissa": div, "diverging_rows": div_rows}, f, default=str, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
