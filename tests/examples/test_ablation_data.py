# SPDX-License-Identifier: Apache-2.0
"""The ablation's photographs: the fixed split, loading, and the random crops."""

import pytest
import torch

pytest.importorskip("skimage")

from examples.ablation.data import (  # noqa: E402
    EVAL_IMAGES,
    TRAIN_IMAGES,
    RandomCrops,
    load_image,
    load_images,
)


def test_held_out_images_are_never_training_images():
    assert set(EVAL_IMAGES).isdisjoint(TRAIN_IMAGES)


def test_held_out_images_are_colour_photographs_of_full_size():
    for img in load_images(EVAL_IMAGES):
        assert img.shape[0] == 3 and min(img.shape[1:]) >= 256
        assert not torch.equal(img[0], img[1])  # real colour, not a repeated gray channel


@pytest.mark.parametrize("name", TRAIN_IMAGES)
def test_training_image_loads_as_rgb_in_unit_range(name):
    img = load_image(name)
    assert img.dtype == torch.float32 and img.shape[0] == 3
    assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.01


def test_unknown_photograph_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown photograph name='lena'.*astronaut"):
        load_image("lena")


def test_crops_repeat_exactly_with_the_same_seed():
    images = [torch.rand(3, 70, 90), torch.rand(3, 80, 64)]
    a = RandomCrops(images, size=32, batch_size=4, seed=3)
    b = RandomCrops(images, size=32, batch_size=4, seed=3)
    for _ in range(3):
        assert torch.equal(next(a), next(b))


def test_crops_are_windows_of_the_images_possibly_mirrored():
    image = torch.arange(3 * 40 * 50, dtype=torch.float32).reshape(3, 40, 50)
    for crop in next(RandomCrops([image], size=16, batch_size=8, seed=0)):
        if crop[0, 0, 1] < crop[0, 0, 0]:  # values fall to the right: a mirrored crop
            crop = crop.flip(-1)
        top, left = divmod(int(crop[0, 0, 0]), 50)
        assert torch.equal(crop, image[:, top : top + 16, left : left + 16])


def test_restored_crop_state_continues_the_same_sequence():
    images = [torch.rand(3, 70, 90)]
    a = RandomCrops(images, size=32, batch_size=2, seed=1)
    next(a)
    state = a.state_dict()
    expected = next(a)
    b = RandomCrops(images, size=32, batch_size=2, seed=99)
    b.load_state_dict(state)
    assert torch.equal(next(b), expected)


def test_crop_larger_than_an_image_names_the_size_and_the_fix():
    with pytest.raises(
        ValueError, match=r"crop size=64 is larger than image\(s\) of size \[\(40, 90\)\].*--crop"
    ):
        RandomCrops([torch.rand(3, 40, 90)], size=64, batch_size=2, seed=0)
