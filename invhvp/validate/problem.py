"""The influence problem every study works on: per-block gradients plus a flipped-label mask."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["InfluenceProblem", "flip_labels"]


@dataclass
class InfluenceProblem:
    """Per-block per-sample gradients of one fine-tuned model, ready for influence studies.

    Attributes
    ----------
    setting : str
        Name of the setting (``"digits"``, ``"minilm"``).
    rank : int
        LoRA rank of the adapters the gradients were taken with respect to.
    train_grads : list of ndarray
        One ``(n, d_l)`` float64 array per block: loss gradients of the ``n`` training points
        (with their possibly flipped labels).
    test_grads : list of ndarray
        One ``(m, d_l)`` float64 array per block: loss gradients of ``m`` clean test points.
    flipped : ndarray of bool, shape (n,)
        True where the training label was flipped.
    block_names : list of str
        A name per block (the LoRA tensor it belongs to).
    info : dict
        Anything worth reporting (accuracies, sizes, timings of the setup).
    """

    setting: str
    rank: int
    train_grads: list
    test_grads: list
    flipped: np.ndarray
    block_names: list
    info: dict = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        """Number of training points ``n``."""
        return int(self.train_grads[0].shape[0])

    @property
    def n_test(self) -> int:
        """Number of test points ``m``."""
        return int(self.test_grads[0].shape[0])

    @property
    def block_sizes(self) -> list[int]:
        """The block dimensions ``d_l``."""
        return [int(g.shape[1]) for g in self.train_grads]


def flip_labels(labels, n_classes: int, fraction: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Flip a ``fraction`` of ``labels`` to a different class chosen uniformly at random.

    Parameters
    ----------
    labels : array of int, shape (n,)
    n_classes : int
    fraction : float
        Share of points to flip, in ``[0, 1]``; ``round(fraction·n)`` points are flipped.
    rng : numpy.random.Generator

    Returns
    -------
    noisy : ndarray of int
        Labels with the flipped entries changed (never to their original value).
    mask : ndarray of bool
        True where the label was flipped.

    Examples
    --------
    >>> import numpy as np
    >>> y, mask = flip_labels(np.zeros(10, dtype=int), 3, 0.2, np.random.default_rng(0))
    >>> int(mask.sum()), bool(np.all(y[mask] != 0)), bool(np.all(y[~mask] == 0))
    (2, True, True)
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    k = int(round(fraction * n))
    idx = rng.choice(n, size=k, replace=False)
    noisy = labels.copy()
    shift = rng.integers(1, n_classes, size=k)
    noisy[idx] = (labels[idx] + shift) % n_classes
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    return noisy, mask
