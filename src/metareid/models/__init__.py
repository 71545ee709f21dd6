"""Plain ``nn.Module`` networks (no Lightning, no Hydra).

Names are resolved lazily so that importing one model family never pays for the others.
"""

from importlib import import_module

_EXPORTS = {
    "GaitGL": "metareid.models.gaitgl",
    "MetaGait": "metareid.models.metagait",
    "DR50": "metareid.models.dr50",
    "MetaEmbeddingHead": "metareid.models.reid_head",
    "ReIDBaseline": "metareid.models.reid_baseline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'metareid.models' has no attribute {name!r}")
