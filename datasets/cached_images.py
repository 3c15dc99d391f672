"""Image data sets read from a ``DecodedCache``, their augmentation finished on the loader's device.

The protocol's transforms (``datasets/images.py``) split in two: what needs the item's seeded
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
(PIL's antialiased bilinear against torch's), measured in ``tests/test_decoded_cache.py``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from datasets.decoded_cache import DecodedCache
from datasets.images import build_transform, transform_steps

_FLIP_PROBE = torch.tensor([[[0, 1]]])  # a 1 x 2 image: flipped iff its first pixel becomes 1


class CachedTrainImages(Dataset):
    """Training items (crop box pixels, flip) of a cache; ``device_batch`` finishes a batch."""

    def __init__(self, cache: DecodedCache, labels: np.ndarray, image_size: int, normalize: str):
        steps = [step for _, step in transform_steps(image_size, True, "resize_crop", normalize)]
        self.crop, self.flip, self.tail = steps[0], steps[1], v2.Compose(steps[2:])
        self.cache, self.labels, self.size = cache, np.asarray(labels, dtype=np.int64), image_size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, bool], int]:
        height, width = self.cache.shape(index)
        box = self.crop.make_params([torch.zeros(1, dtype=torch.uint8).expand(3, height, width)])
        flipped = bool(self.flip(_FLIP_PROBE)[0, 0, 0] == 1)
        pixels = self.cache.region(index, box["top"], box["left"], box["height"], box["width"])
        return (pixels, flipped), int(self.labels[index])

    def device_batch(self, items: list[tuple[torch.Tensor, bool]], device: torch.device) -> torch.Tensor:
        """Resize each crop to S x S on ``device``, flip, then [0, 1] and normalise the batch."""
        out = torch.empty(len(items), 3, self.size, self.size, dtype=torch.uint8, device=device)
        for i, (pixels, flipped) in enumerate(items):
            image = v2.functional.resize(pixels.to(device, non_blocking=True).permute(2, 0, 1),
                                         [self.size, self.size], antialias=True)
            out[i] = image.flip(-1) if flipped else image
        return self.tail(out)


class CachedTestImages(Dataset):
    """Test items (whole cached images); ``device_batch`` runs the test transform on the device."""

    def __init__(self, cache: DecodedCache, labels: np.ndarray, image_size: int, test_resize: str, normalize: str):
        self.transform = build_transform(image_size, False, test_resize, normalize)
        self.cache, self.labels = cache, np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.cache.image(index), int(self.labels[index])

    def device_batch(self, items: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        return torch.stack([self.transform(image.to(device, non_blocking=True).permute(2, 0, 1))
                            for image in items])
