"""ddim.data.batches: endless, reproducible, resumable, DDP-sharded training batches."""

import itertools

import pytest
import torch

from ddim.data import epoch_order, infinite_batches, to_model_range, to_uint8
from ddim.errors import DdimError


def tagged_images(n):
    """n images (n, 3, 2, 2) whose left column holds their index and right column 255."""
    images = torch.full((n, 3, 2, 2), 255, dtype=torch.uint8)
    images[:, :, :, 0] = torch.arange(n, dtype=torch.uint8)[:, None, None]
    return images


def identify(batch):
    """(index, flipped) of each image of a [-1, 1] batch of `tagged_images`."""
    pixels = to_uint8(batch)[:, 0, 0]
    flipped = pixels[:, 0] == 255
    return torch.where(flipped, pixels[:, 1], pixels[:, 0]).tolist(), flipped.tolist()


def take(n, images, batch_size, **kwargs):
    """The first n batches of infinite_batches."""
    return list(itertools.islice(infinite_batches(images, batch_size, **kwargs), n))


def test_batches_are_float_epochs_are_permutations():
    images = tagged_images(12)
    batches = take(6, images, 4, seed=3, random_flip=False)
    assert batches[0].dtype == torch.float32 and batches[0].shape == (4, 3, 2, 2)
    ids = [i for b in batches for i in identify(b)[0]]
    assert sorted(ids[:12]) == list(range(12)) and sorted(ids[12:]) == list(range(12))
    assert ids[:12] != ids[12:]
    assert ids[:12] == epoch_order(12, 3, 0)[0].tolist()


def test_batches_reproducible_and_seed_dependent():
    images = tagged_images(10)
    a, b = take(8, images, 3, seed=1), take(8, images, 3, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    c = take(8, images, 3, seed=2)
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_resume_at_step_equals_iterating():
    images = tagged_images(10)
    full = take(12, images, 3, seed=5)
    resumed = take(7, images, 3, seed=5, start_step=5)
    assert all(torch.equal(x, y) for x, y in zip(full[5:], resumed, strict=True))


def test_rank_shards_concatenate_to_the_global_batch():
    images = tagged_images(10)  # global batch 6 does not divide 10: shards cross epoch ends
    single = take(9, images, 6, seed=7)
    shards = [take(9, images, 3, seed=7, rank=r, world_size=2) for r in range(2)]
    for step in range(9):
        assert torch.equal(torch.cat([shards[0][step], shards[1][step]]), single[step])
    resumed = take(2, images, 3, seed=7, rank=1, world_size=2, start_step=4)
    assert torch.equal(resumed[0], shards[1][4])


def test_flips_are_mirror_images_and_reproducible():
    images = tagged_images(20)
    batches = take(10, images, 4, seed=9)
    flips = [f for b in batches for f in identify(b)[1]]
    assert 5 < sum(flips) < 35
    for batch in batches:
        ids, flipped = identify(batch)
        for image, i, f in zip(batch, ids, flipped, strict=True):
            original = to_model_range(images[i])
            assert torch.equal(image, original.flip(-1) if f else original)
    again = take(10, images, 4, seed=9)
    assert all(torch.equal(x, y) for x, y in zip(batches, again, strict=True))


def test_bad_batch_arguments():
    images = tagged_images(4)
    for kwargs in [dict(rank=2, world_size=2), dict(start_step=-1), dict(world_size=0)]:
        with pytest.raises(DdimError):
            next(infinite_batches(images, 2, seed=0, **kwargs))
    with pytest.raises(DdimError, match="batch_size"):
        next(infinite_batches(images, 0, seed=0))
    with pytest.raises(DdimError, match="uint8"):
        next(infinite_batches(images.float(), 2, seed=0))
