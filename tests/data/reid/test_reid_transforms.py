import pytest
import torch
import torch.nn.functional as F

from metareid.data.reid.transforms import ReIDTrainAugment, augment_seeded

SIZE = (16, 8)
ALL_OFF = dict(autoaugment_p=0.0, flip_p=0.0, padding=0, color_jitter_p=0.0, erasing_p=0.0)


def random_batch(count: int = 6, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, *SIZE), generator=generator).float()


def test_default_recipe_keeps_shape_and_pixel_range():
    augment = ReIDTrainAugment(image_size=SIZE)
    torch.manual_seed(0)
    out = augment(random_batch(8).to(torch.uint8))
    assert out.shape == (8, 3, *SIZE) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255
    # values stay on the 0-255 scale (not squashed to 0-1 by kornia)
    assert out.max() > 100


def test_same_seed_same_output_and_other_seed_differs():
    augment = ReIDTrainAugment(image_size=SIZE, autoaugment_p=0.5)
    images = random_batch(8)
    torch.manual_seed(3)
    first = augment(images)
    torch.manual_seed(3)
    second = augment(images)
    torch.manual_seed(4)
    third = augment(images)
    assert torch.equal(first, second)
    assert not torch.equal(first, third)


def test_everything_off_is_identity():
    images = random_batch()
    assert torch.equal(ReIDTrainAugment(image_size=SIZE, **ALL_OFF)(images), images)


def test_flip_with_probability_one_mirrors_width():
    images = random_batch()
    augment = ReIDTrainAugment(image_size=SIZE, **{**ALL_OFF, "flip_p": 1.0})
    assert torch.allclose(augment(images), images.flip(-1), atol=1e-4)


def test_pad_and_crop_is_a_zero_filled_shift():
    padding = 3
    images = random_batch(4).clamp(min=1)  # zeros can then only come from the padding
    augment = ReIDTrainAugment(image_size=SIZE, **{**ALL_OFF, "padding": padding})
    torch.manual_seed(0)
    out = augment(images)
    padded = F.pad(images, (padding,) * 4)
    height, width = SIZE
    shifts = []
    for image, result in zip(padded, out, strict=True):
        matches = [
            (dy, dx)
            for dy in range(2 * padding + 1)
            for dx in range(2 * padding + 1)
            if torch.allclose(image[:, dy : dy + height, dx : dx + width], result, atol=1e-3)
        ]
        assert len(matches) == 1
        shifts.append(matches[0])
    assert len(set(shifts)) > 1  # independent crop per image


def test_color_jitter_changes_colours_within_range():
    images = random_batch()
    augment = ReIDTrainAugment(image_size=SIZE, **{**ALL_OFF, "color_jitter_p": 1.0})
    torch.manual_seed(0)
    out = augment(images)
    assert not torch.allclose(out, images, atol=1.0)
    assert out.min() >= 0 and out.max() <= 255


def test_random_erasing_fills_with_value_in_pixel_units():
    images = torch.zeros(4, 3, *SIZE)
    augment = ReIDTrainAugment(
        image_size=SIZE, **{**ALL_OFF, "erasing_p": 1.0}, erasing_value=200.0
    )
    torch.manual_seed(0)
    out = augment(images)
    values = set(out.round().unique().tolist())
    assert values == {0.0, 200.0}
    assert all((image == 200).any() for image in out.round())


def test_autoaugment_draws_independently_per_image():
    images = random_batch(1).repeat(6, 1, 1, 1)
    augment = ReIDTrainAugment(image_size=SIZE, **{**ALL_OFF, "autoaugment_p": 1.0})
    torch.manual_seed(1)
    out = augment(images)
    assert out.min() >= 0 and out.max() <= 255
    # identical inputs come out different because each image gets its own sub-policy draw
    distinct = {tuple(image.flatten().round().tolist()) for image in out}
    assert len(distinct) > 2


def test_bad_inputs_are_rejected():
    augment = ReIDTrainAugment(image_size=SIZE)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        augment(torch.zeros(3, *SIZE))
    with pytest.raises(ValueError, match=r"built for \(16, 8\) crops but got \(32, 16\)"):
        augment(torch.zeros(2, 3, 32, 16))
    with pytest.raises(ValueError, match="flip_p must be a probability"):
        ReIDTrainAugment(flip_p=1.5)


def test_seeded_augmentation_is_a_function_of_its_key_and_leaves_the_global_rng():
    augment = ReIDTrainAugment(image_size=SIZE, autoaugment_p=0.5)
    images = random_batch(8)
    torch.manual_seed(0)
    first = augment_seeded(augment, images, (42, 0, 7, 0))
    untouched = torch.rand(4)
    torch.manual_seed(123)  # whatever ran before (a resume starts from another state)
    second = augment_seeded(augment, images, (42, 0, 7, 0))
    assert torch.equal(first, second)
    torch.manual_seed(0)
    for key in [(42, 0, 8, 0), (42, 1, 7, 0), (42, 0, 7, 1), (43, 0, 7, 0)]:
        assert not torch.equal(augment_seeded(augment, images, key), first), key
    # the global generator continues as if the augmentation had not run
    torch.manual_seed(0)
    augment_seeded(augment, images, (42, 0, 7, 0))
    assert torch.equal(torch.rand(4), untouched)
