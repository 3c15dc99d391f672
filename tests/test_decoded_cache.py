"""The decoded-image cache (datasets/decoded_cache.py, datasets/cached_images.py): same images as
the PIL path within a measured tolerance, built once and reused, rebuilt for another file list,
exact resume and worker independence, and its place in the run id."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark import cli
from benchmark.config import resolve
from benchmark.errors import DataError
from datasets import decoded_cache
from datasets.base import Loader
from datasets.cached_images import CachedTestImages, CachedTrainImages
from datasets.decoded_cache import DecodedCache
from datasets.images import ImageFiles
from datasets.pixels import build_transform
from tests.conftest import assert_resumes_exactly_and_ignores_workers, loader_batches as batches
from tests.dataset_fixtures import corrupt, write_imagenet_r

SIZE = 48
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def write_photos(folder, n: int = 24) -> list[str]:
    """``n`` smooth JPEGs of 60-120 x 45-90 px (crops get both up- and downscaled to 48 px)."""
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        width, height = int(rng.integers(60, 121)), int(rng.integers(45, 91))
        coarse = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).resize((width, height),
                                                                                           Image.BILINEAR)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-20, 21, (height, width, 3))
        names.append(f"c{i % 3}/{i}.jpg")
        (folder / names[-1]).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / names[-1], quality=90)
    return names


def both_paths(folder, names, cache_dir, train: bool):
    """The PIL-path data set and the cached one over the same files."""
    labels = np.arange(len(names)) % 3
    paths = [folder / name for name in names]
    cache = DecodedCache.open_or_build(folder, names, cache_dir, progress=False)
    if train:
        return (ImageFiles(paths, labels, build_transform(SIZE, True, normalize="imagenet")),
                CachedTrainImages(cache, labels, SIZE, "imagenet"))
    return (ImageFiles(paths, labels, build_transform(SIZE, False, "resize_crop", "imagenet")),
            CachedTestImages(cache, labels, SIZE, "resize_crop", "imagenet"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("train", [True, False], ids=["train", "test"])
def test_cached_path_equals_the_pil_path_up_to_the_resize_kernel(tmp_path, device, train):
    """Same crop boxes and flips (seeded as on the PIL path), so the images differ only by PIL's
    against torch's antialiased bilinear resize. Measured, in 8-bit levels (1/255 of [0, 1];
    compared after ImageNet normalisation, divided back by the std): CPU mean 0.03 train /
    0.002 test, max 1 (torch's uint8 CPU kernel rounds like PIL's); bounds: mean 0.5, max 2."""
    names = write_photos(tmp_path / "img")
    pil, cached = both_paths(tmp_path / "img", names, tmp_path / "cache", train)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    diffs = []
    for (x_pil, y_pil), (x_cached, y_cached) in zip(batches(Loader(pil, 8, shuffle=True, seed=5)),
                                                    batches(Loader(cached, 8, shuffle=True, seed=5, device=device))):
        assert torch.equal(y_pil, y_cached) and x_cached.shape == x_pil.shape == (len(y_pil), 3, SIZE, SIZE)
        diffs.append(((x_pil - x_cached) * std * 255).abs())
    levels = torch.cat(diffs)
    print(f"{device} {'train' if train else 'test'}: mean {levels.mean():.4f}, max {levels.max():.3f} levels")
    assert levels.mean() < 0.5 and levels.max() < 2 + 1e-3


def test_cache_is_built_once_reused_and_rebuilt_for_another_file_list(tmp_path, monkeypatch):
    names = write_photos(tmp_path / "img", 6)
    first = DecodedCache.open_or_build(tmp_path / "img", names, tmp_path / "cache", progress=False)
    direct = np.asarray(Image.open(tmp_path / "img" / names[2]).convert("RGB"))
    assert np.array_equal(first.image(2).numpy(), direct)
    assert np.array_equal(first.region(2, 3, 4, 10, 7).numpy(), direct[3:13, 4:11])

    def no_decoding(path):
        raise AssertionError("the cache was decoded again")

    monkeypatch.setattr(decoded_cache, "_decoded", no_decoding)
    again = DecodedCache.open_or_build(tmp_path / "img", names, tmp_path / "cache", progress=False)
    assert again.pixels_path == first.pixels_path and np.array_equal(again.index, first.index)
    with pytest.raises(AssertionError, match="decoded again"):  # one file fewer: another cache
        DecodedCache.open_or_build(tmp_path / "img", names[:-1], tmp_path / "cache", progress=False)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1  # the failed build left no index


def test_unreadable_image_names_the_file(tmp_path):
    names = write_photos(tmp_path / "img", 3)
    corrupt(tmp_path / "img" / names[1])
    with pytest.raises(DataError, match=names[1]):
        DecodedCache.open_or_build(tmp_path / "img", names, tmp_path / "cache", progress=False)


def test_cached_loader_resumes_exactly_and_ignores_the_workers(tmp_path):
    names = write_photos(tmp_path / "img", 20)
    _, cached = both_paths(tmp_path / "img", names, tmp_path / "cache", train=True)
    assert_resumes_exactly_and_ignores_workers(cached, batch_size=4, skip=2)


def test_run_id_has_the_cache_switch_but_not_its_place(tmp_path):
    def run_id(**data):
        return resolve("seq-lora", "imagenet-r", overrides={f"data.{k}": v for k, v in data.items()},
                       device="cpu").run_id()

    plain = run_id()
    assert run_id(decoded_cache=False) == plain  # earlier run ids are unchanged
    assert run_id(decoded_cache=True) != plain
    assert run_id(decoded_cache=True, cache_dir="/a") == run_id(decoded_cache=True, cache_dir="/b")


def test_cached_imagenet_r_through_the_cli_and_cifar_refusal(tmp_path, capsys):
    write_imagenet_r(tmp_path / "data", per_class=2)
    args = ["run", "--methods", "seq-lora", "--dataset", "imagenet-r", "--backbone", "tiny", "--tasks", "2",
            "--data-root", str(tmp_path / "data"), "--results-dir", str(tmp_path / "results"), "--no-progress"]
    assert cli.main([*args, "--decoded-cache", str(tmp_path / "cache"), "--preset", "quick"]) == 0
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2  # train and test
    assert cli.main(["run", "--dataset", "cifar100", "--decoded-cache"]) == 2
    assert "data.decoded_cache applies to the image-file data sets" in capsys.readouterr().err
