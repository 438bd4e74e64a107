"""What a validation run does: :class:`ValidateConfig`, the named modes, and their checks."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .digits import DigitsConfig

__all__ = ["ValidateConfig", "preset", "check_config", "ALL_RANKS", "DIGITS_IMAGES", "MINILM_WORDS"]

ALL_RANKS = (1, 2, 4, 8)
#: Images in scikit-learn's digits data set (pretraining + training + test splits).
DIGITS_IMAGES = 1797
#: Positive and negative words of the VADER lexicon at ``min_abs_rating = 1.5`` (the MiniLM data).
MINILM_WORDS = (1811, 2222)


@dataclass(frozen=True)
class ValidateConfig:
    """Everything a validation run needs.

    Parameters
    ----------
    mode : {"quick", "full", "smoke"}
        ``quick`` (the default of the CLI) finishes in a few minutes on 2 CPU cores;
        ``full`` is the paper-scale study (MiniLM n = 2000, m = 200) with the papers' LiSSA
        depths; ``smoke`` is tiny and only for tests.
    ranks : tuple of int
        LoRA ranks of the digits setting.
    minilm_ranks : tuple of int
        LoRA ranks of the MiniLM setting (empty: skip it).
    digits : DigitsConfig
    minilm : dict
        Keyword arguments for :func:`invhvp.adapters.minilm_lora_setup` (``n_train``,
        ``n_test``, ``finetune_steps``, ...).
    lissa_quick : bool
        Shortened classic LiSSA depths (see :func:`~invhvp.validate.methods.default_methods`).
    lissa_batch_sizes : tuple of int
        Batch sizes of the LiSSA-versus-batch-size study.
    lissa_steps, lissa_repeats : int
        Steps and seeds per batch size in that study.
    lissa_hessian : bool
        Also run that study on the damped Hessian of the digits model (smallest rank; a dense
        ``d×d`` Hessian is formed for the references).
    datainf_max_dim : int
        Largest ``min(n, d_l)`` for which DataInf's true error is computed.
    n_pairs : int
        Test points whose individual influence rows are computed (``pearson_pairs``); each
        method is timed on ``1 + n_pairs`` queries (the average test gradient and these).
    lissa_budget : int or None
        Budget of the automatic LiSSA plans in full products per right-hand-side column and
        block; ``None``: the solver's default (2000).
    device : str or None
        ``None``: gradients with torch on the CPU and solves with numpy; otherwise the torch
        device of the gradients and the solves (``"cpu"``, ``"cuda"``, ``"cuda:N"``).
    threads : int or None
        Compute threads of torch and of every BLAS/OpenMP pool for the whole run; ``None``:
        the number of physical cores.
    seed : int
    """

    mode: str = "quick"
    ranks: tuple = ALL_RANKS
    minilm_ranks: tuple = ALL_RANKS
    digits: DigitsConfig = field(default_factory=DigitsConfig)
    minilm: dict = field(default_factory=dict)
    lissa_quick: bool = True
    lissa_batch_sizes: tuple = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    lissa_steps: int = 400
    lissa_repeats: int = 3
    lissa_hessian: bool = True
    datainf_max_dim: int = 2048
    n_pairs: int = 20
    lissa_budget: int | None = 300
    device: str | None = None
    threads: int | None = None
    seed: int = 0


def preset(mode: str, **overrides) -> ValidateConfig:
    """The configuration of a named mode (``"quick"``, ``"full"``, ``"smoke"``), with overrides.

    ``digits_n_train``, ``digits_n_test``, ``minilm_n_train`` and ``minilm_n_test`` override the
    sizes inside ``digits`` and ``minilm``; other keywords replace fields of
    :class:`ValidateConfig`.  The result is checked with :func:`check_config`.
    """
    if mode == "quick":
        cfg = ValidateConfig(
            mode="quick",
            digits=DigitsConfig(n_pretrain=400, n_train=500, n_test=100),
            minilm={"n_train": 200, "n_test": 40, "finetune_steps": 60},
            lissa_quick=True,
            lissa_steps=300,
            lissa_repeats=2,
        )
    elif mode == "full":
        cfg = ValidateConfig(
            mode="full",
            digits=DigitsConfig(n_pretrain=400, n_train=1000, n_test=200),
            minilm={"n_train": 2000, "n_test": 200, "finetune_steps": 150},
            lissa_quick=False,
            lissa_budget=None,
            n_pairs=100,
            lissa_batch_sizes=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            lissa_steps=1000,
            lissa_repeats=5,
        )
    elif mode == "smoke":
        cfg = ValidateConfig(
            mode="smoke",
            ranks=(1, 2),
            minilm_ranks=(),
            digits=DigitsConfig(
                n_pretrain=150, n_train=120, n_test=20, hidden=16, pretrain_steps=30, finetune_steps=30
            ),
            minilm={"n_train": 24, "n_test": 6, "finetune_steps": 4},
            lissa_quick=True,
            lissa_batch_sizes=(1, 8, 64),
            lissa_steps=100,
            lissa_repeats=1,
            lissa_hessian=False,  # tested on its own (tests/test_hessian.py): the smoke run stays short
            datainf_max_dim=512,
        )
    else:
        raise ValueError(f"mode: expected 'quick', 'full' or 'smoke', got {mode!r}")
    sizes = {k: overrides.pop(k) for k in list(overrides) if k.startswith(("digits_n_", "minilm_n_"))}
    sizes = {k: v for k, v in sizes.items() if v is not None}
    if "digits_n_train" in sizes or "digits_n_test" in sizes:
        cfg = replace(
            cfg,
            digits=replace(
                cfg.digits,
                n_train=sizes.get("digits_n_train", cfg.digits.n_train),
                n_test=sizes.get("digits_n_test", cfg.digits.n_test),
            ),
        )
    mini = {k[len("minilm_") :]: v for k, v in sizes.items() if k.startswith("minilm_")}
    if mini:
        cfg = replace(cfg, minilm={**cfg.minilm, **mini})
    cfg = replace(cfg, **overrides)
    check_config(cfg)
    return cfg


def check_config(cfg: ValidateConfig) -> None:
    """Raise :class:`~invhvp.errors.InputError` naming the option when ``cfg`` cannot run.

    Messages name the CLI flag and the config field (``--n-train (digits.n_train)``).
    """
    from invhvp.errors import InputError

    d = cfg.digits
    for flag, field_, v in (
        ("--n-train", "digits.n_train", d.n_train),
        ("--n-test", "digits.n_test", d.n_test),
        ("--minilm-n-train", "minilm['n_train']", cfg.minilm.get("n_train", 1)),
        ("--minilm-n-test", "minilm['n_test']", cfg.minilm.get("n_test", 1)),
        ("--threads", "threads", 1 if cfg.threads is None else cfg.threads),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{flag} ({field_}): expected a positive integer, got {v!r}")
    if d.n_train < 10:
        raise InputError(f"--n-train (digits.n_train): at least 10 training points, got {d.n_train}")
    if d.n_pretrain + d.n_train + d.n_test > DIGITS_IMAGES:
        raise InputError(
            f"--n-train/--n-test (digits.n_train + digits.n_test): the digits data has {DIGITS_IMAGES} "
            f"images and {d.n_pretrain} go to pretraining, so n + m <= {DIGITS_IMAGES - d.n_pretrain}; "
            f"got {d.n_train} + {d.n_test}"
        )
    if cfg.minilm_ranks:
        total = cfg.minilm.get("n_train", 0) + cfg.minilm.get("n_test", 0)
        pos, neg = MINILM_WORDS
        if total // 2 > pos or total - total // 2 > neg:
            raise InputError(
                f"--minilm-n-train/--minilm-n-test (minilm n_train + n_test): the lexicon has "
                f"{pos} positive words and the words are drawn balanced, so n + m <= {2 * pos + 1}; "
                f"got {total}"
            )
    for flag, field_, ranks in (
        ("--ranks", "ranks", cfg.ranks),
        ("--minilm-ranks", "minilm_ranks", cfg.minilm_ranks),
    ):
        if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in ranks):
            raise InputError(f"{flag} ({field_}): expected positive integers, got {list(ranks)!r}")
        if len(set(ranks)) != len(ranks):
            raise InputError(f"{flag} ({field_}): each rank once, got {list(ranks)!r}")
    if not cfg.ranks:
        raise InputError("--ranks (ranks): at least one digits rank")
