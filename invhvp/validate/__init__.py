"""``invhvp validate``: the DataInf and LiSSA papers' experiments, reproduced as a report.

Studies (each with 20% of the training labels flipped, over LoRA ranks):

- approximation error of every solver's influence values against the exact per-block inverse;
- mislabeled-data detection (AUC of the influence score against the flipped-label mask);
- runtime of every solver on the same problem;
- theory: DataInf's true per-block error against its bounds, LiSSA's error against batch size
  beside the predicted threshold.

Every phase runs under one thread limit (``--threads``, :mod:`.threads`) with cost-weighted
progress (:mod:`.plan`, :mod:`.progress`).

Settings: a LoRA MLP on scikit-learn's digits (:mod:`invhvp.validate.digits`) and a LoRA MiniLM
text classifier from the torch adapter (:mod:`invhvp.validate.minilm`).  Needs the ``validate``
extra (scikit-learn, matplotlib, tqdm); all heavy imports happen inside functions.
"""

from .config import ValidateConfig, check_config, preset
from .runner import run_validation

__all__ = ["ValidateConfig", "preset", "check_config", "run_validation"]
