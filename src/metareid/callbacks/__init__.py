"""Lightning callbacks shared by the gait and ReID tasks."""

from metareid.callbacks.layer_freeze import LayerFreeze
from metareid.callbacks.precise_bn import PreciseBN
from metareid.callbacks.wandb_media import WandbMedia

__all__ = ["LayerFreeze", "PreciseBN", "WandbMedia"]
