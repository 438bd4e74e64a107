"""The two per-sample gradient engines (hooks, vmap) against independent references.

References: one ``torch.autograd.grad`` per sample (a loop, fine in a test), central finite
differences, and the other engine.  Models are tiny; float32 and float64.
"""

import warnings

import pytest

torch = pytest.importorskip("torch")

from invhvp.adapters import (  # noqa: E402
    EngineError,
    SampleCouplingError,
    TrainModeWarning,
    per_sample_gradients,
)
from invhvp.errors import InputError, ShapeError  # noqa: E402

F = torch.nn.functional
TOL = {torch.float32: 2e-5, torch.float64: 1e-11}


def ce(m, b):
    return F.cross_entropy(m(b[0]), b[1], reduction="none")


def autograd_rows(model, loss_fn, batch, names):
    """Reference: ``torch.autograd.grad`` of each sample's loss, the sample taken alone."""
    params = dict(model.named_parameters())
    n = (batch[0] if isinstance(batch, tuple) else next(iter(batch.values()))).shape[0]
    rows = []
    for i in range(n):
        sample = (
            tuple(t[i : i + 1] for t in batch)
            if isinstance(batch, tuple)
            else {k: v[i : i + 1] for k, v in batch.items()}
        )
        with torch.enable_grad():
            g = torch.autograd.grad(
                loss_fn(model, sample).sum(), [params[k] for k in names], allow_unused=True
            )
        rows.append(
            torch.cat(
                [
                    torch.zeros(params[k].numel(), dtype=params[k].dtype) if x is None else x.reshape(-1)
                    for k, x in zip(names, g)
                ]
            )
        )
    return torch.stack(rows)


def assert_rows(got, ref, dtype):
    tol = TOL[dtype]
    torch.testing.assert_close(got.to(ref.dtype), ref, rtol=tol, atol=tol * float(ref.abs().max()))


def mlp(dtype, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).to(dtype).eval()


def data(n=9, d=3, classes=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


# ----------------------------------------------------------------------- 2-D inputs, bias


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("engine", ["hooks", "vmap", "auto"])
def test_engines_equal_one_sample_autograd(dtype, engine):
    model = mlp(dtype)
    X, y = data(dtype=dtype)
    g = per_sample_gradients(model, ce, (X, y), engine=engine, dtype=dtype, chunk_size=4)
    names = [n for n, _ in model.named_parameters()]
    assert g.info["engine"] == ("vmap" if engine == "vmap" else "hooks")
    assert g.info["chunk_sizes"] == [1, 4] and g.dtype == dtype
    assert_rows(g.flat(), autograd_rows(model, ce, (X, y), names), dtype)
    torch.testing.assert_close(g.losses, ce(model, (X, y)).detach(), rtol=TOL[dtype], atol=TOL[dtype])


def test_bias_and_weight_selected_separately():
    model = mlp(torch.float64)
    X, y = data()
    for names in (["0.bias", "2.bias"], ["2.weight"], ["0.weight", "2.bias"]):
        g = per_sample_gradients(model, ce, (X, y), params=names, engine="hooks", dtype=torch.float64)
        assert g.names == names
        assert_rows(g.flat(), autograd_rows(model, ce, (X, y), names), torch.float64)


def test_hooks_engine_against_finite_differences():
    model = mlp(torch.float64, seed=3)
    X, y = data(n=4, seed=3)
    g = per_sample_gradients(model, ce, (X, y), engine="hooks", dtype=torch.float64)
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(1)
    V = {k: torch.randn(p.shape, generator=gen, dtype=torch.float64) for k, p in params.items()}
    eps = 1e-6

    def losses(sign):
        shifted = {k: p.detach() + sign * eps * V[k] for k, p in params.items()}
        return F.cross_entropy(torch.func.functional_call(model, shifted, (X,)), y, reduction="none")

    fd = (losses(1) - losses(-1)) / (2 * eps)
    v = torch.cat([V[k].reshape(-1) for k in params])
    torch.testing.assert_close(g.flat() @ v, fd, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------- sequences, padding, Conv1D


class Tagger(torch.nn.Module):
    """Tokens (B, T, d) → linear → tanh → masked mean over tokens → linear head."""

    def __init__(self, d=4, h=6, c=3, conv1d=False):
        super().__init__()
        if conv1d:
            from transformers.pytorch_utils import Conv1D

            self.proj = Conv1D(h, d)
            torch.nn.init.normal_(self.proj.bias)
        else:
            self.proj = torch.nn.Linear(d, h)
        self.head = torch.nn.Linear(h, c)

    def forward(self, x, mask):
        h = torch.tanh(self.proj(x)) * mask[..., None]
        return self.head(h.sum(1) / mask.sum(1, keepdim=True))


def seq_loss(m, b):
    return F.cross_entropy(m(b["x"], b["mask"]), b["y"], reduction="none")


def seq_batch(n=5, T=6, d=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([T, 2, 4, 1, 5, 3, 6, 2][:n])
    mask = (torch.arange(T)[None] < lens[:, None]).to(dtype)
    return {
        "x": torch.randn(n, T, d, generator=g, dtype=dtype),
        "mask": mask,
        "y": torch.randint(0, 3, (n,), generator=g),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("conv1d", [False, True], ids=["linear", "conv1d"])
def test_sequences_padding_and_conv1d(dtype, conv1d):
    if conv1d:
        pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = Tagger(conv1d=conv1d).to(dtype).eval()
    b = seq_batch(dtype=dtype)
    g = per_sample_gradients(model, seq_loss, b, dtype=dtype)
    assert g.info["engine"] == "hooks"
    names = [n for n, _ in model.named_parameters()]
    ref = autograd_rows(model, seq_loss, b, names)
    assert_rows(g.flat(), ref, dtype)
    v = per_sample_gradients(model, seq_loss, b, dtype=dtype, engine="vmap")
    assert_rows(g.flat(), v.flat(), dtype)
    # masked tokens do not contribute: garbage in the padding changes nothing,
    b2 = dict(b, x=torch.where(b["mask"][..., None] > 0, b["x"], 1e3 * torch.ones_like(b["x"])))
    g2 = per_sample_gradients(model, seq_loss, b2, dtype=dtype)
    assert_rows(g2.flat(), g.flat(), dtype)
    # and a sample without padding at its own length has the same gradient
    i, L = 1, 2
    alone = {"x": b["x"][i : i + 1, :L], "mask": b["mask"][i : i + 1, :L], "y": b["y"][i : i + 1]}
    gi = per_sample_gradients(model, seq_loss, alone, dtype=dtype)
    assert_rows(gi.flat()[0], g.flat()[i], dtype)


class Shared(torch.nn.Module):
    """One linear layer applied twice (two calls, one parameter)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)

    def forward(self, x):
        return self.lin(torch.tanh(self.lin(x)))


def test_module_called_twice_accumulates():
    torch.manual_seed(0)
    model = Shared().double().eval()
    X, y = data()
    g = per_sample_gradients(model, ce, (X, y), engine="hooks", dtype=torch.float64)
    assert_rows(g.flat(), autograd_rows(model, ce, (X, y), ["lin.weight", "lin.bias"]), torch.float64)


class InPlace(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(3, 4), torch.nn.Linear(4, 3)

    def forward(self, x):
        h = self.a(x)
        h.mul_(2.0)
        return self.b(torch.relu_(h))


def test_outputs_modified_in_place_are_handled():
    torch.manual_seed(0)
    model = InPlace().double().eval()
    X, y = data()
    g = per_sample_gradients(model, ce, (X, y), engine="hooks", dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    assert_rows(g.flat(), autograd_rows(model, ce, (X, y), names), torch.float64)


# ------------------------------------------------------------------ automatic choice, fallback


class Tied(torch.nn.Module):
    """``a.weight`` is also used outside ``a``'s forward: the hooks engine cannot see that use."""

    def __init__(self):
        super().__init__()
        self.a, self.h = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)

    def forward(self, x):
        return self.h(torch.tanh(self.a(x)) + F.linear(x, self.a.weight))


class SeqFirst(torch.nn.Module):
    """The linear layer sees (T, B, d): the samples are not in the leading dimension."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(3, 3)

    def forward(self, x):
        return self.a(x.transpose(0, 1)).sum(0)


@pytest.mark.parametrize("model_cls,T", [(Tied, None), (SeqFirst, 4), (SeqFirst, 9)])
def test_auto_falls_back_to_vmap_and_hooks_refuses(model_cls, T):
    torch.manual_seed(0)
    model = model_cls().double().eval()
    X, y = data()
    if T is not None:
        X = torch.randn(9, T, 3, dtype=torch.float64)
    g = per_sample_gradients(model, ce, (X, y), dtype=torch.float64)
    assert g.info["engine"] == "vmap" and "hooks engine" in g.info["fallback"]
    names = [n for n, _ in model.named_parameters()]
    assert_rows(g.flat(), autograd_rows(model, ce, (X, y), names), torch.float64)
    for chunk in (None, 9):
        with pytest.raises(EngineError, match="engine='vmap'"):
            per_sample_gradients(model, ce, (X, y), engine="hooks", chunk_size=chunk)


def test_auto_uses_vmap_for_parameters_hooks_cannot_take():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 3)).double()
    X, y = data()
    g = per_sample_gradients(model.eval(), ce, (X, y), dtype=torch.float64)
    assert g.info["engine"] == "vmap" and "fallback" not in g.info
    assert_rows(
        g.flat(), autograd_rows(model, ce, (X, y), [n for n, _ in model.named_parameters()]), torch.float64
    )
    with pytest.raises(EngineError, match=r"'1\.weight'.*LayerNorm module '1'.*engine='vmap'"):
        per_sample_gradients(model, ce, (X, y), engine="hooks")
    g = per_sample_gradients(model, ce, (X, y), params=["0.weight", "2.bias"], dtype=torch.float64)
    assert g.info["engine"] == "hooks"


class Branchy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.norm = torch.nn.Linear(3, 3), torch.nn.LayerNorm(3)

    def forward(self, x):
        h = self.a(x)
        if bool(torch.isfinite(h).all()):  # a data-dependent Python branch (like transformers'
            h = self.norm(h)  # mask shortcuts): same result per sample, but vmap cannot batch it
        return h


def test_vmap_failure_names_the_line_the_module_and_the_fix():
    torch.manual_seed(0)
    model = Branchy().double().eval()
    X, y = data()
    with pytest.raises(
        EngineError,
        match=r"(?s)data-dependent.*test_adapter_engines\.py:\d+ in forward.*"
        r"if bool\(torch\.isfinite.*module '\(root\)' \(Branchy\).*engine='hooks'",
    ):
        per_sample_gradients(model, ce, (X, y), engine="vmap", params=["a.weight"])
    # auto takes the hooks engine for a linear weight: the branch is no problem
    g = per_sample_gradients(model, ce, (X, y), params=["a.weight"], dtype=torch.float64)
    assert g.info["engine"] == "hooks"
    assert_rows(g.flat(), autograd_rows(model, ce, (X, y), ["a.weight"]), torch.float64)
    # a LayerNorm parameter rules hooks out: the error says what to select instead
    with pytest.raises(EngineError, match=r"cannot run this model.*select only weights/biases of nn\.Linear"):
        per_sample_gradients(model, ce, (X, y))


# ------------------------------------------------------------------- coupling, train mode


@pytest.mark.parametrize("engine", ["auto", "hooks", "vmap"])
def test_batchnorm_in_train_mode_is_refused(engine):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3)).train()
    X, y = data(dtype=torch.float32)
    with pytest.raises(SampleCouplingError, match=r"BatchNorm1d module '1' is in train mode.*model\.eval"):
        per_sample_gradients(model, ce, (X, y), engine=engine)
    g = per_sample_gradients(model.eval(), ce, (X, y), engine=engine, params=["0.weight", "2.weight"])
    assert g.n == 9


@pytest.mark.parametrize("engine", ["hooks", "vmap"])
def test_loss_normalized_over_the_batch_is_refused(engine):
    model = mlp(torch.float64)
    X, y = data()

    def coupled(m, b):
        losses = ce(m, b)
        return losses / losses.sum().detach()

    with pytest.raises(SampleCouplingError, match="not per-sample"):
        per_sample_gradients(model, coupled, (X, y), engine=engine)
    with pytest.raises(ShapeError, match=r"loss_fn: must return per-sample losses.*reduction='none'"):
        per_sample_gradients(model, lambda m, b: ce(m, b).mean(), (X, y), engine=engine)


def test_dropout_in_train_mode_warns_with_both_engines():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 3)).train()
    X, y = data(dtype=torch.float32)
    for engine in ("hooks", "vmap"):
        with pytest.warns(TrainModeWarning, match="model.eval"):
            assert per_sample_gradients(model, ce, (X, y), engine=engine).n == 9


# ------------------------------------------------------------------- chunks from the budget


def test_chunks_follow_the_memory_budget():
    model = mlp(torch.float64)
    X, y = data(n=50)
    full = per_sample_gradients(model, ce, (X, y), dtype=torch.float64)
    assert full.info["chunk_sizes"] == [50] and full.info["memory_budget"] == 2**30
    per = full.info["bytes_per_sample"]
    d = sum(p.numel() for p in model.parameters())
    assert per >= 3 * d * 8  # the gradient buffers alone
    small = per_sample_gradients(model, ce, (X, y), dtype=torch.float64, memory_budget=7 * per + 1)
    assert small.info["chunk_sizes"] == [1, 7]
    assert_rows(small.flat(), full.flat(), torch.float64)
    tiny = per_sample_gradients(model, ce, (X, y), dtype=torch.float64, memory_budget=1)
    assert tiny.info["chunk_sizes"] == [1]
    # a longer sequence needs more memory per sample: measured again for each new input shape
    torch.manual_seed(0)
    tagger = Tagger().double().eval()
    short, long_ = seq_batch(T=4), seq_batch(T=64)
    g = per_sample_gradients(tagger, seq_loss, [short, long_], dtype=torch.float64)
    g_long = per_sample_gradients(tagger, seq_loss, long_, dtype=torch.float64)
    assert g.info["bytes_per_sample"] == g_long.info["bytes_per_sample"]
    assert (
        g_long.info["bytes_per_sample"]
        > per_sample_gradients(tagger, seq_loss, short).info["bytes_per_sample"]
    )


def test_argument_errors():
    model = mlp(torch.float32)
    X, y = data(dtype=torch.float32)
    for kw, match in (
        ({"engine": "jit"}, "engine: expected one of"),
        ({"memory_budget": 0}, "memory_budget"),
        ({"memory_budget": 1.5}, "memory_budget"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": 2.0}, "chunk_size"),
    ):
        with pytest.raises(InputError, match=match):
            per_sample_gradients(model, ce, (X, y), **kw)


def test_chunks_go_to_the_sink_in_order():
    """The interface an on-disk store plugs into: ``sink.append(list of (k, d_l) chunks)``."""
    from invhvp.adapters.runner import compute_gradients
    from invhvp.adapters.selection import group_parameters, select_parameters

    class Recorder:
        def __init__(self):
            self.calls = []

        def append(self, chunks):
            self.calls.append([c.clone() for c in chunks])

    model = mlp(torch.float64)
    X, y = data(n=10)
    chosen = select_parameters(model)
    groups = group_parameters(list(chosen), "module")
    sink = Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        losses, info = compute_gradients(
            model,
            ce,
            [(X[:7], y[:7]), (X[7:], y[7:])],
            chosen,
            groups,
            sink,
            engine="auto",
            chunk_size=4,
            memory_budget=2**30,
            dtype=torch.float64,
            progress=False,
            check=True,
            noisy=False,
        )
    assert [[tuple(c.shape) for c in call] for call in sink.calls] == [
        [(4, 20), (4, 18)],
        [(3, 20), (3, 18)],
        [(3, 20), (3, 18)],
    ]
    ref = per_sample_gradients(model, ce, (X, y), blocks="module", dtype=torch.float64)
    for b, block in enumerate(ref):
        torch.testing.assert_close(torch.cat([call[b] for call in sink.calls]), block)
    torch.testing.assert_close(losses, ref.losses)
