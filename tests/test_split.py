"""Class order by seed, task splits and label remapping (reference/protocol.md sections 3-4)."""

import numpy as np
import pytest
import torch

from benchmark.errors import ConfigError
from datasets.base import ClassIncrementalData, Loader, TaskSplit, TensorImages, check_n_tasks, class_order


@pytest.mark.parametrize("num_classes, first_ten", [
    (100, [53, 37, 65, 51, 4, 20, 38, 9, 10, 81]),
    (200, [33, 146, 79, 19, 23, 131, 12, 187, 174, 32]),
    (345, [300, 209, 181, 77, 120, 227, 211, 231, 229, 111]),
])
def test_seed_one_matches_the_coda_reference_vectors(num_classes, first_ten):
    assert class_order(num_classes, 1)[:10] == first_ten


def test_seed_zero_and_unshuffled_keep_the_natural_order():
    assert class_order(100, 0) == list(range(100))
    assert class_order(100, 4, shuffle=False) == list(range(100))
    assert sorted(class_order(100, 2)) == list(range(100))


def test_n_tasks_must_divide_the_classes():
    check_n_tasks(100, 10, "x")
    with pytest.raises(ConfigError, match="does not divide the 100 classes"):
        check_n_tasks(100, 7, "x")
    with pytest.raises(ConfigError):
        check_n_tasks(100, 0, "x")


def _data(num_classes=10, per_class=3):
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = labels.view(-1, 1, 1, 1).expand(-1, 1, 2, 2).to(torch.uint8).contiguous()  # pixel = label
    return ClassIncrementalData(num_classes, TensorImages(images, labels), TensorImages(images, labels),
                                labels.numpy(), labels.numpy())


def test_tasks_partition_the_classes_in_order_and_remap_labels():
    split = TaskSplit(_data(), n_tasks=5, seed=1)
    seen = []
    for task in range(5):
        train = split.train_set(task)
        positions = sorted(set(train.labels.tolist()))
        assert positions == [2 * task, 2 * task + 1]  # task t owns global ids [2t, 2t+2)
        originals = sorted(set(train.images[:, 0, 0, 0].tolist()))
        assert originals == sorted(split.order[2 * task:2 * task + 2])  # the right original classes
        for image, label in zip(train.images, train.labels):
            assert split.order[label] == image[0, 0, 0].item()
        seen += originals
    assert sorted(seen) == list(range(10))


def test_loader_shuffles_reproducibly_per_epoch():
    data = TensorImages(torch.zeros(20, 1, 2, 2, dtype=torch.uint8), torch.arange(20))
    loader = Loader(data, batch_size=8, shuffle=True, seed=5)
    first = torch.cat([y for _, y in loader])
    assert torch.equal(first, torch.cat([y for _, y in loader]))
    loader.set_epoch(1)
    assert not torch.equal(first, torch.cat([y for _, y in loader]))
    assert sorted(first.tolist()) == list(range(20)) and len(loader) == 3
    x, _ = next(iter(loader))
    assert x.dtype == torch.float32 and x.max() <= 1


@pytest.mark.parametrize("generic", [False, True])
def test_drop_last_skips_the_incomplete_batch_unless_there_is_no_full_one(generic):
    data = TensorImages(torch.zeros(20, 1, 2, 2, dtype=torch.uint8), torch.arange(20))
    if generic:
        data = torch.utils.data.TensorDataset(torch.zeros(20), torch.arange(20))
    loader = Loader(data, batch_size=8, shuffle=True, seed=5, drop_last=True)
    sizes = [len(y) for _, y in loader]
    assert sizes == [8, 8] and len(loader) == 2
    kept = torch.cat([y for _, y in loader])
    assert torch.equal(kept, torch.cat([y for _, y in Loader(data, 8, shuffle=True, seed=5)])[:16])
    assert [len(y) for _, y in Loader(data, 32, shuffle=True, drop_last=True)] == [20]


def test_generic_datasets_go_through_a_dataloader_with_remapped_labels():
    data = _data()
    data.train = torch.utils.data.TensorDataset(torch.arange(30).float(), torch.from_numpy(data.train_targets))
    split = TaskSplit(data, n_tasks=2, seed=0)
    labels = torch.cat([y for _, y in Loader(split.train_set(1), 4, shuffle=True)])
    assert sorted(set(labels.tolist())) == [5, 6, 7, 8, 9] and len(labels) == 15
    assert np.array_equal(split.label_map, np.arange(10))


def test_workers_persist_across_epochs_and_follow_each_epochs_order():
    data = torch.utils.data.TensorDataset(torch.arange(24).float(), torch.arange(24))
    plain = Loader(data, batch_size=5, shuffle=True, seed=3)
    workers = Loader(data, batch_size=5, shuffle=True, seed=3, num_workers=2)
    for epoch in range(3):
        plain.set_epoch(epoch)
        workers.set_epoch(epoch)
        expected = torch.cat([y for _, y in plain])
        assert torch.equal(torch.cat([y for _, y in workers]), expected)
        assert torch.equal(expected, plain._order())
    assert workers._dataloader is not None and workers._dataloader.persistent_workers


class RandomlyAugmented(torch.utils.data.Dataset):
    """Items whose 'augmentation' is a draw from the torch RNG."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int):
        return torch.rand(2), index


def test_augmentation_is_seeded_per_item_whatever_the_workers_and_the_start():
    def epoch_batches(loader, epoch, skip=0):
        loader.set_epoch(epoch, skip_batches=skip)
        return [x for x, _ in loader]

    single = Loader(RandomlyAugmented(), batch_size=4, shuffle=True, seed=1)
    workers = Loader(RandomlyAugmented(), batch_size=4, shuffle=True, seed=1, num_workers=2)
    first = epoch_batches(single, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, epoch_batches(workers, 0)))
    assert all(torch.equal(a, b) for a, b in zip(first[1:], epoch_batches(single, 0, skip=1)))
    assert not torch.equal(torch.cat(first).sort(0).values, torch.cat(epoch_batches(single, 1)).sort(0).values)
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    again = epoch_batches(single, 0)  # the global RNG neither feeds nor is moved by the draws
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and torch.equal(torch.rand(1), expected)


def test_a_validation_split_holds_out_a_fixed_fraction_of_each_class():
    from datasets.base import hold_out_validation

    labels = torch.arange(4).repeat_interleave(10)
    images = torch.arange(40).view(-1, 1, 1, 1).to(torch.uint8)  # pixel = image index
    test = TensorImages(torch.full((8, 1, 1, 1), 255, dtype=torch.uint8), torch.arange(4).repeat(2))
    data = ClassIncrementalData(4, TensorImages(images, labels), test, labels.numpy(), test.labels.numpy())
    held = hold_out_validation(data, 0.2)
    assert np.bincount(held.test_targets).tolist() == [2] * 4 and np.bincount(held.train_targets).tolist() == [8] * 4
    train_ids, val_ids = set(held.train.images.flatten().tolist()), set(held.test.images.flatten().tolist())
    assert not train_ids & val_ids and train_ids | val_ids == set(range(40))  # a partition of the training images
    assert (held.test.labels == labels[held.test.images.flatten().long()]).all()  # labels travel with images
    assert held.info["evaluated_on"] == "validation" and held.info["n_validation"] == 8
    again = hold_out_validation(data, 0.2)  # the same images every time (independent of the run seed)
    assert torch.equal(again.test.images, held.test.images)
    with pytest.raises(ConfigError, match="val_fraction"):
        hold_out_validation(_data(num_classes=4, per_class=3), 0.1)  # rounds to no image


def test_a_validation_run_trains_on_the_rest_and_evaluates_on_the_held_out_images():
    from benchmark import protocol
    from tests.conftest import tiny_config

    plain = tiny_config("frozen", **{"data.train_per_class": 10})
    validated = tiny_config("frozen", **{"data.train_per_class": 10, "data.val_fraction": "0.2"})
    assert plain.run_id() != validated.run_id()
    assert tiny_config("frozen", **{"data.train_per_class": 10, "data.val_fraction": "0"}).run_id() == plain.run_id()
    split, _ = protocol.build_run(validated, torch.device("cpu"))
    assert split.data.info["evaluated_on"] == "validation"
    assert len(split.test_set(0)) == 20 * 2 and len(split.train_set(0)) == 20 * 8
    train = {bytes(x.numpy()) for x in split.train_set(0).images}
    assert not train & {bytes(x.numpy()) for x in split.test_set(0).images}
    full, _ = protocol.build_run(plain, torch.device("cpu"))
    assert {bytes(x.numpy()) for x in split.test_set(0).images} <= {bytes(x.numpy()) for x in full.train_set(0).images}
    with pytest.raises(ConfigError, match=r"data.val_fraction must be in \[0, 1\)"):
        tiny_config("frozen", **{"data.val_fraction": "1.5"})
