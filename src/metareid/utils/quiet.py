"""Keep a run's console for the run: drop library chatter that carries no information about it.

* Lightning's advertising tips ("💡 Tip: ... litlogger / litmodels") printed at every start;
* torch's deprecation of ``LeafSpec`` that Lightning 2.6 triggers inside its data fetcher, once per
  run (Lightning's code, not ours; nothing to act on).
"""

from __future__ import annotations

import logging
import warnings

LIGHTNING_TIP_PREFIX = "💡 Tip:"


class _DropLightningTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(LIGHTNING_TIP_PREFIX)


def silence_library_noise() -> None:
    """Install the filters (idempotent)."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLightningTips) for f in logger.filters):
            logger.addFilter(_DropLightningTips())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
