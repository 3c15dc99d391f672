"""Image files decoded on the loader's device (``data.device_decode``): the workers send bytes.

The protocol's transforms (``datasets/pixels.py``) split as on the decoded-cache path
(``datasets/cached_images.py``), one step earlier: a worker reads the file's bytes and its size
from the header (no decoding) and, for training items, draws the crop box and flip with the PIL
path's own ``RandomResizedCrop`` / ``RandomHorizontalFlip`` objects from the same seeded torch RNG
(``SeededItems``), so boxes and flips equal the PIL path's. Per batch, on the device the loader
serves (``Loader(device=...)``): the JPEGs are decoded in one call of torchvision's
``decode_jpeg`` (nvJPEG on CUDA, libjpeg-turbo on CPU), each training image is cropped, resized
to S x S (antialiased bilinear) and flipped (``finish_crops``, shared with the cache); test
images get the PIL path's test transform (Resize -> CenterCrop) there; then [0, 1] and the
normalisation.

Files other than RGB or greyscale JPEGs (PNG; CMYK JPEGs, whose conversion to RGB is PIL's
own) are decoded with PIL in the worker, exactly as the PIL path decodes them,
and only cropped and resized on the device. A JPEG the device's decoder refuses is decoded with
PIL in the main process instead (libjpeg-turbo refuses, where PIL only warns, a file whose middle
is damaged), so no file that the PIL path reads fails here. An unreadable file is the PIL path's
one-line ``DataError`` naming it: from the worker when its header cannot be read, from the
decode step when PIL cannot decode it either.

Pixels against the PIL path: on CPU the decoders agree bit for bit (both libjpeg-turbo) and only
the resize kernel differs, as with the cache (``tests/test_device_decode.py``); on CUDA nvJPEG's
IDCT and chroma upsampling add their differences to libjpeg-turbo's (the same test measures them
on a GPU).

torchvision deprecated its image decoders in 0.29 in favour of TorchCodec; ``_decode_jpegs``
is the one call to move when the project pins TorchCodec.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg

from datasets.cached_images import draw_crop_and_flip, finish_crops, train_steps
from datasets.pixels import build_transform, read_rgb, unreadable_image

DECODING = ("JPEG bytes decoded on the run's device (torchvision decode_jpeg: nvJPEG on CUDA, libjpeg-turbo on "
            "CPU), other files with PIL in the workers; crop, resize, flip and scaling on the device (torch "
            "antialiased bilinear)")
DEVICE_MODES = ("RGB", "L")  # PIL modes of the JPEGs decoded on the device (YCbCr or RGB, and greyscale)

warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated",
                        category=DeprecationWarning)


class EncodedImage(NamedTuple):
    """An image as a worker sends it: a JPEG's bytes (1-D uint8, decoded on the device), or the
    (H, W, 3) uint8 pixels of any other file, decoded with PIL."""

    data: torch.Tensor
    jpeg: bool
    path: str


def read_encoded(path: str) -> tuple[EncodedImage, int, int]:
    """The file at ``path`` as a worker sends it, with the image's height and width (read from
    its header); ``DataError`` naming the file if it cannot be read."""
    try:
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            (width, height), jpeg = image.size, image.format == "JPEG" and image.mode in DEVICE_MODES
    except (OSError, SyntaxError, ValueError) as err:  # as read_rgb: PIL reports bad files with all three
        raise unreadable_image(path, err) from None
    if jpeg:
        return EncodedImage(torch.frombuffer(bytearray(data), dtype=torch.uint8), True, path), height, width
    return EncodedImage(torch.from_numpy(np.array(read_rgb(path))), False, path), height, width


def _decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def _decode_jpeg_or_pil(image: EncodedImage, device: torch.device) -> torch.Tensor:
    """One JPEG decoded on ``device``, or with PIL if the device's decoder refuses it (the PIL
    path's ``DataError`` if PIL cannot decode it either)."""
    try:
        return _decode_jpegs([image.data], device)[0]
    except RuntimeError:
        return torch.from_numpy(np.array(read_rgb(image.path))).to(device).permute(2, 0, 1)


def decode_images(images: Sequence[EncodedImage], device: torch.device) -> list[torch.Tensor]:
    """(3, H, W) uint8 images on ``device``: the JPEGs decoded there in one call, the others copied."""
    jpegs = [image for image in images if image.jpeg]
    decoded = []
    if jpegs:
        try:
            decoded = _decode_jpegs([image.data for image in jpegs], device)
        except RuntimeError:  # the batch call fails as a whole: one by one, PIL where the decoder refuses
            decoded = [_decode_jpeg_or_pil(image, device) for image in jpegs]
    decoded.reverse()
    return [decoded.pop() if image.jpeg else image.data.to(device, non_blocking=True).permute(2, 0, 1)
            for image in images]


class EncodedTrainImages(Dataset):
    """Training items (encoded image, crop box, flip) of image files; ``device_batch`` decodes,
    crops, resizes, flips and scales a batch on the device."""

    def __init__(self, paths: Sequence[str | Path], labels: Sequence[int] | np.ndarray, image_size: int,
                 normalize: str):
        self.crop, self.flip, self.tail = train_steps(image_size, normalize)
        self.paths, self.labels, self.size = [str(p) for p in paths], np.asarray(labels, dtype=np.int64), image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[tuple[EncodedImage, tuple[int, int, int, int], bool], int]:
        image, height, width = read_encoded(self.paths[index])
        box, flipped = draw_crop_and_flip(self.crop, self.flip, height, width)
        return (image, box, flipped), int(self.labels[index])

    def device_batch(self, items: list[tuple[EncodedImage, tuple[int, int, int, int], bool]],
                     device: torch.device) -> torch.Tensor:
        images = decode_images([image for image, _, _ in items], device)
        crops = [image[:, top:top + height, left:left + width]
                 for image, (_, (top, left, height, width), _) in zip(images, items)]
        return finish_crops(crops, [flipped for _, _, flipped in items], self.size, self.tail)


class EncodedTestImages(Dataset):
    """Test items (encoded images) of image files; ``device_batch`` decodes a batch and runs the
    PIL path's test transform on the device."""

    def __init__(self, paths: Sequence[str | Path], labels: Sequence[int] | np.ndarray, image_size: int,
                 test_resize: str, normalize: str):
        self.transform = build_transform(image_size, False, test_resize, normalize)
        self.paths, self.labels = [str(p) for p in paths], np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[EncodedImage, int]:
        return read_encoded(self.paths[index])[0], int(self.labels[index])

    def device_batch(self, items: list[EncodedImage], device: torch.device) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in decode_images(items, device)])
