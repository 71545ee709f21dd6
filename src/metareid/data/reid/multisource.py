"""Torch datasets over :class:`~metareid.data.reid.dataset.ReIDImage` lists.

Training merges several source domains into one label space the way the DR50 reference does
(dr50.md §4.2): the domain id is the position of the source in the list, identities are numbered
domain by domain (domain 0 gets ``[0, n0)``, domain 1 ``[n0, n0 + n1)``, ...), and the
single-domain views used by the meta-learning step reuse those global labels.

Images leave the workers as ``uint8`` tensors already resized to the model input; augmentation
and normalisation run batched on the device (:mod:`metareid.data.reid.transforms`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from metareid.data.reid.dataset import ReIDImage

__all__ = [
    "MultiSourceTrainSet",
    "ReIDTestSet",
    "SingleDomainView",
    "load_resized_image",
]

log = logging.getLogger(__name__)


def load_resized_image(path: str | Path, image_size: Sequence[int]) -> torch.Tensor:
    """Decode an image with Pillow and resize it with bicubic interpolation.

    Plain ``F.interpolate`` is used because kornia's resize is ~40x slower on CPU (ecosystem.md,
    pitfall 12). Antialiasing is applied only when shrinking, where it prevents aliasing;
    when enlarging it would change nothing but cost time.

    Args:
        path: image file (any mode Pillow reads; converted to RGB).
        image_size: output ``(height, width)``.

    Returns:
        ``uint8`` tensor ``[3, height, width]``.
    """
    height, width = int(image_size[0]), int(image_size[1])
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise OSError(
            f"{path}: cannot decode image ({error}). Remove or replace the file."
        ) from error
    tensor = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
    if tuple(tensor.shape[1:]) == (height, width):
        return tensor.contiguous()
    shrinking = tensor.shape[1] > height or tensor.shape[2] > width
    resized = F.interpolate(
        tensor[None].float(),
        size=(height, width),
        mode="bicubic",
        align_corners=False,
        antialias=shrinking,
    )[0]
    # Bicubic overshoots near edges, so clamp before the cast back to uint8.
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def _load_or_replace(dataset: MultiSourceTrainSet | ReIDTestSet, path: Path) -> torch.Tensor:
    """The resized image, or with ``dataset.strict=False`` a black one when it cannot be read
    (a file that broke after the start-up check), recorded in ``dataset.replaced_images``.

    The record lives in the process that loads: with loader workers, each worker keeps its own;
    the logged warning names the file either way.
    """
    try:
        return load_resized_image(path, dataset.image_size)
    except OSError as error:
        if dataset.strict:
            raise OSError(
                f"{error} Or set data.strict=false to replace such images by black ones (each "
                "logged)."
            ) from error
        dataset.replaced_images.append(str(path))
        log.warning(
            "%s Replaced by a black image (data.strict=false); %d image(s) replaced so far in "
            "this process.",
            error,
            len(dataset.replaced_images),
        )
        return torch.zeros((3, *dataset.image_size), dtype=torch.uint8)


def _check_image_size(image_size: Sequence[int]) -> tuple[int, int]:
    if len(image_size) != 2 or min(int(s) for s in image_size) <= 0:
        raise ValueError(
            f"image_size must be (height, width) with positive entries, got {image_size}"
        )
    return int(image_size[0]), int(image_size[1])


class MultiSourceTrainSet(Dataset):
    """Training images of several source domains in one domain-contiguous label space.

    Identities of a domain are ordered by their pid written as a string (the order fast-reid
    gets from sorting ``"<name>_<pid>"`` keys), so classifier row ``i`` matches the reference's
    row ``i``. Cameras are relabelled the same way, contiguously over all domains, so two domains
    never share a camera label.

    Args:
        datasets: one list of training :class:`ReIDImage` per source domain; the list position
            is the domain id.
        names: one name per source domain (used in messages and :attr:`domain_names`).
        image_size: model input ``(height, width)``.
        strict: an image that cannot be read raises ``OSError`` naming it; ``False`` replaces
            it by a black image and records it in ``replaced_images``.

    Attributes:
        labels: global identity label per item (what a P×K sampler groups by).
        domain_ids: domain id per item.
        num_classes_per_domain: identity count per domain, in domain order.
        num_classes: total identity count.
        label_offsets: first global label of each domain.

    Items are dicts with ``image`` (``uint8 [3, H, W]``), ``label``, ``camid`` and ``domain_id``
    (``int64`` scalars) and ``path`` (the image file as ``str``; batches carry a list of them, so
    a failing training step can name its images).
    """

    def __init__(
        self,
        datasets: Sequence[Sequence[ReIDImage]],
        names: Sequence[str],
        image_size: Sequence[int] = (256, 128),
        strict: bool = True,
    ) -> None:
        if len(datasets) != len(names):
            raise ValueError(
                f"MultiSourceTrainSet got {len(datasets)} datasets but {len(names)} names; "
                "give one name per source domain."
            )
        if not datasets:
            raise ValueError("MultiSourceTrainSet needs at least one source domain.")
        self.image_size = _check_image_size(image_size)
        self.strict = strict
        self.replaced_images: list[str] = []
        self.domain_names = list(names)
        self.items: list[ReIDImage] = []
        labels: list[int] = []
        camids: list[int] = []
        domain_ids: list[int] = []
        self.num_classes_per_domain: list[int] = []
        self.num_cameras_per_domain: list[int] = []
        self.label_offsets: list[int] = []
        label_offset = camera_offset = 0
        for domain_id, (items, name) in enumerate(zip(datasets, names, strict=True)):
            if not items:
                raise ValueError(f"Source domain {name!r} (domain id {domain_id}) has no images.")
            pid_to_label = self._contiguous_labels([item.pid for item in items], label_offset)
            cam_to_label = self._contiguous_labels([item.camid for item in items], camera_offset)
            self.items.extend(items)
            labels.extend(pid_to_label[item.pid] for item in items)
            camids.extend(cam_to_label[item.camid] for item in items)
            domain_ids.extend([domain_id] * len(items))
            self.label_offsets.append(label_offset)
            self.num_classes_per_domain.append(len(pid_to_label))
            self.num_cameras_per_domain.append(len(cam_to_label))
            label_offset += len(pid_to_label)
            camera_offset += len(cam_to_label)
        self.labels = labels
        self.camids = camids
        self.domain_ids = domain_ids

    @staticmethod
    def _contiguous_labels(values: Sequence[int], offset: int) -> dict[int, int]:
        ordered = sorted(set(values), key=str)
        return {value: offset + index for index, value in enumerate(ordered)}

    @property
    def num_domains(self) -> int:
        return len(self.domain_names)

    @property
    def num_classes(self) -> int:
        return sum(self.num_classes_per_domain)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "image": _load_or_replace(self, self.items[index].path),
            "label": torch.tensor(self.labels[index], dtype=torch.int64),
            "camid": torch.tensor(self.camids[index], dtype=torch.int64),
            "domain_id": torch.tensor(self.domain_ids[index], dtype=torch.int64),
            "path": str(self.items[index].path),
        }

    def domain_view(self, domain_id: int) -> SingleDomainView:
        """The items of one domain, with the same global labels as this set."""
        return SingleDomainView(self, domain_id)

    def domain_views(self) -> list[SingleDomainView]:
        return [self.domain_view(d) for d in range(self.num_domains)]


class SingleDomainView(Dataset):
    """Items of one domain of a :class:`MultiSourceTrainSet`, keeping its global labels.

    Attributes:
        labels: global identity label per item of this view.
        indices: positions of this view's items in the merged set.
    """

    def __init__(self, merged: MultiSourceTrainSet, domain_id: int) -> None:
        if not 0 <= domain_id < merged.num_domains:
            raise ValueError(
                f"domain_id {domain_id} out of range: the merged set has "
                f"{merged.num_domains} domains"
            )
        self.merged = merged
        self.domain_id = domain_id
        self.indices = [i for i, d in enumerate(merged.domain_ids) if d == domain_id]
        self.labels = [merged.labels[i] for i in self.indices]

    @property
    def name(self) -> str:
        return self.merged.domain_names[self.domain_id]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.merged[self.indices[index]]


class ReIDTestSet(Dataset):
    """Query followed by gallery images of one target domain, for retrieval evaluation.

    Args:
        query: query records.
        gallery: gallery records.
        image_size: model input ``(height, width)``.
        strict: as for :class:`MultiSourceTrainSet` (``False``: unreadable images become black
            ones, recorded in ``replaced_images``).

    Items are dicts with ``image`` (``uint8 [3, H, W]``), ``pid``, ``camid`` (``int64``
    scalars, the dataset's own ids) and ``is_query`` (``bool`` scalar). The first
    ``num_query`` items are the queries.
    """

    def __init__(
        self,
        query: Sequence[ReIDImage],
        gallery: Sequence[ReIDImage],
        image_size: Sequence[int] = (256, 128),
        strict: bool = True,
    ) -> None:
        if not query or not gallery:
            raise ValueError(
                f"ReIDTestSet needs a non-empty query and gallery, got {len(query)} query and "
                f"{len(gallery)} gallery images."
            )
        self.image_size = _check_image_size(image_size)
        self.strict = strict
        self.replaced_images: list[str] = []
        self.items = list(query) + list(gallery)
        self.num_query = len(query)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.items[index]
        return {
            "image": _load_or_replace(self, item.path),
            "pid": torch.tensor(item.pid, dtype=torch.int64),
            "camid": torch.tensor(item.camid, dtype=torch.int64),
            "is_query": torch.tensor(index < self.num_query),
        }
