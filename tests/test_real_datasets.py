"""Real data set loaders on miniature copies of their on-disk formats (``tests/dataset_fixtures.py``)."""

from __future__ import annotations

import pickle
import re
import shutil

import numpy as np
import pytest
import torch
import yaml

from benchmark.errors import ConfigError, DataError
from benchmark.registry import DATASETS
from datasets.base import Loader, TaskSplit, class_order
from datasets.images import ImageFiles, ImageOptions, scan_class_folders, split_hash, stratified_split
from datasets.pixels import build_transform, describe_transform
from tests.dataset_fixtures import (corrupt, write_cifar100, write_domainnet, write_imagenet_a, write_imagenet_r,
                                    write_jpeg)

SIZE = 32
UNEVEN = [10 if i % 20 == 0 else 2 + i % 2 for i in range(200)]  # images per class: 2, 3, and 10

# Creating and deleting files dominates this module's time on slow file systems, so read-only
# fixtures are written once per module; tests that damage data write the few files they need.


@pytest.fixture(scope="module")
def uneven_imagenet_r(tmp_path_factory):
    root = tmp_path_factory.mktemp("uneven")
    return root, write_imagenet_r(root, per_class=UNEVEN)


@pytest.fixture(scope="module")
def domainnet_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("domainnet")
    return root, write_domainnet(root, ("clipart", "sketch"), train_per_class=1, test_per_class=1)


@pytest.fixture(scope="module")
def yaml_imagenet_r(tmp_path_factory):
    root = tmp_path_factory.mktemp("yaml")
    return root, write_imagenet_r(root, per_class=[3] + [2 + i % 2 for i in range(1, 200)], with_split_yaml=True)


def load(name: str, root, **options):
    dataset = DATASETS.get(name)
    return dataset.load(dataset.Options(image_size=SIZE, **options), str(root))


def expected_task_sizes(counts: list[int], n_tasks: int, seed: int) -> list[int]:
    """Images per task when classes (natural ids, ``counts[id]`` images each) are ordered by ``seed``."""
    order, k = class_order(len(counts), seed), len(counts) // n_tasks
    return [sum(counts[c] for c in order[t * k:(t + 1) * k]) for t in range(n_tasks)]


def task_sizes(data, n_tasks: int, seed: int) -> tuple[list[int], list[int]]:
    split = TaskSplit(data, n_tasks, seed)
    return ([len(split.train_set(t)) for t in range(n_tasks)], [len(split.test_set(t)) for t in range(n_tasks)])


def check_items(dataset, count: int = 3, size: int = SIZE) -> None:
    """The first items are float (3, size, size) images in [0, 1] with int labels."""
    for index in range(count):
        image, label = dataset[index]
        assert image.dtype == torch.float32 and image.shape == (3, size, size)
        assert 0 <= image.min() and image.max() <= 1
        assert isinstance(label, int)


def check_counts(data, train_counts: list[int], test_counts: list[int]) -> None:
    """Every class present with the given per-class counts; labels in range."""
    assert np.bincount(data.train_targets, minlength=data.num_classes).tolist() == train_counts
    assert np.bincount(data.test_targets, minlength=data.num_classes).tolist() == test_counts
    assert len(data.train) == sum(train_counts) and len(data.test) == sum(test_counts)


def stratified_test_count(n: int) -> int:
    return max(1, round(n * 0.2))


# ---------------------------------------------------------------- shared pieces


def test_transforms_give_the_size_and_range_and_describe_themselves():
    image = torch.randint(0, 256, (3, 20, 28), dtype=torch.uint8)
    for train in (True, False):
        assert build_transform(SIZE, train)(image).shape == (3, SIZE, SIZE)
    assert build_transform(SIZE, False, "resize")(torch.zeros(3, 20, 20, dtype=torch.uint8)).shape == (3, SIZE, SIZE)
    assert describe_transform(224, False) == "Resize(256) -> CenterCrop(224) -> [0,1]"
    assert describe_transform(224, False, "resize", "half") == "Resize(224) -> [0,1] -> Normalize(half)"
    assert describe_transform(32, True).startswith("RandomResizedCrop(32, scale=(0.08, 1)) -> RandomHorizontalFlip")
    assert build_transform(SIZE, False, normalize="half")(torch.zeros(3, 8, 8, dtype=torch.uint8)).min() == -1


@pytest.mark.parametrize("options", [{"normalize": "zscore"}, {"image_size": 0}])
def test_bad_image_options_are_config_errors(options):
    with pytest.raises(ConfigError, match="data\\."):
        ImageOptions(**options)


def test_stratified_split_is_seeded_per_class_and_complete():
    labels = np.repeat(np.arange(4), [1, 2, 5, 11])
    train, test = stratified_split(labels, seed=0)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(labels)))
    assert np.bincount(labels[test], minlength=4).tolist() == [0, 1, 1, 2]
    assert np.array_equal(stratified_split(labels, seed=0)[1], test)
    assert any(not np.array_equal(stratified_split(labels, seed=s)[1], test) for s in (1, 2, 3))
    more = np.concatenate([labels, [4] * 5])  # another class does not move the others' split
    assert np.array_equal(stratified_split(more, seed=0)[1][:len(test)], test)
    assert split_hash(["b", "a"], ["c"]) == split_hash(["a", "b"], ["c"]) != split_hash(["a", "c"], ["b"])


@pytest.mark.parametrize("name", ["cifar100", "imagenet-r", "imagenet-a", "domainnet"])
def test_missing_data_root_and_data_set_folder_are_clear_errors(name, tmp_path):
    with pytest.raises(DataError, match="does not exist; pass --data-root DIR or set CL_DATA_ROOT"):
        load(name, tmp_path / "nowhere")
    with pytest.raises(DataError, match="no data root given"):
        DATASETS.get(name).load(DATASETS.get(name).Options(), None)
    with pytest.raises(DataError, match=f"{re.escape(str(tmp_path))}/.* does not exist; expected .*CL_DATA_ROOT"):
        load(name, tmp_path)


# ---------------------------------------------------------------- CIFAR-100


def test_cifar100_loads_the_official_split(tmp_path):
    written = write_cifar100(tmp_path)
    data = load("cifar100", tmp_path)
    check_counts(data, written.train_counts, written.test_counts)
    check_items(data.train)
    check_items(data.test)
    assert data.info["class_names"] == written.classes
    assert data.info["test_transform"] == "Resize(32) -> [0,1]"
    assert task_sizes(data, 10, 1) == ([20] * 10, [10] * 10)
    images, labels = next(iter(Loader(TaskSplit(data, 10, 1).train_set(3), 8, shuffle=True)))
    assert images.shape == (8, 3, SIZE, SIZE) and labels.min() >= 30 and labels.max() < 40


def test_cifar100_image_size_defaults_to_224(tmp_path):
    write_cifar100(tmp_path, 1, 1)
    data = DATASETS.get("cifar100").load(ImageOptions(), str(tmp_path))
    check_items(data.test, count=1, size=224)


def test_cifar100_rejects_a_pickle_of_the_wrong_kind(tmp_path):
    write_cifar100(tmp_path)
    train = tmp_path / "cifar-100-python" / "train"
    cifar10 = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "batch_label": "training batch 1 of 5"}
    train.write_bytes(pickle.dumps(cifar10, protocol=2))
    with pytest.raises(DataError, match=f"{re.escape(str(train))} is not a CIFAR-100 train/test pickle.*fine_labels"):
        load("cifar100", tmp_path)
    corrupt(train)
    with pytest.raises(DataError, match=f"{re.escape(str(train))} is not a CIFAR-100 pickle"):
        load("cifar100", tmp_path)
    train.unlink()
    with pytest.raises(DataError, match=f"missing CIFAR-100 file {re.escape(str(train))}"):
        load("cifar100", tmp_path)


# ---------------------------------------------------------------- ImageNet-R


def test_imagenet_r_stratified_split(uneven_imagenet_r):
    root, written = uneven_imagenet_r
    data = load("imagenet-r", root)
    test_counts = [stratified_test_count(n) for n in UNEVEN]
    check_counts(data, [n - t for n, t in zip(UNEVEN, test_counts)], test_counts)
    assert (np.bincount(data.test_targets)[np.array(UNEVEN) == 10] == 2).all()  # 20 % where it divides
    assert not set(data.train.paths) & set(data.test.paths)
    assert data.info["class_names"] == written.classes == sorted(written.classes)  # natural order: sorted wnid
    for path, label in zip(data.train.paths, data.train_targets):
        assert path.split("/")[-2] == written.classes[label]
    check_items(data.train)
    check_items(data.test)
    for seed in (0, 2):
        train_sizes, test_sizes = task_sizes(data, 10, seed)
        assert train_sizes == expected_task_sizes([n - t for n, t in zip(UNEVEN, test_counts)], 10, seed)
        assert test_sizes == expected_task_sizes(test_counts, 10, seed)


def test_imagenet_r_split_never_depends_on_the_class_order_seed(uneven_imagenet_r):
    root, _ = uneven_imagenet_r
    data = load("imagenet-r", root)

    def test_files_of_all_tasks(seed: int) -> set[str]:
        split = TaskSplit(data, 5, seed)
        return {data.test.paths[i] for t in range(5) for i in split.test_set(t).subset.indices}

    assert test_files_of_all_tasks(0) == test_files_of_all_tasks(4) == set(data.test.paths)
    assert load("imagenet-r", root).info["split_hash"] == data.info["split_hash"]
    other = load("imagenet-r", root, split_seed=1)
    assert other.info["split_hash"] != data.info["split_hash"] and len(other.test) == len(data.test)
    assert data.info["split"] == "stratified 80/20, split_seed 0"


@pytest.mark.parametrize("which", ["folder", "train_file", "test_file"])
def test_imagenet_r_yaml_split_uses_exactly_the_listed_files(yaml_imagenet_r, which):
    root, written = yaml_imagenet_r
    split_file = {"folder": written.split_dir, "train_file": written.split_dir / "imagenet-r_train.yaml",
                  "test_file": written.split_dir / "imagenet-r_test.yaml"}[which]
    data = load("imagenet-r", root, split_file=str(split_file))
    folder = f"{root}/imagenet-r/"
    for side, dataset in (("train", data.train), ("test", data.test)):
        assert [p.removeprefix(folder) for p in dataset.paths] == written.listed[side]
    check_counts(data, written.train_counts, written.test_counts)
    assert data.info["class_names"] == written.classes != sorted(written.classes)  # natural order: target ids
    for path, label in zip(data.test.paths, data.test_targets):
        assert path.split("/")[-2] == written.classes[label]
    assert data.info["split"] == "coda-yaml" and len(data.info["split_file_hash"]) == 16
    assert task_sizes(data, 20, 3) == (expected_task_sizes(written.train_counts, 20, 3),
                                       expected_task_sizes(written.test_counts, 20, 3))


def test_imagenet_r_yaml_listing_a_missing_image_is_an_error(yaml_imagenet_r, tmp_path):
    root, written = yaml_imagenet_r
    shutil.copy(written.split_dir / "imagenet-r_train.yaml", tmp_path)
    test_yaml = tmp_path / "imagenet-r_test.yaml"
    content = yaml.safe_load((written.split_dir / test_yaml.name).read_text())
    wnid = written.classes[content["targets"][5]]
    content["data"][5] = f"data/imagenet-r/{wnid}/gone.jpg"
    test_yaml.write_text(yaml.safe_dump(content))
    gone = root / "imagenet-r" / wnid / "gone.jpg"
    with pytest.raises(DataError, match=f"{re.escape(str(test_yaml))} lists 1 image.*{re.escape(str(gone))}"):
        load("imagenet-r", root, split_file=str(tmp_path))
    with pytest.raises(DataError, match="split file .*nowhere/imagenet-r_train.yaml does not exist"):
        load("imagenet-r", root, split_file=str(tmp_path / "nowhere" / "imagenet-r_train.yaml"))


def test_wrong_class_folders_are_errors(tmp_path):
    folder = tmp_path / "imagenet-r"
    for name in ("n001", "n002", "n003"):
        write_jpeg(folder / name / "a.jpg")
    with pytest.raises(DataError, match="found 3 class folders in .*, expected 200; expected layout: imagenet-r/"):
        load("imagenet-r", tmp_path)
    (folder / "n004").mkdir()
    with pytest.raises(DataError, match=f"class folder {re.escape(str(folder / 'n004'))} has no images"):
        scan_class_folders(folder, 4, "imagenet-r/<wnid>/*.jpg")


def test_class_folders_take_jpg_jpeg_png_in_any_case_and_nothing_else(tmp_path):
    for name in ("a.jpg", "b.JPEG", "c.png", "d.Jpg", "notes.txt", "e.gif"):
        write_jpeg(tmp_path / "cat" / name)
    write_jpeg(tmp_path / "dog" / "x.jpeg")
    (tmp_path / ".hidden").mkdir()
    classes = scan_class_folders(tmp_path, 2, "<class>/*.jpg")
    assert [(name, [path.name for path in files]) for name, files in classes] == [
        ("cat", ["a.jpg", "b.JPEG", "c.png", "d.Jpg"]), ("dog", ["x.jpeg"])]


def test_a_corrupt_image_fails_naming_its_path(tmp_path):
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    write_jpeg(good)
    corrupt(bad)
    images = ImageFiles([good, bad], [0, 1], build_transform(SIZE, train=False))
    assert images[0][0].shape == (3, SIZE, SIZE)
    with pytest.raises(DataError, match=f"cannot read image {re.escape(str(bad))} .*delete or re-extract it"):
        images[1]


# ---------------------------------------------------------------- ImageNet-A


@pytest.mark.parametrize("presplit", [False, True])
def test_imagenet_a_detects_both_layouts(tmp_path, presplit):
    written = write_imagenet_a(tmp_path, per_class=1 if presplit else 2, presplit=presplit)
    data = load("imagenet-a", tmp_path)
    if presplit:
        check_counts(data, written.train_counts, written.test_counts)
        assert data.info["layout"] == "pre-split train/test"
        assert all("/imagenet-a/train/" in p for p in data.train.paths)
        assert all("/imagenet-a/test/" in p for p in data.test.paths)
    else:
        check_counts(data, [1] * 200, [1] * 200)
        assert data.info["layout"] == "original"
    assert data.info["class_names"] == written.classes == sorted(written.classes)
    check_items(data.test)
    assert task_sizes(data, 10, 1)[1] == expected_task_sizes([1] * 200, 10, 1)


def test_imagenet_a_with_only_a_train_folder_is_an_error(tmp_path):
    (tmp_path / "imagenet-a" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="imagenet-a/train exists but .*imagenet-a/test does not"):
        load("imagenet-a", tmp_path)


# ---------------------------------------------------------------- DomainNet


def test_domainnet_loads_the_lists_of_the_selected_domains(domainnet_root):
    root, written = domainnet_root
    data = load("domainnet", root, domains=["clipart", "sketch"])
    check_counts(data, written.train_counts, written.test_counts)
    folder = f"{root}/domainnet/"
    assert [p.removeprefix(folder) for p in data.test.paths] == written.listed["test"]
    assert data.info["domains"] == ["clipart", "sketch"] and data.info["counts"]["sketch_test"] == 345
    check_items(data.test)
    assert task_sizes(data, 5, 1) == ([69 * 2] * 5, [69 * 2] * 5)
    sketch = load("domainnet", root, domains=["sketch"])
    assert len(sketch.train) == 345 and all("/domainnet/sketch/" in p for p in sketch.train.paths)
    assert sketch.info["list_file_hash"] != data.info["list_file_hash"]


def test_domainnet_list_errors(domainnet_root, tmp_path):
    shared = domainnet_root[0] / "domainnet"
    with pytest.raises(DataError, match=f"missing list file {re.escape(str(shared / 'real_train.txt'))}; "
                                        "expected domainnet/<domain>"):
        load("domainnet", domainnet_root[0], domains=["clipart", "real"])
    folder = tmp_path / "domainnet"  # the shared images, list files of our own to break
    folder.mkdir()
    (folder / "clipart").symlink_to(shared / "clipart", target_is_directory=True)
    shutil.copy(shared / "clipart_test.txt", folder)
    listing = folder / "clipart_train.txt"
    lines = (shared / "clipart_train.txt").read_text().splitlines()
    for bad, message in [("clipart/class_000/x.jpg", "malformed line"), ("clipart/class_000/x.jpg zero", "malformed"),
                         ("clipart/class_000/clipart_000_000000.jpg 345", "label 345 is outside 0-344")]:
        listing.write_text("\n".join(lines[:2] + [bad] + lines[2:]))
        with pytest.raises(DataError, match=f"{re.escape(str(listing))}:3: {message}"):
            load("domainnet", tmp_path, domains=["clipart"])
    listing.write_text("\n".join(lines[:2] + ["clipart/class_001/missing.jpg 1"] + lines[2:]))
    with pytest.raises(DataError, match=f"lists 1 image.*{re.escape(str(folder / 'clipart/class_001/missing.jpg'))}"):
        load("domainnet", tmp_path, domains=["clipart"])
    listing.write_text("\n".join(line for line in lines if not line.endswith(" 7")))
    with pytest.raises(DataError, match="have no images of 1 classes \\(e.g. label 7\\)"):
        load("domainnet", tmp_path, domains=["clipart"])


def test_domainnet_unknown_domain_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="valid: clipart, infograph, painting, quickdraw, real, sketch"):
        DATASETS.get("domainnet").Options(domains=["clipart", "photos"])


@pytest.mark.parametrize("name, folder", [("cifar100", "cifar-100-python"), ("imagenet-r", "imagenet-r"),
                                          ("imagenet-a", "imagenet-a"), ("domainnet", "domainnet")])
def test_check_location_names_the_missing_folder_and_passes_once_it_exists(tmp_path, name, folder):
    dataset = DATASETS.get(name)
    with pytest.raises(DataError, match="data root .* does not exist"):
        dataset.check_location(str(tmp_path / "absent"))
    with pytest.raises(DataError, match=f"data set folder .*{folder} does not exist"):
        dataset.check_location(str(tmp_path))
    (tmp_path / folder).mkdir()
    dataset.check_location(str(tmp_path))
    DATASETS.get("synth").check_location(None)  # generated data: nothing to check
