"""invhvp through pyDVL's own API (``InvhvpInfluence``) against invhvp and against pyDVL itself.

Runs in its own environment (pyDVL 0.10 pins numpy<2): ``bash tests/pydvl_env/run.sh``.  In the
main environment, without pyDVL, the whole module is skipped.

What is compared (float64, tolerance 1e-6 relative to the largest value):

- Gram curvature (empirical Fisher): ``InvhvpInfluence.influences`` equals
  ``-ih.influence_matrix`` on per-sample gradients computed here independently (plain
  ``torch.func.vmap(grad)``), for every pyDVL block mode, a custom block order, per-block
  damping, Exact / CG / DataInf; ``influence_factors`` equals ``(G + λI)⁻¹ g``.
- Hessian curvature: equals pyDVL's ``DirectInfluence`` (exact, ``SecondOrderMode.HESSIAN``)
  in both influence modes, including a custom block order.
- pyDVL 0.10's own Gram ("Gauss-Newton") is mis-normalized: ``DirectInfluence`` with
  ``SecondOrderMode.GAUSS_NEWTON`` divides ``Σ g gᵀ`` by ``d·(B−1)`` (``d`` parameters, ``B``
  batches) instead of ``n``, and its ``GaussNewtonOperator`` (CG, LiSSA, ...) weights batches
  by the number of right-hand sides.  The Direct case is checked after undoing that factor.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest

pytest.importorskip("pydvl.influence.torch", reason="pyDVL is not installed here: run `bash tests/pydvl_env/run.sh`")

import torch  # noqa: E402
from pydvl.influence import InfluenceMode  # noqa: E402
from pydvl.influence.torch import BlockMode, CgInfluence, DirectInfluence, SecondOrderMode  # noqa: E402
from torch.func import functional_call, grad, vmap  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import invhvp as ih  # noqa: E402
from invhvp.errors import (  # noqa: E402
    ConvergenceError,
    DTypeError,
    InputError,
    NotPositiveDefiniteError,
    UnsupportedOperatorError,
)
from invhvp.interop.pydvl import InvhvpInfluence  # noqa: E402

torch.set_num_threads(1)
# pyDVL 0.10 imports modules that call torch.jit.script, deprecated in torch 2.13
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
loss = torch.nn.functional.cross_entropy
N_TRAIN, N_TEST, BATCH = 40, 7, 16  # batches of 16, 16, 8: uneven on purpose
LAM = 0.05  # Gram damping
LAM_H = 1.0  # Hessian damping (the MLP's Hessian is indefinite; H + 1·I is positive definite)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double().eval()
    X = torch.randn(N_TRAIN, 4, dtype=torch.float64)
    Y = torch.randint(0, 3, (N_TRAIN,))
    Xt = torch.randn(N_TEST, 4, dtype=torch.float64)
    Yt = torch.randint(0, 3, (N_TEST,))
    loader = DataLoader(TensorDataset(X, Y), batch_size=BATCH)
    return model, X, Y, Xt, Yt, loader


def grads(model, X, Y):
    """Independent per-sample gradients: name -> (n, numel), in the model's parameter order."""
    params = {k: p.detach() for k, p in model.named_parameters()}

    def one(p, x, y):
        return loss(functional_call(model, p, (x[None],)), y[None])

    g = vmap(grad(one), in_dims=(None, 0, 0))(params, X, Y)
    return {k: v.reshape(X.shape[0], -1) for k, v in g.items()}


def blocks(g, groups):
    return [torch.cat([g[n] for n in names], dim=1) for names in groups]


def close(a, b, tol=1e-6):
    assert a.shape == b.shape, (a.shape, b.shape)
    err = float((a - b).abs().max())
    assert err <= tol * max(1.0, float(b.abs().max())), f"max |difference| {err:.3g}"


FULL = [["0.weight", "0.bias", "2.weight", "2.bias"]]
LAYERS = [["0.weight", "0.bias"], ["2.weight", "2.bias"]]
PARAMS = [["0.weight"], ["0.bias"], ["2.weight"], ["2.bias"]]


# ----------------------------------------------------------------- Gram vs invhvp itself


@pytest.mark.parametrize(
    "mode, groups", [(BlockMode.FULL, FULL), (BlockMode.LAYER_WISE, LAYERS), (BlockMode.PARAMETER_WISE, PARAMS)]
)
def test_gram_influences_equal_invhvp_influence_matrix(setup, mode, groups):
    model, X, Y, Xt, Yt, loader = setup
    inf = InvhvpInfluence(model, loss, ih.Exact(), damping=LAM, block_structure=mode).fit(loader)
    assert list(inf.inverses) == inf.block_names and len(inf.block_names) == len(groups)
    ref = -ih.influence_matrix(blocks(grads(model, X, Y), groups), blocks(grads(model, Xt, Yt), groups),
                               ih.Exact(), damping=LAM)
    close(inf.influences(Xt, Yt, X, Y), ref)  # (n_test, n_train), pyDVL's sign
    close(inf.influences(X, Y, Xt, Yt), ref.T)  # the other side solved (more test than train rows)
    # symmetric form (x=None): test against test, through the inverse fitted on the training data
    T = blocks(grads(model, Xt, Yt), groups)
    inv = ih.gradient_inverse(blocks(grads(model, X, Y), groups), ih.Exact(), damping=LAM)
    close(inf.influences(Xt, Yt), inv.quad(T, T) if len(T) > 1 else inv.quad(T[0], T[0]))
    by_block = inf.influences_by_block(Xt, Yt, X, Y)
    close(sum(by_block.values()), ref)
    assert all(r.status is ih.Status.SUCCESS and r.x is None for _, r in inf.results)


def test_influence_factors_are_damped_gram_solves(setup):
    model, X, Y, Xt, Yt, loader = setup
    inf = InvhvpInfluence(model, loss, ih.Exact(), damping=LAM, block_structure=BlockMode.LAYER_WISE).fit(loader)
    Ub = blocks(grads(model, X, Y), LAYERS)
    Tb = blocks(grads(model, Xt, Yt), LAYERS)
    want = torch.cat(
        [ih.solve(ih.LowRankPlusIdentity(U), T.T.contiguous(), ih.Exact(), damping=LAM).x.T for U, T in zip(Ub, Tb)],
        dim=1,
    )
    fac = inf.influence_factors(Xt, Yt)
    close(fac, want)
    close(inf.influences_from_factors(fac, X, Y), -ih.influence_matrix(Ub, Tb, ih.Exact(), damping=LAM))


def test_gram_custom_block_order_and_per_block_damping(setup):
    """Blocks listed out of the model's order, damping given per block."""
    model, X, Y, Xt, Yt, loader = setup
    structure = OrderedDict([("head", ["2.bias", "2.weight"]), ("body", ["0.bias", "0.weight"])])
    damping = {"head": 0.2, "body": 0.03}
    inf = InvhvpInfluence(model, loss, ih.Exact(), damping=damping, block_structure=structure).fit(loader)
    groups = list(structure.values())
    ref = -ih.influence_matrix(blocks(grads(model, X, Y), groups), blocks(grads(model, Xt, Yt), groups),
                               ih.Exact(), damping=(0.2, 0.03))
    close(inf.influences(Xt, Yt, X, Y), ref)
    assert [inv.damping for inv in inf.inverses.values()] == [0.2, 0.03]


@pytest.mark.parametrize("solver", [ih.CG(rtol=1e-12), ih.DataInf()], ids=["cg", "datainf"])
def test_other_solvers_equal_invhvp_influence_matrix(setup, solver):
    model, X, Y, Xt, Yt, loader = setup
    inf = InvhvpInfluence(model, loss, solver, damping=LAM, block_structure=BlockMode.LAYER_WISE).fit(loader)
    ref = -ih.influence_matrix(blocks(grads(model, X, Y), LAYERS), blocks(grads(model, Xt, Yt), LAYERS),
                               solver, damping=LAM)
    close(inf.influences(Xt, Yt, X, Y), ref)
    assert {r.status for _, r in inf.results} == {ih.Status.SUCCESS}


def test_with_regularization_refactors(setup):
    model, X, Y, Xt, Yt, loader = setup
    inf = InvhvpInfluence(model, loss, ih.Exact(), damping=LAM).fit(loader)
    inf.with_regularization(0.5)
    ref = -ih.influence_matrix(blocks(grads(model, X, Y), FULL), blocks(grads(model, Xt, Yt), FULL),
                               ih.Exact(), damping=0.5)
    close(inf.influences(Xt, Yt, X, Y), ref)


# ------------------------------------------------------------- Hessian vs pyDVL's DirectInfluence


IN_ORDER = OrderedDict([("b", ["0.bias", "2.weight"]), ("a", ["0.weight", "2.bias"])])
OUT_OF_ORDER = OrderedDict([("b", ["2.weight", "0.bias"]), ("a", ["2.bias", "0.weight"])])


@pytest.mark.parametrize(
    "structure, pydvl_structure",
    [(BlockMode.FULL, BlockMode.FULL), (BlockMode.LAYER_WISE, BlockMode.LAYER_WISE), (IN_ORDER, IN_ORDER),
     (OUT_OF_ORDER, IN_ORDER)],
    ids=["full", "layer_wise", "custom", "custom-out-of-order"],
)
def test_hessian_equals_pydvl_direct_influence(setup, structure, pydvl_structure):
    """Same blocks, same values.  pyDVL's own DirectInfluence is compared with each block's
    parameters in the model's order: with another order its Hessian follows the listed order
    but its gradient provider the model's (``TorchGradientProvider.to``), which mixes them."""
    model, X, Y, Xt, Yt, loader = setup
    ours = InvhvpInfluence(model, loss, ih.Exact(), damping=LAM_H, curvature=SecondOrderMode.HESSIAN,
                           block_structure=structure).fit(loader)
    theirs = DirectInfluence(model, loss, regularization=LAM_H, block_structure=pydvl_structure,
                             second_order_mode=SecondOrderMode.HESSIAN).fit(loader)
    close(ours.influences(Xt, Yt, X, Y), theirs.influences(Xt, Yt, X, Y))
    close(ours.influence_factors(Xt, Yt), theirs.influence_factors(Xt, Yt))
    pert = InfluenceMode.Perturbation
    close(ours.influences(Xt[:3], Yt[:3], X, Y, mode=pert), theirs.influences(Xt[:3], Yt[:3], X, Y, mode=pert))


def test_hessian_with_cg_and_ggn(setup):
    model, X, Y, Xt, Yt, loader = setup
    exact = InvhvpInfluence(model, loss, ih.Exact(), damping=LAM_H, curvature="hessian").fit(loader)
    cg = InvhvpInfluence(model, loss, ih.CG(rtol=1e-12), damping=LAM_H, curvature="hessian").fit(loader)
    close(cg.influences(Xt, Yt, X, Y), exact.influences(Xt, Yt, X, Y))
    # the Gauss-Newton matrix, checked against an explicit J_iᵀ ∇²ℓ_i J_i sum
    ggn = InvhvpInfluence(model, loss, ih.Exact(), damping=LAM, curvature="ggn").fit(loader)
    params = {k: p.detach() for k, p in model.named_parameters()}
    names = list(params)
    flat = torch.cat([params[k].reshape(-1) for k in names])
    sizes = [params[k].numel() for k in names]

    def out(theta, x):
        p = {k: t.reshape(params[k].shape) for k, t in zip(names, torch.split(theta, sizes))}
        return functional_call(model, p, (x[None],))[0]

    G = torch.zeros(flat.numel(), flat.numel(), dtype=torch.float64)
    for x, y in zip(X, Y):
        J = torch.func.jacrev(out)(flat, x)
        Hz = torch.func.hessian(lambda z, y=y: loss(z[None], y[None]))(out(flat, x))
        G += J.T @ Hz @ J
    G /= N_TRAIN
    T = blocks(grads(model, Xt, Yt), FULL)[0]
    U = blocks(grads(model, X, Y), FULL)[0]
    want = T @ torch.linalg.solve(G + LAM * torch.eye(G.shape[0], dtype=G.dtype), U.T)
    close(ggn.influences(Xt, Yt, X, Y), want)


def test_pydvl_gauss_newton_is_the_gram_up_to_its_normalization(setup):
    """pyDVL 0.10's DirectInfluence(GAUSS_NEWTON) forms Σ g gᵀ / (d·(B−1)) instead of Σ g gᵀ / n.

    With c = d·(B−1): (S/c + λ')⁻¹ = c (S + cλ')⁻¹, so λ' = nλ/c and a factor n/c give ours.
    """
    model, X, Y, Xt, Yt, loader = setup
    d = sum(p.numel() for p in model.parameters())
    c = d * (len(loader) - 1)
    ours = InvhvpInfluence(model, loss, ih.Exact(), damping=LAM, curvature=SecondOrderMode.GAUSS_NEWTON).fit(loader)
    theirs = DirectInfluence(model, loss, regularization=N_TRAIN * LAM / c,
                             second_order_mode=SecondOrderMode.GAUSS_NEWTON).fit(loader)
    close(ours.influences(Xt, Yt, X, Y), (N_TRAIN / c) * theirs.influences(Xt, Yt, X, Y))


def test_pydvl_cg_hessian_averages_batches_not_points(setup):
    """pyDVL's HessianOperator (CgInfluence) averages per-batch Hessians: equal to ours only
    when all batches have the same size."""
    model, X, Y, Xt, Yt, _ = setup
    even = DataLoader(TensorDataset(X, Y), batch_size=10)
    ours = InvhvpInfluence(model, loss, ih.Exact(), damping=LAM_H, curvature="hessian").fit(even)
    theirs = CgInfluence(model, loss, regularization=LAM_H, rtol=1e-12, atol=1e-14, maxiter=1000).fit(even)
    close(ours.influences(Xt, Yt, X, Y), theirs.influences(Xt, Yt, X, Y))


# ---------------------------------------------------------------------------- errors


def test_errors_name_the_argument(setup):
    model, X, Y, Xt, Yt, loader = setup
    with pytest.raises(InputError, match="curvature"):
        InvhvpInfluence(model, loss, curvature="fisher")
    with pytest.raises(DTypeError, match="solver"):
        InvhvpInfluence(model, loss, solver="exact")
    with pytest.raises(InputError, match="damping"):
        InvhvpInfluence(model, loss, damping=-1.0)
    with pytest.raises(InputError, match="damping"):
        InvhvpInfluence(model, loss, damping={"no such block": 1.0}, block_structure=BlockMode.LAYER_WISE)
    with pytest.raises(InputError, match="on_failure"):
        InvhvpInfluence(model, loss, on_failure="ignore it")
    with pytest.raises(UnsupportedOperatorError, match="solver"):
        InvhvpInfluence(model, loss, ih.DataInf(), curvature="hessian")
    with pytest.raises(DTypeError, match="model"):
        InvhvpInfluence(lambda x: x, loss)
    triples = DataLoader(TensorDataset(X, Y, Y), batch_size=BATCH)
    with pytest.raises(InputError, match="data"):
        InvhvpInfluence(model, loss, ih.Exact(), damping=LAM, curvature="hessian").fit(triples)
    # 40 points, 51 parameters, no damping: the Gram is singular and Exact says so at fit
    with pytest.raises(NotPositiveDefiniteError, match="damping"):
        InvhvpInfluence(model, loss, ih.Exact()).fit(loader)
    # a solve that does not converge raises through pyDVL's API (on_failure="raise")
    inf = InvhvpInfluence(model, loss, ih.CG(maxiter=1, rtol=1e-12), damping=LAM).fit(loader)
    with pytest.raises(ConvergenceError):
        inf.influences(Xt, Yt, X, Y)
    warned = InvhvpInfluence(model, loss, ih.CG(maxiter=1, rtol=1e-12), damping=LAM, on_failure="ignore").fit(loader)
    warned.influences(Xt, Yt, X, Y)
    assert warned.results[-1][1].status is ih.Status.MAX_ITER


def test_matrix_free_curvature_in_another_parameter_order(setup):
    """A Hessian built in the model's parameter order, presented in a block's listed order
    (used when pyDVL's gradient provider keeps the listed order)."""
    from invhvp.adapters import hvp_operator
    from invhvp.interop._pydvl_curvature import per_sample_loss, reordered

    model, X, Y, _, _, loader = setup
    names = ["2.bias", "0.weight"]
    numels = {n: p.numel() for n, p in model.named_parameters()}
    H = hvp_operator(model, per_sample_loss(loss)[0], list(loader), params=names)
    P = reordered(H, names, numels)
    M = H.matmat(torch.eye(H.size, dtype=torch.float64))  # model order: 0.weight (24), then 2.bias (3)
    perm = torch.cat([torch.arange(24, 27), torch.arange(0, 24)])
    close(P.matmat(torch.eye(P.size, dtype=torch.float64)), M[perm][:, perm], 1e-12)
    v = torch.randn(27, dtype=torch.float64)
    close(P.sampler(5, 0).matvec(v), H.sampler(5, 0).matvec(v[perm.argsort()])[perm], 1e-12)
