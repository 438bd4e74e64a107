"""The digits setting: a small MLP with LoRA adapters on scikit-learn's digits (ships offline).

An MLP ``64 → H → H → H → 10`` is pretrained briefly on a clean split; its weights are then
frozen and every hidden layer gets a LoRA adapter ``W x + (α/r)·B A x`` (``A`` is ``r×in``,
``B`` is ``out×r``, ``B = 0`` at the start).  The adapters are fine-tuned on a second split in
which a share of the labels (20% by default) is flipped.  Per-sample loss gradients with respect
to each LoRA tensor (one block per tensor: ``A1, B1, A2, B2, A3, B3``) are computed with the
torch adapter's :func:`invhvp.adapters.per_sample_gradients` (``torch.func``) for the training
points (noisy labels) and for clean test points.

torch and scikit-learn are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .problem import InfluenceProblem, flip_labels

__all__ = ["DigitsConfig", "DigitsModel", "digits_problems"]


@dataclass(frozen=True)
class DigitsConfig:
    """Sizes and training schedule of the digits setting.

    Parameters
    ----------
    n_pretrain, n_train, n_test : int
        Points in the clean pretraining split, the noisy fine-tuning split (``n``) and the
        clean test split (``m``); together at most 1797 (the size of the data set).
    hidden : int
        Width ``H`` of the hidden layers.
    pretrain_steps, finetune_steps : int
        Full-batch Adam steps for pretraining and for LoRA fine-tuning.
    flip_fraction : float
        Share of fine-tuning labels flipped.
    alpha : float
        LoRA scaling numerator (the adapter is scaled by ``alpha / rank``).
    """

    n_pretrain: int = 400
    n_train: int = 1000
    n_test: int = 200
    hidden: int = 128
    pretrain_steps: int = 150
    finetune_steps: int = 150
    flip_fraction: float = 0.2
    alpha: float = 8.0


@dataclass
class DigitsModel:
    """A fine-tuned digits LoRA MLP with its data (``digits_problems(..., return_models=True)``).

    ``hessian()`` is the matrix-free Hessian of the mean training loss with respect to the LoRA
    tensors (:func:`invhvp.adapters.hvp_operator`, ``psd=False``, with a mini-batch sampler),
    in the coordinates of the problem's gradient blocks (``names`` order).
    """

    model: object
    names: list
    train: tuple
    test: tuple

    @staticmethod
    def loss(model, batch):
        import torch

        return torch.nn.functional.cross_entropy(model(batch[0]), batch[1], reduction="none")

    def hessian(self, chunk_size: int = 256):
        from invhvp.adapters import hvp_operator

        return hvp_operator(self.model, self.loss, [self.train], params=self.names, chunk_size=chunk_size)


def _build(torch, hidden):
    nn = torch.nn

    class LoRALinear(nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base = base
            self.rank = 0
            self.scaling = 0.0

        def add_lora(self, rank, alpha, gen):
            out_f, in_f = self.base.weight.shape
            a = torch.randn(rank, in_f, generator=gen, dtype=torch.float64) / in_f**0.5
            self.lora_A = nn.Parameter(a)
            self.lora_B = nn.Parameter(torch.zeros(out_f, rank, dtype=torch.float64))
            self.rank, self.scaling = rank, alpha / rank

        def forward(self, x):
            y = self.base(x)
            if self.rank:
                y = y + self.scaling * ((x @ self.lora_A.T) @ self.lora_B.T)
            return y

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1 = LoRALinear(nn.Linear(64, hidden))
            self.l2 = LoRALinear(nn.Linear(hidden, hidden))
            self.l3 = LoRALinear(nn.Linear(hidden, hidden))
            self.head = nn.Linear(hidden, 10)

        def forward(self, x):
            h = torch.relu(self.l1(x))
            h = torch.relu(self.l2(h))
            h = torch.relu(self.l3(h))
            return self.head(h)

    return MLP


def _train(torch, model, params, X, y, steps, lr):
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(X), y)
        loss.backward()
        opt.step()
    return float(loss.detach())


def _accuracy(torch, model, X, y) -> float:
    with torch.no_grad():
        return float((model(X).argmax(1) == y).double().mean())


def _per_sample_grads(torch, model, names, X, y):
    from invhvp.adapters import per_sample_gradients

    def loss(m, batch):
        return torch.nn.functional.cross_entropy(m(batch[0]), batch[1], reduction="none")

    g = per_sample_gradients(
        model, loss, [(X, y)], params=names, blocks="tensor", chunk_size=256, dtype=torch.float64
    )
    return [b.detach().cpu().numpy() for b in g]


def digits_problems(
    ranks,
    config: DigitsConfig | None = None,
    seed: int = 0,
    progress=None,
    return_models=False,
    device=None,
    run_item=None,
):
    """Build one :class:`InfluenceProblem` per LoRA rank on the digits data.

    Parameters
    ----------
    ranks : sequence of int
        LoRA ranks; the pretrained base network and the data splits are shared by all ranks.
    config : DigitsConfig, optional
    seed : int
        Seeds the split, the label flips, the initialization and training.
    progress : callable, optional
        ``progress(message)`` is called after each stage.
    return_models : bool, default False
        Also return one :class:`DigitsModel` per rank (for the Hessian studies); the models and
        their data are returned on the CPU whatever ``device`` is.
    device : str, optional
        torch device of the training and of the per-sample gradients (``None``: the CPU).
    run_item : callable, optional
        ``run_item(key, fn)`` runs each stage (keys ``("gradients", "digits", 0)`` for the
        pretraining, ``("gradients", "digits", rank)`` per rank); progress reporting hooks in here.

    Returns
    -------
    list of InfluenceProblem (and a list of DigitsModel with ``return_models``)
    """
    import torch
    from sklearn.datasets import load_digits

    run_item = run_item or (lambda key, fn, *a, **k: fn(*a, **k))
    dev = torch.device(device or "cpu")
    cfg = config or DigitsConfig()
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    X, y = load_digits(return_X_y=True)
    need = cfg.n_pretrain + cfg.n_train + cfg.n_test
    if need > X.shape[0]:
        raise ValueError(f"config: the splits need {need} points, the digits data has {X.shape[0]}")
    perm = rng.permutation(X.shape[0])
    X = (X / 16.0).astype(np.float64)
    i_pre = perm[: cfg.n_pretrain]
    i_tr = perm[cfg.n_pretrain : cfg.n_pretrain + cfg.n_train]
    i_te = perm[cfg.n_pretrain + cfg.n_train : need]
    y_noisy, flipped = flip_labels(y[i_tr], 10, cfg.flip_fraction, rng)

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)

    def T(a):
        return torch.as_tensor(a, device=dev)

    Xp, yp = T(X[i_pre]), T(y[i_pre])
    Xtr, ytr, ytr_clean = T(X[i_tr]), T(y_noisy), T(y[i_tr])
    Xte, yte = T(X[i_te]), T(y[i_te])

    MLP = _build(torch, cfg.hidden)

    def pretrain():
        base = MLP().double().to(dev)
        _train(torch, base, list(base.parameters()), Xp, yp, cfg.pretrain_steps, 1e-2)
        return {k: v.clone() for k, v in base.state_dict().items()}, _accuracy(torch, base, Xte, yte)

    base_state, base_acc = run_item(("gradients", "digits", 0), pretrain)
    if progress:
        progress(f"digits: pretrained base, test accuracy {base_acc:.3f}")
    setup_s = time.perf_counter() - t0

    def one_rank(rank):
        t1 = time.perf_counter()
        model = MLP().double()
        model.load_state_dict(base_state)
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in (model.l1, model.l2, model.l3):
            layer.add_lora(
                int(rank), cfg.alpha, gen
            )  # initialized on the CPU generator: same on every device
        model = model.to(dev)
        names = [f"{layer}.lora_{ab}" for layer in ("l1", "l2", "l3") for ab in ("A", "B")]
        lora = [p for k, p in model.named_parameters() if k in names]
        loss = _train(torch, model, lora, Xtr, ytr, cfg.finetune_steps, 3e-3)
        train_grads = _per_sample_grads(torch, model, names, Xtr, ytr)
        test_grads = _per_sample_grads(torch, model, names, Xte, yte)
        info = {
            "n_train": cfg.n_train,
            "n_test": cfg.n_test,
            "hidden": cfg.hidden,
            "device": str(dev),
            "base_test_accuracy": base_acc,
            "test_accuracy": _accuracy(torch, model, Xte, yte),
            "train_accuracy_noisy_labels": _accuracy(torch, model, Xtr, ytr),
            "train_accuracy_clean_labels": _accuracy(torch, model, Xtr, ytr_clean),
            "final_train_loss": loss,
            "setup_seconds": setup_s + time.perf_counter() - t1,
        }
        prob = InfluenceProblem(
            setting="digits",
            rank=int(rank),
            train_grads=train_grads,
            test_grads=test_grads,
            flipped=flipped,
            block_names=names,
            info=info,
        )
        cpu = torch.device("cpu")
        dm = DigitsModel(model.to(cpu), names, (Xtr.to(cpu), ytr.to(cpu)), (Xte.to(cpu), yte.to(cpu)))
        return prob, dm

    problems, models = [], []
    for rank in ranks:
        prob, dm = run_item(("gradients", "digits", int(rank)), one_rank, rank)
        problems.append(prob)
        models.append(dm)
        if progress:
            progress(f"digits: rank {rank} fine-tuned, test accuracy {prob.info['test_accuracy']:.3f}")
    return (problems, models) if return_models else problems
