"""Torch adapter: per-sample gradients, HVP/GGN operators and end-to-end influence from a model.

Everything here needs ``torch`` (``pip install invhvp[torch]``; the MiniLM setup needs
``invhvp[lora]``).  Names are exported lazily, so ``import invhvp`` and
``import invhvp.adapters`` never import torch; the first attribute access does::

    from invhvp.adapters import per_sample_gradients, influence
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BlockGradients": "block_gradients",
    "BatchError": "errors",
    "EngineError": "errors",
    "SampleCouplingError": "errors",
    "TrainModeWarning": "selection",
    "per_sample_gradients": "gradients",
    "select_parameters": "selection",
    "gram_operator": "operators",
    "hvp_operator": "operators",
    "ggn_operator": "operators",
    "ModelInfluence": "model_influence",
    "influence": "model_influence",
    "minilm_lora_setup": "minilm",
    "sentiment_lexicon_data": "minilm",
    "MiniLMSetup": "minilm",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'invhvp.adapters' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
