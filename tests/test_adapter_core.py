"""Torch adapter on tiny models: per-sample gradients, HVP/GGN operators, influence, errors."""

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import invhvp as ih  # noqa: E402
from invhvp.adapters import (  # noqa: E402
    BlockGradients,
    TrainModeWarning,
    ggn_operator,
    gram_operator,
    hvp_operator,
    influence,
    per_sample_gradients,
    select_parameters,
)
from invhvp.errors import DeviceError, DTypeError, InputError, ShapeError  # noqa: E402

F = torch.nn.functional


def ce(m, b):
    return F.cross_entropy(m(b[0]), b[1], reduction="none")


def make(dtype=torch.float64, seed=0, n=11):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = (
        torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).to(dtype).eval()
    )
    X = torch.randn(n, 3, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    return model, X, y


def loop_grads(model, loss_fn, X, y, names):
    """Reference: one loss.backward() per sample."""
    params = dict(model.named_parameters())
    rows = []
    for i in range(X.shape[0]):
        model.zero_grad()
        loss_fn(model, (X[i : i + 1], y[i : i + 1])).sum().backward()
        rows.append(torch.cat([params[n].grad.reshape(-1) for n in names]))
    model.zero_grad()
    return torch.stack(rows)


def unflat(model, flat):
    out, o = {}, 0
    for n, p in model.named_parameters():
        out[n] = flat[o : o + p.numel()].reshape(p.shape)
        o += p.numel()
    return out


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# ------------------------------------------------------------------- per-sample gradients


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_size", [1, 4, 32])
def test_per_sample_gradients_equal_backward_loop(dtype, chunk_size):
    model, X, y = make(dtype)
    data = [(X[:7], y[:7]), [X[7:], y[7:]]]  # two batches, a list batch too
    g = per_sample_gradients(model, ce, data, chunk_size=chunk_size, dtype=dtype)
    names = [n for n, _ in model.named_parameters()]
    ref = loop_grads(model, ce, X, y, names)
    assert isinstance(g, BlockGradients) and len(g) == 4 and g.n == 11
    assert g.names == names and g.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(g.flat(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(g.losses, ce(model, (X, y)).detach(), rtol=tol, atol=tol)


def test_float32_storage_of_a_float64_model_and_module_blocks():
    model, X, y = make(torch.float64)
    assert per_sample_gradients(model, ce, [(X, y)]).dtype == torch.float64  # default: the model's
    g = per_sample_gradients(model, ce, [(X, y)], blocks="module", dtype=torch.float32)
    assert g.names == ["0", "2"] and g.param_names == [["0.weight", "0.bias"], ["2.weight", "2.bias"]]
    assert g.dtype == torch.float32 and g.sizes == [16, 15]
    ref = loop_grads(model, ce, X, y, [n for n, _ in model.named_parameters()])
    torch.testing.assert_close(g.flat(), ref.float(), rtol=1e-6, atol=1e-7)


def test_dict_batches_and_parameter_selection():
    model, X, y = make()

    def loss(m, b):
        return F.cross_entropy(m(b["x"]), b["y"], reduction="none")

    g = per_sample_gradients(model, loss, [{"x": X, "y": y}], params=["2.weight"], dtype=torch.float64)
    assert g.names == ["2.weight"]
    torch.testing.assert_close(g[0], loop_grads(model, ce, X, y, ["2.weight"]))
    g2 = per_sample_gradients(model, loss, [{"x": X, "y": y}], params=lambda n, p: n.endswith("bias"))
    assert g2.names == ["0.bias", "2.bias"]
    blocks = per_sample_gradients(model, loss, [{"x": X, "y": y}], blocks=lambda n: n[0])
    assert blocks.names == ["0", "2"]


class TinyLoRA(torch.nn.Module):
    """Named like peft: only lora_A / lora_B are selected by default."""

    def __init__(self):
        super().__init__()
        self.base = torch.nn.Linear(4, 3)
        self.base.weight.requires_grad_(False)
        self.lora_A = torch.nn.ModuleDict({"default": torch.nn.Linear(4, 2, bias=False)})
        self.lora_B = torch.nn.ModuleDict({"default": torch.nn.Linear(2, 3, bias=False)})
        self.head = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.base(x) + self.lora_B["default"](self.lora_A["default"](x)))


def test_default_selection_is_lora_tensors_and_module_blocks_pair_them():
    torch.manual_seed(0)
    m = TinyLoRA().eval()
    assert list(select_parameters(m)) == ["lora_A.default.weight", "lora_B.default.weight"]
    X, y = torch.randn(6, 4), torch.randint(0, 2, (6,))
    g = per_sample_gradients(m, ce, [(X, y)], blocks="module")
    assert len(g) == 1 and g.sizes == [8 + 6] and g.names == ["(root)"]
    assert g[0].grad_fn is None and g.losses.grad_fn is None  # the trainable head is not selected
    ref = loop_grads(m, ce, X, y, ["lora_A.default.weight", "lora_B.default.weight"])
    torch.testing.assert_close(g[0], ref, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------- operators


def test_hvp_operator_equals_autograd_hessian():
    model, X, y = make(torch.float64)
    op = hvp_operator(model, ce, [(X[:5], y[:5]), (X[5:], y[5:])], chunk_size=3)

    def mean_loss(flat):
        return ce(lambda x: torch.func.functional_call(model, unflat(model, flat), (x,)), (X, y)).mean()

    H = torch.autograd.functional.hessian(mean_loss, flat_params(model))
    assert op.size == H.shape[0] and op.dtype == torch.float64 and not op.psd
    torch.testing.assert_close(op.to_dense(), H, rtol=1e-10, atol=1e-12)
    v = torch.randn(op.size, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-10, atol=1e-12)


def explicit_ggn(model, X, y, idx=None):
    idx = torch.arange(X.shape[0]) if idx is None else idx

    def f(flat):
        return torch.func.functional_call(model, unflat(model, flat), (X[idx],))

    p = flat_params(model)
    J = torch.autograd.functional.jacobian(f, p)  # (b, c, d)
    P = torch.softmax(f(p), -1)
    Hout = torch.diag_embed(P) - P[:, :, None] * P[:, None, :]
    return torch.einsum("bcd,bce,bef->df", J, Hout, J) / len(idx)


def out_fn(m, b):
    return m(b[0])


def out_loss(f, b):
    return F.cross_entropy(f, b[1], reduction="none")


def test_ggn_operator_equals_explicit_form_and_sampler_draws_from_rng():
    model, X, y = make(torch.float64)
    op = ggn_operator(model, out_fn, out_loss, [(X, y)], chunk_size=4)
    assert op.psd and op.n_samples == 11
    torch.testing.assert_close(op.to_dense(), explicit_ggn(model, X, y), rtol=1e-10, atol=1e-12)
    est = op.minibatch(5, np.random.default_rng(3))
    idx = torch.as_tensor(np.random.default_rng(3).integers(0, 11, size=5))
    torch.testing.assert_close(est.to_dense(), explicit_ggn(model, X, y, idx), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_operators_pass_the_operator_contract(dtype):
    testing = pytest.importorskip("invhvp.testing")
    model, X, y = make(dtype)
    testing.check_operator(ggn_operator(model, out_fn, out_loss, [(X, y)]))
    testing.check_operator(hvp_operator(model, ce, [(X, y)]))
    g = per_sample_gradients(model, ce, [(X, y)], dtype=dtype)
    testing.check_operator(gram_operator(g))


def test_gram_operator_is_block_diagonal_empirical_fisher():
    model, X, y = make(torch.float64)
    g = per_sample_gradients(model, ce, [(X, y)], dtype=torch.float64)
    op = gram_operator(g)
    assert isinstance(op, ih.BlockDiagonal) and op.n_blocks == 4
    U = g.flat()
    full = U.T @ U / U.shape[0]
    dense = op.to_dense()
    for s in op.slices():
        torch.testing.assert_close(dense[s, s], full[s, s])
    assert float(dense[op.slices()[0], op.slices()[1]].abs().max()) == 0.0


def test_cg_on_ggn_operator_solves_the_damped_system():
    model, X, y = make(torch.float64)
    op = ggn_operator(model, out_fn, out_loss, [(X, y)])
    b = torch.randn(op.size, dtype=torch.float64)
    res = ih.solve(op, b, ih.CG(rtol=1e-10), damping=0.1)
    G = explicit_ggn(model, X, y)
    torch.testing.assert_close(res.x, torch.linalg.solve(G + 0.1 * torch.eye(op.size, dtype=G.dtype), b))


# -------------------------------------------------------------------------- influence


@pytest.mark.parametrize("solver", [ih.Exact(), ih.DataInf(), ih.Identity(), ih.CG(rtol=1e-10)], ids=str)
def test_influence_equals_influence_from_hand_built_gradients(solver):
    model, X, y = make(torch.float64, n=9)
    Xt, yt = X[:3] + 0.5, y[:3]
    res = influence(model, ce, [(X, y)], [(Xt, yt)], solver, dtype=torch.float64, self_influence=True)
    names = [n for n, _ in model.named_parameters()]
    U = loop_grads(model, ce, X, y, names)
    T = loop_grads(model, ce, Xt, yt, names)
    sizes = [p.numel() for p in model.parameters()]
    Ub, Tb = list(U.split(sizes, dim=1)), list(T.split(sizes, dim=1))
    lams = ih.default_damping(Ub)
    ref = ih.influence_matrix(Ub, Tb, solver, damping=lams)
    torch.testing.assert_close(res.values, ref, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(
        res.self_influence, ih.self_influence(Ub, solver, damping=lams), rtol=1e-8, atol=1e-10
    )
    assert res.values.shape == (3, 9) and res.damping == pytest.approx(tuple(lams), rel=1e-12)
    assert res.solver == solver and res.info["status"] == "success" and res.info["reports"]


def test_influence_sign_and_top_k_by_hand():
    model, X, y = make(torch.float64, n=8)
    res = influence(model, ce, [(X, y)], [(X[:2], y[:2])], ih.Exact(), damping=0.5, dtype=torch.float64)
    # independent dense reference: I = −T (G + λI)⁻¹ Uᵀ with the block-diagonal G
    names = [n for n, _ in model.named_parameters()]
    U = loop_grads(model, ce, X, y, names)
    A = torch.zeros(U.shape[1], U.shape[1], dtype=U.dtype)
    o = 0
    for p in model.parameters():
        s = slice(o, o + p.numel())
        A[s, s] = U[:, s].T @ U[:, s] / 8
        o += p.numel()
    A += 0.5 * torch.eye(U.shape[1], dtype=U.dtype)
    ref = -U[:2] @ torch.linalg.solve(A, U.T)
    torch.testing.assert_close(res.values, ref)
    assert bool((torch.diagonal(res.values[:, :2]) < 0).all())  # a point helps itself
    vals, idx = res.top_k(3, "harmful")
    torch.testing.assert_close(idx, torch.argsort(ref, dim=1, descending=True)[:, :3])
    torch.testing.assert_close(res.helpful(2), torch.argsort(ref, dim=1)[:, :2])
    # reuse the gradients with another solver, no model needed
    again = influence(None, None, res.train_gradients, res.test_gradients, ih.Exact(), damping=0.5)
    torch.testing.assert_close(again.values, res.values)
    with pytest.raises(InputError, match="k:"):
        res.top_k(0)
    # damping is validated like influence_matrix's: a typed error naming the argument
    from invhvp.errors import DampingError

    for bad in ("0.5x", object(), [0.5]):
        with pytest.raises(DampingError, match="damping"):
            influence(None, None, res.train_gradients, res.test_gradients, ih.Exact(), damping=bad)


def test_influence_with_lissa_runs_on_the_gram_form():
    model, X, y = make(torch.float64, n=16)
    res = influence(model, ce, [(X, y)], [(X[:2], y[:2])], ih.LiSSA(), dtype=torch.float64, on_failure="warn")
    ref = influence(None, None, res.train_gradients, res.test_gradients, ih.Exact())
    assert res.values.shape == (2, 16) and bool(torch.isfinite(res.values).all())
    c = torch.corrcoef(torch.stack([res.values.flatten(), ref.values.flatten()]))[0, 1]
    assert float(c) > 0.9


# ----------------------------------------------------------------------------- errors


def test_no_trainable_parameters():
    model, X, y = make()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(InputError, match="no trainable parameters"):
        per_sample_gradients(model, ce, [(X, y)])
    with pytest.raises(InputError, match="params: no parameter named 'nope'"):
        select_parameters(model, ["nope"])


def test_loss_that_is_not_per_sample():
    model, X, y = make()
    with pytest.raises(ShapeError, match=r"loss_fn: must return per-sample losses.*reduction='none'"):
        per_sample_gradients(model, lambda m, b: F.cross_entropy(m(b[0]), b[1]), [(X, y)])
    with pytest.raises(ShapeError, match="loss_fn"):
        per_sample_gradients(model, lambda m, b: m(b[0]), [(X, y)])  # (B, C) outputs

    def coupled(m, b):
        losses = ce(m, b)
        return losses - losses.mean()  # right shape, mixes samples

    with pytest.raises(InputError, match="not per-sample"):
        per_sample_gradients(model, coupled, [(X, y)], chunk_size=4)
    with pytest.raises(ShapeError, match="output_loss"):
        ggn_operator(model, out_fn, lambda f, b: out_loss(f, b).sum(), [(X, y)]).matvec(
            torch.ones(31, dtype=torch.float64)
        )


def test_unexpected_batches():
    model, X, y = make()
    with pytest.raises(DTypeError, match=r"data: batch 0 contains a str at \['text'\]"):
        per_sample_gradients(model, ce, [{"text": "hello", "x": X}])
    with pytest.raises(DTypeError, match="data: expected an iterable of batches"):
        per_sample_gradients(model, ce, 3)
    with pytest.raises(ShapeError, match="different leading sizes"):
        per_sample_gradients(model, ce, [(X, y[:4])])
    with pytest.raises(InputError, match="data: yielded no batch"):
        per_sample_gradients(model, ce, [])
    with pytest.raises(InputError, match="chunk_size"):
        per_sample_gradients(model, ce, [(X, y)], chunk_size=0)
    with pytest.raises(InputError, match="blocks"):
        per_sample_gradients(model, ce, [(X, y)], blocks="layer")


def test_train_mode_with_dropout_warns():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 2)).train()
    X, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
    with pytest.warns(TrainModeWarning, match="model.eval"):
        g = per_sample_gradients(model, ce, [(X, y)])
    assert g.n == 5
    with pytest.warns(TrainModeWarning):
        hvp_operator(model, ce, [(X, y)])


def test_mismatched_devices():
    model, X, y = make()
    with pytest.raises(DeviceError, match="data: batch 0 has a tensor on meta"):
        per_sample_gradients(model, ce, [(X.to("meta"), y)])
    model[2].to("meta")
    with pytest.raises(DeviceError, match="several devices"):
        per_sample_gradients(model, ce, [(X, y)])


def test_importing_invhvp_adapters_does_not_import_torch():
    code = (
        "import sys, invhvp; before = 'torch' in sys.modules; import invhvp.adapters; "
        "assert ('torch' in sys.modules) == before; print(before)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_model_influence_reports_solver_statuses_and_phases():
    model, X, y = make(torch.float64, n=12)
    res = influence(model, ce, [(X, y)], [(X[:2], y[:2])], None, dtype=torch.float64, self_influence=True, progress=True)
    assert isinstance(res.solver, ih.Exact) and "Exact" in res.info["auto"]  # the automatic choice, resolved
    assert res.info["status"] == "success"
    assert {"gradients_s", "setup_s", "solve_s", "self_influence_s"} <= set(res.info)
    # one record per block for each closed form (influence matrix and self-influence)
    assert len(res.info["reports"]) == 2 * len(res.damping)
    assert all(r.status is ih.Status.SUCCESS for r in res.info["reports"])
    cg = influence(model, ce, res.train_gradients, res.test_gradients, ih.CG(rtol=1e-10))
    assert all(r.info["method"] == "cg" and r.residual_norm is not None for r in cg.info["reports"])
    torch.testing.assert_close(cg.values, res.values, rtol=1e-6, atol=1e-9)
