"""Library chatter is dropped; everything else Lightning says still reaches the log."""

import logging
import warnings

from pytorch_lightning.utilities.rank_zero import rank_zero_info

from metareid.utils.quiet import silence_library_noise


def test_lightning_tips_are_dropped_and_other_messages_kept(caplog):
    silence_library_noise()
    silence_library_noise()  # idempotent: one filter
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    assert len(logger.filters) == 1
    with caplog.at_level(logging.INFO, logger="pytorch_lightning.utilities.rank_zero"):
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing litlogger")
        rank_zero_info("GPU available: False, used: False")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["GPU available: False, used: False"]


def test_lightning_leafspec_deprecation_is_ignored():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_library_noise()
        message = "`isinstance(treespec, LeafSpec)` is deprecated, use ..."
        warnings.warn(message, FutureWarning, stacklevel=1)
        warnings.warn("something else", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else"]
