"""The protocol's image transforms and the reading of image files: the pixels every image path
(PIL files, the decoded cache, decoding on the device) starts from.

Transforms follow ``reference/protocol.md`` section 5 (the CODA-Prompt code): training images get
``RandomResizedCrop(size, scale=(0.08, 1))`` and a horizontal flip; test images get
``Resize(round(size * 256 / 224))`` then ``CenterCrop(size)``, except CIFAR-100, whose test images
are only resized to ``size``. Pixels are float [0, 1] (no normalisation) unless the ``normalize``
option asks for ImageNet or 0.5/0.5 statistics. Resizing is bilinear with antialiasing. The same
transforms apply to PIL images (files) and to uint8 (3, H, W) tensors (CIFAR-100 in memory).

An image file that cannot be read or decoded is a one-line ``DataError`` naming it
(``unreadable_image``), never skipped.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision.transforms import v2

from benchmark.errors import DataError

NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "none": None,  # [0, 1] pixels, as the CODA-Prompt code feeds its ViTs
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
TEST_RESIZES = ("resize", "resize_crop")

Transform = Callable[[Image.Image | torch.Tensor], torch.Tensor]


def transform_steps(image_size: int, train: bool, test_resize: str,
                    normalize: str) -> list[tuple[str, v2.Transform]]:
    """The transform as (description, transform) steps; the single source of both (and of the
    decoded-cache path's, ``datasets/cached_images.py``)."""
    if test_resize not in TEST_RESIZES:
        raise ValueError(f"test_resize must be one of {TEST_RESIZES}, got {test_resize!r}")
    if train:
        steps = [(f"RandomResizedCrop({image_size}, scale=(0.08, 1))",
                  v2.RandomResizedCrop(image_size, scale=(0.08, 1.0), antialias=True)),
                 ("RandomHorizontalFlip", v2.RandomHorizontalFlip())]
    elif test_resize == "resize":
        steps = [(f"Resize({image_size})", v2.Resize(image_size, antialias=True))]
    else:
        resized = round(image_size * 256 / 224)
        steps = [(f"Resize({resized})", v2.Resize(resized, antialias=True)),
                 (f"CenterCrop({image_size})", v2.CenterCrop(image_size))]
    steps += [("[0,1]", v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]))]
    stats = NORMALIZATIONS[normalize]
    if stats is not None:
        steps.append((f"Normalize({normalize})", v2.Normalize(*stats)))
    return steps + [("", v2.ToPureTensor())]


def build_transform(image_size: int, train: bool, test_resize: str = "resize_crop",
                    normalize: str = "none") -> Transform:
    """The protocol's train or test transform: PIL image or uint8 (3, H, W) -> float (3, S, S).

    Args:
        image_size: output side length S.
        train: random resized crop and flip if True, else the deterministic test resize.
        test_resize: "resize_crop" (Resize(S*256/224) -> CenterCrop(S)) or "resize" (CIFAR-100).
        normalize: a key of ``NORMALIZATIONS``.
    """
    return v2.Compose([step for _, step in transform_steps(image_size, train, test_resize, normalize)])


def describe_transform(image_size: int, train: bool, test_resize: str = "resize_crop",
                       normalize: str = "none") -> str:
    """A short description of ``build_transform``'s result, recorded with results."""
    return " -> ".join(name for name, _ in transform_steps(image_size, train, test_resize, normalize) if name)


def unreadable_image(path: str, err: Exception) -> DataError:
    """The one-line error for an image file that cannot be read or decoded."""
    reason = " ".join(str(err).split())
    return DataError(f"cannot read image {path} ({reason}); delete or re-extract it")


def read_rgb(path: str) -> Image.Image:
    """The decoded RGB image at ``path``; ``DataError`` naming the file if it cannot be decoded."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:  # PIL reports bad files with all three
        raise unreadable_image(path, err) from None
