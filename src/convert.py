"""Convert an OpenGait/MetaGait or ACL/fast-reid checkpoint into one that src/eval.py loads.

    python src/convert.py opengait --src GaitGL-120000.pt --out metagait.ckpt --model metagait \
        --data casiab
    python src/convert.py acl --src model_final.pth --out dr50.ckpt --model dr50 --data <reid data>

The target network is built from the same Hydra configs as src/eval.py (``conf/eval.yaml``
composed with ``model=``, ``data=`` and any further ``key=value`` overrides given after the
options), so the converted file evaluates with the same ``model=``/``data=`` choices:

    python src/eval.py model=metagait data=casiab ckpt_path=metagait.ckpt
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException

from metareid.checkpoint_io import atomic_torch_save
from metareid.checkpoints import (
    BNNECK_LAYOUTS,
    NET_PREFIX,
    CheckpointError,
    convert_checkpoint,
    load_checkpoint_file,
    source_state_dict,
    with_head_sizes,
)

log = logging.getLogger("convert")
REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(REPO))
DEFAULT_MODEL = {"opengait": "metagait", "acl": "dr50"}
# Released MetaGait/GaitGL checkpoints are CASIA-B ones; ACL's depend on the source domains.
DEFAULT_DATA = {"opengait": "casiab", "acl": None}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Convert a reference checkpoint into a metareid (Lightning) checkpoint.",
        epilog="Trailing key=value arguments are Hydra overrides of conf/eval.yaml "
        "(e.g. data.num_classes=74 model.net.bin_num=32).",
    )
    parser.add_argument("source_format", choices=["opengait", "acl"], help="checkpoint family")
    parser.add_argument("--src", required=True, type=Path, help="reference checkpoint file")
    parser.add_argument("--out", required=True, type=Path, help="converted checkpoint to write")
    parser.add_argument(
        "--model",
        help="conf/model option of the target (default: metagait for opengait, dr50 for acl)",
    )
    parser.add_argument(
        "--data",
        help="conf/data option, which sets the class counts (default: casiab for opengait, "
        "the model config's own data for acl)",
    )
    parser.add_argument(
        "--ignore-keys",
        action="append",
        default=[],
        metavar="REGEX",
        help="drop checkpoint keys matching this regular expression (repeatable)",
    )
    parser.add_argument(
        "--bnneck-layout",
        choices=BNNECK_LAYOUTS,
        default="channel-major",
        help="part-major for OpenGait checkpoints older than its [n, c, p] layout (BNNeck head)",
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow checkpoints that pickle Python objects (runs their unpickling code)",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides key=value")
    # Intermixed: the Hydra overrides may follow the options.
    return parser.parse_intermixed_args(argv)


def build_target_module(
    overrides: Sequence[str], source_weights: dict[str, torch.Tensor]
) -> torch.nn.Module:
    """Instantiate ``cfg.model`` (the LightningModule) of ``conf/eval.yaml`` + ``overrides``.

    A ReID head whose class counts are left to the data takes those of the checkpoint.
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("eval", overrides=list(overrides))
    net_config = with_head_sizes(cfg.model.net, source_weights)
    if net_config is not cfg.model.net:
        counts = list(net_config.head.num_classes)
        log.info(
            "model.net.head.num_classes taken from the checkpoint: %s. Evaluate with a data "
            "config whose sources have these identity counts, or add "
            "model.net.head.num_classes=[%s] to the eval.py command.",
            counts,
            ",".join(str(c) for c in counts),
        )
        cfg.model.net = net_config
    module = hydra.utils.instantiate(cfg.model)
    if not isinstance(getattr(module, "net", None), torch.nn.Module):
        raise CheckpointError(
            f"{type(module).__name__} (model={overrides}) has no `net` network attribute; "
            "metareid checkpoints store the network under `net.`"
        )
    return module


def convert(args: argparse.Namespace) -> dict:
    """Convert ``args.src`` into ``args.out``; returns the written checkpoint."""
    model = args.model or DEFAULT_MODEL[args.source_format]
    overrides = [f"model={model}"]
    data = args.data or DEFAULT_DATA[args.source_format]
    if data:
        overrides.append(f"data={data}")
    overrides += list(args.overrides)
    source = load_checkpoint_file(args.src, trust_pickle=args.trust_pickle)
    module = build_target_module(overrides, source_state_dict(source, str(args.src)))
    extra_state = {
        key: value for key, value in module.state_dict().items() if not key.startswith(NET_PREFIX)
    }
    checkpoint, report = convert_checkpoint(
        source,
        args.source_format,
        module.net,
        extra_state=extra_state,
        ignore_keys=args.ignore_keys,
        bnneck_layout=args.bnneck_layout,
        origin=str(args.src),
    )
    checkpoint["metareid_conversion"]["overrides"] = overrides
    # The same strict load Lightning will do, before anything is written.
    module.load_state_dict(checkpoint["state_dict"], strict=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(checkpoint, args.out)
    log.info("%s -> %s (%s)\n%s", args.src, args.out, " ".join(overrides), report.format())
    return checkpoint


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        convert(args)
    except (CheckpointError, FileNotFoundError, HydraException) as error:
        log.error("error: %s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
