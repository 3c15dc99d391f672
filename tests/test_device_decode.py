"""Decoding and transforms on the device (data.device_decode, datasets/encoded_images.py) and the
CUDA prefetch of the Loader (datasets/base.py ``prefetch``): the PIL path's crop boxes and flips,
its pixels within a measured tolerance, exact resume and worker independence, the one-line error
for a bad file, CIFAR-100's device-side resize, a pass-through prefetch on CPU, and the run id."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark import cli
from benchmark.config import resolve
from benchmark.errors import ConfigError, DataError
from datasets.base import EpochOrder, Loader, SeededItems, prefetch
from datasets.cifar100 import Cifar100, Cifar100Options
from datasets.encoded_images import EncodedTrainImages, decode_images, read_encoded
from datasets.imagenet_r import FOLDER, ImageNetR, ImageNetROptions
from datasets.images import ImageFiles
from datasets.pixels import read_rgb
from tests.conftest import assert_resumes_exactly_and_ignores_workers, loader_batches as batches
from tests.dataset_fixtures import corrupt, wnids, write_cifar100

SIZE = 48
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
IMAGENET_STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)


def photo(rng: np.random.Generator) -> Image.Image:
    """A smooth 60-120 x 45-90 px RGB picture with noise (crops get both up- and downscaled to 48 px)."""
    width, height = int(rng.integers(60, 121)), int(rng.integers(45, 91))
    coarse = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).resize((width, height), Image.BILINEAR)
    pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-20, 21, (height, width, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def encoded(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, **save)
    return buffer.getvalue()


def write_photo_imagenet_r(root, per_class: int = 3) -> None:
    """``root/imagenet-r/<wnid>/*`` for 200 classes: a pool of 24 quality-90 JPEGs, written under
    every name, and four other kinds of file: a PNG, a greyscale, a CMYK and a progressive JPEG."""
    rng = np.random.default_rng(0)
    pool = [encoded(photo(rng), format="JPEG", quality=90) for _ in range(24)]
    special = {0: ("png", encoded(photo(rng), format="PNG")),
               1: ("jpg", encoded(photo(rng).convert("L"), format="JPEG", quality=90)),
               2: ("jpg", encoded(photo(rng).convert("CMYK"), format="JPEG", quality=90)),
               3: ("jpg", encoded(photo(rng), format="JPEG", quality=90, progressive=True))}
    for label, wnid in enumerate(wnids(200, 1_000_000)):
        folder = root / FOLDER / wnid
        folder.mkdir(parents=True)
        for i in range(per_class):
            suffix, data = special[label] if i == 0 and label in special else ("jpg", pool[(label + i) % len(pool)])
            (folder / f"{i}.{suffix}").write_bytes(data)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    write_photo_imagenet_r(root)
    return root


def load(root, **options):
    return ImageNetR.load(ImageNetROptions(image_size=SIZE, normalize="imagenet", **options), str(root))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("train", [True, False], ids=["train", "test"])
def test_device_path_equals_the_pil_path_up_to_decoder_and_resize_kernel(photos, device, train):
    """Same crop boxes and flips, so the images differ only by the decoder and the resize kernel.
    Measured, in 8-bit levels (compared after ImageNet normalisation, divided back by the std), on
    ImageNet-R's layout of 600 files (JPEGs, one PNG, one greyscale, one CMYK, one progressive):
    CPU mean 0.03 train / 0.004 test, max 1 (libjpeg-turbo decodes as PIL does, bit for bit, so
    this is the resize kernel alone, as on the decoded-cache path). Bounds: CPU mean 0.5, max 2;
    CUDA (nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's; not yet measured)
    mean 2, max 32."""
    pil, on_device = load(photos), load(photos, device_decode=True)
    side = "train" if train else "test"
    pil_set, device_set = getattr(pil, side), getattr(on_device, side)
    diffs = []
    for (x_pil, y_pil), (x_dev, y_dev) in zip(batches(Loader(pil_set, 64, shuffle=train, seed=5)),
                                              batches(Loader(device_set, 64, shuffle=train, seed=5, device=device)),
                                              strict=True):
        assert torch.equal(y_pil, y_dev) and x_dev.shape == x_pil.shape == (len(y_pil), 3, SIZE, SIZE)
        diffs.append(((x_pil - x_dev) * IMAGENET_STD * 255).abs())
    levels = torch.cat(diffs)
    print(f"{device} {side}: mean {levels.mean():.4f}, max {levels.max():.3f} levels over {len(levels)} images")
    mean_bound, max_bound = (0.5, 2) if device == "cpu" else (2, 32)
    assert levels.mean() < mean_bound and levels.max() < max_bound + 1e-3
    assert on_device.info["decoding"].startswith("JPEG bytes decoded on the run's device")


def test_crop_boxes_and_flips_are_the_pil_paths(photos):
    """For the same (seed, epoch, index), the worker's box and flip are those the PIL path's own
    transform objects draw (recorded from them while the PIL path transforms the image)."""
    pil, on_device = load(photos).train, load(photos, device_decode=True).train
    crop, flip = pil.transform.transforms[0], pil.transform.transforms[1]
    drawn = {}
    draw_box, apply_flip = crop.make_params, flip.transform

    def recording_box(flat_inputs):
        params = draw_box(flat_inputs)
        drawn["box"] = (params["top"], params["left"], params["height"], params["width"])
        return params

    def recording_flip(inpt, params):
        drawn["flipped"] = True
        return apply_flip(inpt, params)

    crop.make_params, flip.transform = recording_box, recording_flip
    loader = Loader(pil, 16, shuffle=True, seed=3)
    flips = 0
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        for key in EpochOrder(loader):  # (index, seed) as the loader's DataLoader asks for them
            drawn.clear()
            SeededItems(pil)[key]
            (_, box, flipped), _ = SeededItems(on_device)[key]
            assert box == drawn["box"] and flipped == drawn.get("flipped", False)
            flips += flipped
    assert 0 < flips < 2 * len(pil)  # both decisions occur


def test_decoding_on_cpu_is_pils_bit_for_bit(photos):
    """libjpeg-turbo in torchvision and in PIL: identical pixels, for every kind of file written."""
    folders = sorted((photos / FOLDER).iterdir())
    files = [sorted(folder.iterdir())[i] for folder in folders[:4] for i in (0, 1)]
    images = [read_encoded(str(path))[0] for path in files]
    # PNG, greyscale, CMYK (decoded with PIL in the worker) and progressive JPEG, each beside a plain JPEG
    assert [image.jpeg for image in images] == [False, True, True, True, False, True, True, True]
    for image, path in zip(decode_images(images, torch.device("cpu")), files):
        assert torch.equal(image, torch.from_numpy(np.asarray(read_rgb(str(path)))).permute(2, 0, 1))


def test_device_decode_resumes_exactly_and_ignores_the_workers(photos):
    assert_resumes_exactly_and_ignores_workers(load(photos, device_decode=True).train, batch_size=32, skip=3)


def test_bad_files_fail_naming_the_file_unless_pil_reads_them(tmp_path):
    """The PIL path's one-line DataError: a file without an image header fails in the worker, a
    JPEG whose data stops early in the decode step (the decoder refuses it, and so does PIL). A
    JPEG with a damaged middle, which PIL reads with a warning, gets PIL's pixels."""
    rng = np.random.default_rng(1)
    good, garbage, truncated, damaged = (tmp_path / f"{name}.jpg" for name in ("good", "garbage", "trunc", "damaged"))
    picture = photo(rng)
    data = encoded(picture, format="JPEG", quality=90)
    good.write_bytes(data)
    corrupt(garbage)
    truncated.write_bytes(data[:len(data) // 2])
    large = encoded(picture.resize((400, 300)), format="JPEG", quality=90)
    middle = len(large) // 2  # 200 bytes of 0xff: libjpeg-turbo in torchvision refuses it, PIL reads it
    damaged.write_bytes(large[:middle] + b"\xff" * 200 + large[middle + 200:])
    images = EncodedTrainImages([good, garbage], [0, 1], SIZE, "none")
    with pytest.raises(DataError, match=f"^cannot read image {garbage} .*delete or re-extract it$"):
        images[1]
    images = EncodedTrainImages([good, truncated, good], [0, 1, 0], SIZE, "none")
    with pytest.raises(DataError, match=f"^cannot read image {truncated} .*delete or re-extract it$") as error:
        batches(Loader(images, 3, shuffle=False))
    assert "\n" not in str(error.value)
    items = [read_encoded(str(path))[0] for path in (good, damaged)]
    for image, path in zip(decode_images(items, torch.device("cpu")), (good, damaged)):
        assert torch.equal(image, torch.from_numpy(np.asarray(read_rgb(str(path)))).permute(2, 0, 1))


def test_cifar100_device_resize_is_the_default_paths_on_cpu(tmp_path):
    """CIFAR-100's crops resized by the device step: on CPU the very pixels of the default path
    (the same torch kernel), for training (same boxes and flips) and test images."""
    write_cifar100(tmp_path, train_per_class=2, test_per_class=1)
    plain, on_device = (Cifar100.load(Cifar100Options(image_size=SIZE, device_decode=flag), str(tmp_path))
                        for flag in (False, True))
    for side, shuffle in (("train", True), ("test", False), ("train_plain", False)):
        for (x, y), (x_dev, y_dev) in zip(batches(Loader(getattr(plain, side), 50, shuffle=shuffle, seed=4)),
                                          batches(Loader(getattr(on_device, side), 50, shuffle=shuffle, seed=4)),
                                          strict=True):
            assert torch.equal(y, y_dev) and torch.equal(x, x_dev), side


def test_prefetch_on_cpu_is_a_pass_through():
    batches_in = [(torch.full((2, 3), float(i)), torch.tensor([i, i])) for i in range(5)]
    out = list(prefetch(iter(batches_in), torch.device("cpu")))
    assert len(out) == 5 and all(x is x_in and y is y_in for (x, y), (x_in, y_in) in zip(out, batches_in))
    finished = list(prefetch(iter(batches_in), torch.device("cpu"), lambda x, device: x + 1))
    assert all(torch.equal(x, x_in + 1) and y is y_in for (x, y), (x_in, y_in) in zip(finished, batches_in))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prefetch_on_cuda_hands_over_the_same_batches_in_order(photos):
    """Prepared ahead on a side stream, consumed on the default stream while the next are made:
    the same values, in the same order, as on CPU."""
    train = load(photos, device_decode=True).train
    on_cpu = batches(Loader(train, 32, shuffle=True, seed=9))
    ahead = []
    for x, y in Loader(train, 32, shuffle=True, seed=9, num_workers=2, pin_memory=True, device="cuda", prefetch=True):
        assert x.is_cuda and y.is_cuda
        torch.cuda._sleep(2_000_000)  # a slow step on the default stream
        ahead.append((x.cpu(), y.cpu()))
    assert [torch.equal(y, y_cpu) for (_, y), (_, y_cpu) in zip(ahead, on_cpu, strict=True)] == [True] * len(on_cpu)
    levels = torch.cat([((x - x_cpu) * IMAGENET_STD * 255).abs() for (x, _), (x_cpu, _) in zip(ahead, on_cpu)])
    assert levels.mean() < 2 and levels.max() < 32  # nvJPEG against libjpeg-turbo, as above


def test_run_id_option_clash_and_cli_flag(tmp_path, photos):
    def run_id(**data):
        return resolve("seq-lora", "imagenet-r", overrides={f"data.{k}": v for k, v in data.items()},
                       device="cpu").run_id()

    assert run_id(device_decode=False) == run_id()  # earlier run ids are unchanged
    assert run_id(device_decode=True) != run_id()
    with pytest.raises(ConfigError, match="decoded_cache and data.device_decode exclude each other"):
        ImageNetROptions(decoded_cache=True, device_decode=True)
    args = ["run", "--methods", "seq-lora", "--dataset", "imagenet-r", "--backbone", "tiny", "--tasks", "2",
            "--data-root", str(photos), "--results-dir", str(tmp_path / "results"), "--no-progress",
            "--preset", "quick", "--device-decode"]
    assert cli.main(args) == 0
    (result,) = (tmp_path / "results" / "runs").glob("*.json")
    assert '"device_decode": true' in result.read_text()
    default = load(photos)  # the PIL path stays the default
    assert isinstance(default.train, ImageFiles) and "decoding" not in default.info
