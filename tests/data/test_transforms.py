"""Augmentation parameters stay in the paper's ranges; views have the right shape; eval matches the processor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from convirt_hf.data.collate import ConvirtCollator
from convirt_hf.data.pairs import EpochShuffleSampler, PairViews
from convirt_hf.data.transforms import (
    AugmentationParams,
    AugmentationRanges,
    ConvirtEvalTransform,
    ConvirtTrainTransform,
    apply_augmentation,
    blur_kernel_size,
    sample_augmentation_params,
    to_gray_tensor,
)
from convirt_hf.modeling.processing_convirt import default_image_processor, to_pil_rgb


def _radiograph_like(height=260, width=300, seed=0) -> Image.Image:
    x = np.linspace(0, 1, width)[None, :] * np.linspace(0.2, 1, height)[:, None]
    noise = np.random.default_rng(seed).normal(0, 0.02, (height, width))
    return Image.fromarray((255 * np.clip(0.5 * x + 0.4 * np.sin(10 * x) ** 2 + noise, 0, 1)).astype(np.uint8), "L")


def test_sampled_parameters_stay_in_and_cover_the_papers_ranges():
    generator = torch.Generator().manual_seed(0)
    draws = [sample_augmentation_params(300, 260, generator) for _ in range(3000)]
    area_fraction = np.array([p.crop[2] * p.crop[3] / (300 * 260) for p in draws])
    ratio = np.array([p.crop[3] / p.crop[2] for p in draws])
    for name, values, low, high in [
        ("crop area", area_fraction, 0.6, 1.0),
        ("angle", np.array([p.angle for p in draws]), -20, 20),
        ("translate x", np.array([p.translate[0] for p in draws]), -0.1, 0.1),
        ("translate y", np.array([p.translate[1] for p in draws]), -0.1, 0.1),
        ("scale", np.array([p.scale for p in draws]), 0.95, 1.05),
        ("brightness", np.array([p.brightness for p in draws]), 0.6, 1.4),
        ("contrast", np.array([p.contrast for p in draws]), 0.6, 1.4),
        ("sigma", np.array([p.sigma for p in draws]), 0.1, 3.0),
    ]:
        slack = 0.02 if name == "crop area" else 0.0  # integer rounding of the crop box
        assert values.min() >= low - slack and values.max() <= high + slack, name
        span = high - low
        assert values.min() < low + 0.05 * span and values.max() > high - 0.05 * span, f"{name} does not cover its range"
    assert ratio.min() >= 3 / 4 - 0.02 and ratio.max() <= 4 / 3 + 0.02
    flips = np.mean([p.flip for p in draws])
    assert 0.45 < flips < 0.55
    for draw in draws:
        top, left, height, width = draw.crop
        assert 0 <= top and top + height <= 300 and 0 <= left and left + width <= 260


def test_train_view_shape_range_and_determinism():
    transform = ConvirtTrainTransform(output_size=64)
    image = _radiograph_like()
    first = transform(image, generator=torch.Generator().manual_seed(3))
    again = transform(image, generator=torch.Generator().manual_seed(3))
    other = transform(image, generator=torch.Generator().manual_seed(4))
    assert first.shape == (3, 64, 64) and first.dtype == torch.float32
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other)
    # one gray view replicated to three channels, then normalised per channel
    gray = [first[c] * std + mean for c, (mean, std) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))]
    torch.testing.assert_close(gray[0], gray[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(gray[0], gray[2], rtol=0, atol=1e-5)


def test_identity_parameters_only_resize():
    image = to_gray_tensor(_radiograph_like(64, 64))
    identity = AugmentationParams(crop=(0, 0, 64, 64), flip=False, angle=0.0, translate=(0.0, 0.0), scale=1.0,
                                  brightness=1.0, contrast=1.0, sigma=1e-3)
    torch.testing.assert_close(apply_augmentation(image, identity, 64), image, rtol=0, atol=1e-5)
    flipped = apply_augmentation(image, AugmentationParams(**{**identity.__dict__, "flip": True}), 64)
    torch.testing.assert_close(flipped, image.flip(-1), rtol=0, atol=1e-5)
    darker = apply_augmentation(image, AugmentationParams(**{**identity.__dict__, "brightness": 0.6}), 64)
    torch.testing.assert_close(darker, image * 0.6, rtol=0, atol=1e-5)
    blurred = apply_augmentation(image, AugmentationParams(**{**identity.__dict__, "sigma": 3.0}), 64)
    assert blurred.std() < image.std()


def test_blur_kernel_covers_three_sigma():
    assert blur_kernel_size(224) == 2 * math.ceil(9) + 1
    assert blur_kernel_size(64) % 2 == 1 and blur_kernel_size(64) >= 2 * math.ceil(9 * 64 / 224) + 1
    assert blur_kernel_size(8) <= 8


@pytest.mark.parametrize(("resize", "crop"), [(256, 224), (73, 64)])
@pytest.mark.parametrize("shape", [(260, 300), (300, 260), (512, 512)])
def test_eval_view_matches_the_processor(resize, crop, shape):
    image = _radiograph_like(*shape)
    ours = ConvirtEvalTransform(resize, crop)(image)
    reference = default_image_processor(crop, resize)([to_pil_rgb(image)], return_tensors="pt")["pixel_values"][0]
    assert ours.shape == reference.shape == (3, crop, crop)
    difference = (ours - reference).abs()
    # resampling implementations differ by rounding (the processor rounds to 8 bits); no shift, no systematic bias
    assert difference.mean() < 0.01 and difference.max() < 0.05


def test_eval_view_is_deterministic_and_pad_square_keeps_everything():
    image = _radiograph_like(100, 200)
    transform = ConvirtEvalTransform(resize=73, crop=64, mode="pad_square")
    view = transform(image)
    torch.testing.assert_close(view, transform(image), rtol=0, atol=0)
    assert view.shape == (3, 64, 64)
    black = (0 - 0.485) / 0.229
    assert torch.allclose(view[0, :8], torch.full_like(view[0, :8], black), atol=1e-3)  # padded top rows
    assert view[0, 28:36].mean() > black + 1.0  # the image itself in the middle
    with pytest.raises(ValueError, match="mode"):
        ConvirtEvalTransform(mode="stretch")


def test_views_accept_every_input_form():
    transform = ConvirtEvalTransform(resize=40, crop=32)
    gray = np.random.default_rng(0).integers(0, 255, (50, 60), dtype=np.uint8)
    expected = transform(Image.fromarray(gray, "L"))
    torch.testing.assert_close(transform(gray), expected)
    torch.testing.assert_close(transform(torch.from_numpy(gray)), expected)
    torch.testing.assert_close(transform(Image.fromarray(gray, "L").convert("RGB")), expected, rtol=0, atol=0.02)


def test_pair_views_are_a_function_of_seed_epoch_and_row(tokenizer):
    records = [
        {"id": f"r{i}", "image": _radiograph_like(80, 90, seed=i), "text": "whole text", "sentences": [f"s{i}a", f"s{i}b", f"s{i}c"]}
        for i in range(6)
    ]
    views = PairViews(records, ConvirtTrainTransform(output_size=32), seed=1)
    sampler = EpochShuffleSampler(len(views), seed=1)
    sampler.use_epoch(2)
    order = list(sampler)
    assert sorted(order) == list(range(12, 18))  # epoch-tagged indices
    first = views[order[0]]
    again = views[order[0]]
    torch.testing.assert_close(first["pixel_values"], again["pixel_values"], rtol=0, atol=0)
    assert first["sentence"] == again["sentence"] and first["sentence"] in records[order[0] - 12]["sentences"]
    next_epoch = views[order[0] + 6]
    assert not torch.allclose(first["pixel_values"], next_epoch["pixel_values"])  # a new view each epoch
    sampled = {views[e * 6 + 0]["sentence"] for e in range(30)}
    assert sampled == {"s0a", "s0b", "s0c"}  # every sentence gets drawn over epochs
    whole = PairViews(records, ConvirtTrainTransform(output_size=32), seed=1, text_mode="report")
    assert whole[0]["sentence"] == "whole text"

    batch = ConvirtCollator(tokenizer, max_length=8)([views[i] for i in order[:4]])
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].shape[1] <= 8
    assert batch["id"] == [records[i - 12]["id"] for i in order[:4]]


def test_collator_pads_dynamically_and_truncates(tokenizer):
    collator = ConvirtCollator(tokenizer, max_length=6)
    examples = [
        {"pixel_values": torch.zeros(3, 8, 8), "sentence": "the heart is enlarged"},
        {"pixel_values": torch.ones(3, 8, 8), "sentence": "no"},
    ]
    batch = collator(examples)
    assert batch["input_ids"].shape == (2, 6)  # [CLS] + 4 words + [SEP]
    assert batch["attention_mask"].tolist()[1] == [1, 1, 1, 0, 0, 0]
    assert tokenizer.unk_token_id not in batch["input_ids"][0].tolist()
    long = collator([{"pixel_values": torch.zeros(3, 8, 8), "sentence": "the heart is enlarged " * 10}])
    assert long["input_ids"].shape == (1, 6)
    with pytest.raises(ValueError, match="empty"):
        collator([])
