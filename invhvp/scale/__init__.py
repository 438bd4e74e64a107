"""Streaming influence over on-disk or sharded training gradients (issue 12; docs/scale.md).

``invhvp.scale.influence_scores(train, test_grads, ...)`` reads a :class:`~invhvp.GradientStore`
(or per-block arrays, or this rank's shard under ``torch.distributed``) in two or three passes
and returns average influence, top-``k`` harmful/helpful training rows per test point and,
optionally, self-influence, without the ``m×n`` influence matrix in memory.
"""

from .api import InfluenceScores, TopK, influence_scores

__all__ = ["influence_scores", "InfluenceScores", "TopK"]
