"""Image data sets read from decoded pixels (a ``DecodedCache``, or CIFAR-100's in-memory tensors
with ``data.device_decode``), their augmentation finished on the loader's device.

The protocol's transforms (``datasets/pixels.py``) split in two: what needs the item's seeded
random draws runs per item in the loader's workers, what costs pixels runs per batch on the
device the loader serves (``Loader(device=...)``, the GPU in a real run):

* training (``CachedTrainImages``): the crop box of ``RandomResizedCrop`` is drawn by the same
  transform object's ``make_params`` from the same seeded torch RNG as on the PIL path (see
  ``SeededItems``), then the flip decision by the same ``RandomHorizontalFlip``; the worker cuts
  the box out of the cached pixels (an exact copy, so only its rows are read and sent). On the
  device: resize to S x S (bilinear, antialias), flip, [0, 1], normalisation.
* test (``CachedTestImages``): the worker sends the whole cached image; on the device the very
  test transform of the PIL path runs on it (Resize -> CenterCrop, [0, 1], normalisation).

The crop boxes and flips equal the PIL path's; the pixels differ only by the resize kernel
(PIL's antialiased bilinear against torch's), measured in ``tests/test_decoded_cache.py``. The
drawing (``draw_crop_and_flip``) and the device step (``finish_crops``) are shared with the
images decoded on the device (``datasets/encoded_images.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from datasets.pixels import build_transform, transform_steps

_FLIP_PROBE = torch.tensor([[[0, 1]]])  # a 1 x 2 image: flipped iff its first pixel becomes 1


class PixelSource(Protocol):
    """Decoded (H, W, 3) uint8 images by index: a ``DecodedCache`` or ``TensorPixels``."""

    def shape(self, i: int) -> tuple[int, int]: ...

    def image(self, i: int) -> torch.Tensor: ...

    def region(self, i: int, top: int, left: int, height: int, width: int) -> torch.Tensor: ...


class TensorPixels:
    """In-memory uint8 images (N, 3, H, W) as a ``PixelSource`` (CIFAR-100 with ``data.device_decode``)."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def shape(self, i: int) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def image(self, i: int) -> torch.Tensor:
        return self.images[i].permute(1, 2, 0).contiguous()

    def region(self, i: int, top: int, left: int, height: int, width: int) -> torch.Tensor:
        """A compact copy of the box (a view would send the whole tensor to the main process)."""
        return self.images[i, :, top:top + height, left:left + width].permute(1, 2, 0).contiguous()


def train_steps(image_size: int, normalize: str) -> tuple[v2.RandomResizedCrop, v2.RandomHorizontalFlip, v2.Compose]:
    """The PIL path's training transform in three: its crop, its flip and the rest ([0, 1], normalisation)."""
    steps = [step for _, step in transform_steps(image_size, True, "resize_crop", normalize)]
    return steps[0], steps[1], v2.Compose(steps[2:])


def draw_crop_and_flip(crop: v2.RandomResizedCrop, flip: v2.RandomHorizontalFlip, height: int,
                       width: int) -> tuple[tuple[int, int, int, int], bool]:
    """(top, left, height, width) of the crop box of an image of ``height`` x ``width``, and the
    flip decision: drawn by the PIL path's transform objects from the torch RNG, in its order."""
    box = crop.make_params([torch.zeros(1, dtype=torch.uint8).expand(3, height, width)])
    return (box["top"], box["left"], box["height"], box["width"]), bool(flip(_FLIP_PROBE)[0, 0, 0] == 1)


def finish_crops(crops: Sequence[torch.Tensor], flips: Sequence[bool], size: int, tail: v2.Compose) -> torch.Tensor:
    """The batch of (3, h, w) uint8 crops on one device: each resized to ``size`` x ``size``
    (antialiased bilinear) and flipped where asked, then all through ``tail`` at once."""
    out = torch.empty(len(crops), 3, size, size, dtype=torch.uint8, device=crops[0].device)
    for i, (crop, flipped) in enumerate(zip(crops, flips)):
        image = v2.functional.resize(crop, [size, size], antialias=True)
        out[i] = image.flip(-1) if flipped else image
    return tail(out)


class CachedTrainImages(Dataset):
    """Training items (crop box pixels, flip) of a ``PixelSource``; ``device_batch`` finishes a batch."""

    def __init__(self, cache: PixelSource, labels: np.ndarray, image_size: int, normalize: str):
        self.crop, self.flip, self.tail = train_steps(image_size, normalize)
        self.cache, self.labels, self.size = cache, np.asarray(labels, dtype=np.int64), image_size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, bool], int]:
        (top, left, height, width), flipped = draw_crop_and_flip(self.crop, self.flip, *self.cache.shape(index))
        return (self.cache.region(index, top, left, height, width), flipped), int(self.labels[index])

    def device_batch(self, items: list[tuple[torch.Tensor, bool]], device: torch.device) -> torch.Tensor:
        """Resize each crop to S x S on ``device``, flip, then [0, 1] and normalise the batch."""
        crops = [pixels.to(device, non_blocking=True).permute(2, 0, 1) for pixels, _ in items]
        return finish_crops(crops, [flipped for _, flipped in items], self.size, self.tail)


class CachedTestImages(Dataset):
    """Test items (whole images of a ``PixelSource``); ``device_batch`` runs the test transform on the device."""

    def __init__(self, cache: PixelSource, labels: np.ndarray, image_size: int, test_resize: str, normalize: str):
        self.transform = build_transform(image_size, False, test_resize, normalize)
        self.cache, self.labels = cache, np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.cache.image(index), int(self.labels[index])

    def device_batch(self, items: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        return torch.stack([self.transform(image.to(device, non_blocking=True).permute(2, 0, 1))
                            for image in items])
