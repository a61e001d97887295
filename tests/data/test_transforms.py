"""Augmentation parameters stay in (and cover) the paper's ranges; each augmentation does what it says; views have
the right shape and are reproducible; the eval view matches the project's image processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from convirt_hf.data.collate import ConvirtCollator
from convirt_hf.data.pairs import EpochShuffleSampler, PairViews
from convirt_hf.data.transforms import (
    AUGMENTATION_PRESETS,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    AugmentationParams,
    AugmentationRanges,
    ConvirtEvalTransform,
    ConvirtTrainTransform,
    apply_augmentation,
    blur_kernel_size,
    gaussian_blur,
    normalize_view,
    sample_augmentation_params,
    sample_crop,
    to_image_tensor,
)
from convirt_hf.modeling.processing_convirt import ConvirtProcessor, default_image_processor, to_pil_rgb

MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)


def _radiograph_like(height=260, width=300, seed=0) -> Image.Image:
    x = np.linspace(0, 1, width)[None, :] * np.linspace(0.2, 1, height)[:, None]
    noise = np.random.default_rng(seed).normal(0, 0.02, (height, width))
    return Image.fromarray((255 * np.clip(0.5 * x + 0.4 * np.sin(10 * x) ** 2 + noise, 0, 1)).astype(np.uint8), "L")


def _identity(size: int) -> AugmentationParams:
    return AugmentationParams(crop=(0, 0, size, size), flip=False, angle=0.0, translate=(0.0, 0.0), scale=1.0,
                              brightness=1.0, contrast=1.0, sigma=1e-3, view_size=size)


def test_imagenet_statistics_are_timms():
    from timm.data import IMAGENET_DEFAULT_MEAN as TIMM_MEAN
    from timm.data import IMAGENET_DEFAULT_STD as TIMM_STD

    assert IMAGENET_DEFAULT_MEAN == tuple(TIMM_MEAN) and IMAGENET_DEFAULT_STD == tuple(TIMM_STD)


def test_default_ranges_are_the_papers():
    ranges = AugmentationRanges()
    assert ranges.crop_scale == (0.6, 1.0) and ranges.crop_ratio == (3 / 4, 4 / 3)
    assert ranges.flip_probability == 0.5 and ranges.rotation == (-20.0, 20.0) and ranges.translate == (0.1, 0.1)
    assert ranges.scale == (0.95, 1.05) and ranges.brightness == (0.6, 1.4) and ranges.contrast == (0.6, 1.4)
    assert ranges.blur_sigma == (0.1, 3.0)
    assert AUGMENTATION_PRESETS["paper"] == ranges
    bad_ranges = (dict(crop_scale=(0.9, 0.5)), dict(flip_probability=1.5), dict(translate=(0.1,)),
                  dict(blur_sigma=(0.0, 1.0)))
    for bad in bad_ranges:
        with pytest.raises(ValueError, match="AugmentationRanges"):
            AugmentationRanges(**bad)


def test_sampled_parameters_stay_in_and_cover_the_papers_ranges():
    generator = torch.Generator().manual_seed(0)
    height, width, size = 300, 260, 224
    draws = [sample_augmentation_params(height, width, generator, output_size=size) for _ in range(3000)]
    area_fraction = np.array([p.crop[2] * p.crop[3] / (height * width) for p in draws])
    ratio = np.array([p.crop[3] / p.crop[2] for p in draws])
    for name, values, low, high, slack in [
        ("crop area", area_fraction, 0.6, 1.0, 0.02),  # the crop box is rounded to whole pixels
        ("crop ratio", ratio, 3 / 4, 4 / 3, 0.02),
        ("angle", np.array([p.angle for p in draws]), -20, 20, 0),
        ("translate x", np.array([p.translate[0] for p in draws]), -0.1 * size, 0.1 * size, 0),
        ("translate y", np.array([p.translate[1] for p in draws]), -0.1 * size, 0.1 * size, 0),
        ("scale", np.array([p.scale for p in draws]), 0.95, 1.05, 0),
        ("brightness", np.array([p.brightness for p in draws]), 0.6, 1.4, 0),
        ("contrast", np.array([p.contrast for p in draws]), 0.6, 1.4, 0),
        ("sigma", np.array([p.sigma for p in draws]), 0.1, 3.0, 0),
    ]:
        assert values.min() >= low - slack and values.max() <= high + slack, name
        span = high - low
        # ratio: crops near 4/3 at large areas do not fit a portrait image, so its top end is reached less often
        coverage = 0.1 if name.startswith("crop") else 0.03
        assert values.min() < low + coverage * span and values.max() > high - coverage * span, f"{name} does not cover"
        if not name.startswith("crop"):
            assert abs(values.mean() - (low + high) / 2) < 0.05 * span, f"{name} is not uniform"
    assert 0.46 < np.mean([p.flip for p in draws]) < 0.54
    for draw in draws:
        top, left, crop_height, crop_width = draw.crop
        assert 0 <= top and top + crop_height <= height and 0 <= left and left + crop_width <= width
        assert draw.view_size == size


def test_sampling_follows_other_ranges_and_the_generator():
    light = AUGMENTATION_PRESETS["light"]
    generator = torch.Generator().manual_seed(1)
    draws = [sample_augmentation_params(100, 100, generator, light, output_size=64) for _ in range(500)]
    assert max(abs(p.angle) for p in draws) <= 10 and max(p.sigma for p in draws) <= 1.0
    assert max(abs(p.translate[0]) for p in draws) <= 0.05 * 64
    assert min(p.crop[2] * p.crop[3] for p in draws) >= 0.8 * 100 * 100 - 200

    def draw(seed):
        return sample_augmentation_params(120, 90, torch.Generator().manual_seed(seed))

    assert draw(5) == draw(5) and draw(5) != draw(6)
    torch.manual_seed(3)
    first = sample_augmentation_params(120, 90, None)
    torch.manual_seed(3)
    assert sample_augmentation_params(120, 90, None) == first  # the global generator when none is given


def test_crop_falls_back_like_torchvision_when_nothing_fits():
    from torchvision.transforms import RandomResizedCrop

    # a 1000 x 10 strip: no crop of 60-100% of the area with a ratio in [3/4, 4/3] fits, so every try fails
    expected = RandomResizedCrop.get_params(torch.zeros(1, 1000, 10), scale=[0.6, 1.0], ratio=[3 / 4, 4 / 3])
    assert sample_crop(1000, 10, torch.Generator().manual_seed(0)) == tuple(expected) == (493, 0, 13, 10)
    assert sample_crop(10, 1000, torch.Generator().manual_seed(0)) == (0, 493, 10, 13)
    with pytest.raises(ValueError):
        sample_crop(0, 10)


def test_identity_parameters_only_resize():
    image = to_image_tensor(_radiograph_like(64, 64))
    expected = image.float() / 255
    torch.testing.assert_close(apply_augmentation(image, _identity(64), 64), expected, rtol=0, atol=1e-5)
    # a larger input: the identity view is just the resize
    large = to_image_tensor(_radiograph_like(128, 128))
    resized = TF.resize(large.float() / 255, [64, 64], interpolation=InterpolationMode.BILINEAR, antialias=True)
    torch.testing.assert_close(apply_augmentation(large, _identity(128), 64), resized, rtol=0, atol=1e-5)


def test_each_augmentation_does_what_it_says():
    image = torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(0))
    identity = _identity(64)
    flipped = apply_augmentation(image, identity.replace(flip=True), 64)
    torch.testing.assert_close(flipped, image.flip(-1), rtol=0, atol=1e-5)
    # crop: the box is taken from the input and resized
    cropped = apply_augmentation(image, identity.replace(crop=(8, 16, 32, 32)), 32)
    torch.testing.assert_close(cropped, image[:, 8:40, 16:48], rtol=0, atol=1e-5)
    # translation in pixels of the view, rescaled when applied at another size
    shifted = apply_augmentation(image, identity.replace(translate=(10.0, -5.0)), 64)
    torch.testing.assert_close(shifted[:, :59, 10:], image[:, 5:, :54], rtol=0, atol=1e-5)
    assert shifted[:, :, :10].abs().max() == 0 and shifted[:, 59:].abs().max() == 0  # zero fill
    rescaled = apply_augmentation(image, identity.replace(translate=(20.0, -10.0), view_size=128), 64)
    torch.testing.assert_close(rescaled, shifted, rtol=0, atol=1e-6)
    # rotation follows torchvision's affine (clockwise; rotate is counter-clockwise); a quarter turn is exact
    turned = apply_augmentation(image, identity.replace(angle=90.0), 64)
    rotated = TF.rotate(image, -90.0, interpolation=InterpolationMode.BILINEAR)
    torch.testing.assert_close(turned, rotated, rtol=0, atol=1e-5)
    torch.testing.assert_close(turned, torch.rot90(image, -1, dims=(1, 2)), rtol=0, atol=1e-5)
    zoomed = apply_augmentation(image, identity.replace(scale=1.05), 64)
    assert not torch.allclose(zoomed, image, atol=1e-3)
    # colour jitter: brightness scales, contrast blends with the mean (both as torchvision)
    darker = apply_augmentation(image, identity.replace(brightness=0.6), 64)
    torch.testing.assert_close(darker, image * 0.6, rtol=0, atol=1e-5)
    low_contrast = apply_augmentation(image, identity.replace(contrast=0.6), 64)
    torch.testing.assert_close(low_contrast, TF.adjust_contrast(image, 0.6), rtol=0, atol=1e-5)
    assert low_contrast.std() < 0.7 * image.std()
    # blur: sigma 3 at the paper's 224 is sigma 3 * 64 / 224 at 64 pixels
    blurred = apply_augmentation(image, identity.replace(sigma=3.0), 64)
    sigma = 3.0 * 64 / 224
    torch.testing.assert_close(blurred, TF.gaussian_blur(image, [7, 7], [sigma, sigma]), rtol=0, atol=1e-5)
    assert blurred.std() < 0.5 * image.std()


def test_apply_checks_its_input_and_keeps_values_in_range():
    params = sample_augmentation_params(50, 40, torch.Generator().manual_seed(0), output_size=24)
    for image in (torch.randint(0, 256, (1, 50, 40), dtype=torch.uint8), torch.rand(3, 50, 40)):
        view = apply_augmentation(image, params, 24)
        assert view.shape == (image.shape[0], 24, 24) and view.dtype == torch.float32
        assert view.min() >= 0 and view.max() <= 1
    with pytest.raises(ValueError, match="crop box"):
        apply_augmentation(torch.rand(1, 20, 20), params, 24)
    with pytest.raises(ValueError, match="C, H, W"):
        apply_augmentation(torch.rand(50, 40), params, 24)
    with pytest.raises(TypeError, match="uint8 or float"):
        apply_augmentation(torch.ones(1, 50, 40, dtype=torch.int32), params, 24)


def test_blur_kernel_covers_three_sigma():
    assert blur_kernel_size(224, 3.0) == 19
    assert blur_kernel_size(64, 3.0) == 7
    for size in (16, 32, 64, 96, 224, 448):
        for sigma in (0.1, 1.0, 3.0):
            kernel = blur_kernel_size(size, sigma)
            assert kernel % 2 == 1 and kernel <= size
            if kernel < size - 1:
                assert (kernel - 1) / 2 >= 3 * sigma * size / 224
    assert blur_kernel_size(8, 3.0) <= 8
    image = torch.rand(2, 3, 40, 50, generator=torch.Generator().manual_seed(0))
    for kernel, sigma in ((19, 3.0), (7, 0.8), (3, 0.03)):
        reference = TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma])
        torch.testing.assert_close(gaussian_blur(image, kernel, sigma), reference, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="odd"):
        gaussian_blur(image, 4, 1.0)


@pytest.mark.parametrize("size", [64, 96, 224])
def test_train_view_shape_range_and_determinism(size):
    transform = ConvirtTrainTransform(output_size=size)
    image = _radiograph_like()
    first = transform(image, generator=torch.Generator().manual_seed(3))
    again = transform(image, generator=torch.Generator().manual_seed(3))
    other = transform(image, generator=torch.Generator().manual_seed(4))
    assert first.shape == (3, size, size) and first.dtype == torch.float32 and first.is_contiguous()
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other)
    # one gray view replicated to three channels, then normalised per channel
    gray = first * STD + MEAN
    assert gray.min() >= -1e-5 and gray.max() <= 1 + 1e-5
    torch.testing.assert_close(gray[0], gray[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(gray[0], gray[2], rtol=0, atol=1e-5)


def test_train_view_with_fixed_ranges_is_the_plain_resize():
    fixed = AugmentationRanges(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_probability=0.0, rotation=(0.0, 0.0),
                               translate=(0.0, 0.0), scale=(1.0, 1.0), brightness=(1.0, 1.0), contrast=(1.0, 1.0),
                               blur_sigma=(1e-4, 1e-4))
    image = _radiograph_like(128, 128)
    view = ConvirtTrainTransform(output_size=64, ranges=fixed)(image, torch.Generator().manual_seed(0))
    expected = TF.resize(to_image_tensor(image).float() / 255, [64, 64], interpolation=InterpolationMode.BILINEAR,
                         antialias=True)
    torch.testing.assert_close(view, normalize_view(expected), rtol=0, atol=1e-4)


def test_views_accept_every_input_form():
    gray = np.random.default_rng(0).integers(0, 255, (50, 60), dtype=np.uint8)
    pil = Image.fromarray(gray, "L")
    for transform in (ConvirtEvalTransform(resize=40, crop=32), ConvirtTrainTransform(output_size=32)):
        expected = transform(pil, generator=torch.Generator().manual_seed(0))
        for form in (gray, gray[..., None], torch.from_numpy(gray), torch.from_numpy(gray)[None], pil.convert("RGB"),
                     np.stack([gray] * 3, axis=-1), torch.from_numpy(gray).float() / 255):
            torch.testing.assert_close(transform(form, generator=torch.Generator().manual_seed(0)), expected,
                                       rtol=0, atol=1e-5)
    # 16-bit and alpha go through the processor's conversion
    sixteen = Image.fromarray(gray.astype(np.uint16) * 257)
    assert sixteen.mode == "I;16"
    assert to_image_tensor(sixteen).shape == (1, 50, 60)
    torch.testing.assert_close(to_image_tensor(sixteen), to_image_tensor(to_pil_rgb(sixteen)))
    assert to_image_tensor(pil.convert("RGBA")).shape == (1, 50, 60)
    # colour stays colour
    colour = np.random.default_rng(1).integers(0, 255, (50, 60, 3), dtype=np.uint8)
    assert to_image_tensor(colour).shape == (3, 50, 60)
    view = ConvirtTrainTransform(output_size=32)(colour, torch.Generator().manual_seed(0))
    assert not torch.allclose(view[0] * STD[0] + MEAN[0], view[1] * STD[1] + MEAN[1], atol=1e-3)
    with pytest.raises(TypeError, match="unsupported image type"):
        to_image_tensor(42)


def _clip_processors(resize: int, crop: int, tmp_path):
    """The image processor the project saves, loaded back as AutoImageProcessor gives it, in both backends."""
    from transformers import AutoImageProcessor, CLIPImageProcessor, CLIPImageProcessorPil

    default_image_processor(crop, resize).save_pretrained(tmp_path)
    torchvision_backend = AutoImageProcessor.from_pretrained(tmp_path)
    pil_backend = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    assert type(torchvision_backend) is CLIPImageProcessor and type(pil_backend) is CLIPImageProcessorPil
    return torchvision_backend, pil_backend


@pytest.mark.parametrize(("resize", "crop"), [(256, 224), (73, 64)])
def test_eval_view_matches_the_processor(resize, crop, tmp_path):
    torchvision_backend, pil_backend = _clip_processors(resize, crop, tmp_path)
    colour = Image.fromarray(np.random.default_rng(2).integers(0, 255, (90, 70, 3), dtype=np.uint8), "RGB")
    for image in (_radiograph_like(260, 300), _radiograph_like(300, 260), _radiograph_like(512, 512),
                  _radiograph_like(50, 400), colour):
        ours = ConvirtEvalTransform(resize, crop)(image)
        assert ours.shape == (3, crop, crop)
        rgb = [to_pil_rgb(image)]
        # the torchvision backend (the default): the same resize on the same uint8 pixels
        reference = torchvision_backend(rgb, return_tensors="pt")["pixel_values"][0]
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
        # the PIL backend resamples with PIL's bicubic: a gray level or two apart (pixel noise is the worst case),
        # no shift or bias
        pil_reference = pil_backend(rgb, return_tensors="pt")["pixel_values"][0]
        difference = (ours - pil_reference).abs()
        assert difference.max() <= 2.01 / 255 / min(IMAGENET_DEFAULT_STD) and difference.mean() < 1e-3


def test_eval_view_matches_the_convirt_processor(tokenizer):
    processor = ConvirtProcessor.from_tokenizer(tokenizer, image_size=64, resize_size=73)
    transform = ConvirtEvalTransform(resize=73, crop=64)
    gray = np.asarray(_radiograph_like(90, 120))
    for image in (_radiograph_like(90, 120), Image.fromarray(gray.astype(np.uint16) * 200), gray / 255.0):
        expected = processor(images=[image])["pixel_values"][0]
        torch.testing.assert_close(transform(image), expected, rtol=0, atol=1e-5)


def test_eval_view_is_deterministic_and_pad_square_keeps_everything():
    image = _radiograph_like(100, 200)
    transform = ConvirtEvalTransform(resize=73, crop=64, mode="pad_square")
    view = transform(image)
    torch.testing.assert_close(view, transform(image), rtol=0, atol=0)
    assert view.shape == (3, 64, 64)
    black = (0 - IMAGENET_DEFAULT_MEAN[0]) / IMAGENET_DEFAULT_STD[0]
    assert torch.allclose(view[0, :14], torch.full_like(view[0, :14], black), atol=1e-3)  # padded top rows
    assert torch.allclose(view[0, -14:], torch.full_like(view[0, -14:], black), atol=1e-3)  # and bottom rows
    assert view[0, 20:44].mean() > black + 1.0  # the whole image in the middle, its full width kept
    assert (view[0, 32, :3] > black + 0.5).all() or (view[0, 32, -3:] > black + 0.5).all()
    square = _radiograph_like(128, 128)
    resized = TF.resize(to_image_tensor(square), [64, 64], interpolation=InterpolationMode.BICUBIC, antialias=True)
    torch.testing.assert_close(ConvirtEvalTransform(crop=64, mode="pad_square")(square),
                               normalize_view(resized.float() / 255), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="mode"):
        ConvirtEvalTransform(mode="stretch")


def test_pair_views_are_a_function_of_seed_epoch_and_row(tokenizer):
    records = [
        {"id": f"r{i}", "image": _radiograph_like(80, 90, seed=i), "text": "whole text",
         "sentences": [f"s{i}a", f"s{i}b", f"s{i}c"]}
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


def test_the_decoded_image_cache_gives_the_same_views_and_decodes_each_image_once(monkeypatch):
    import datasets
    from PIL import Image

    rows = {"id": [f"r{i}" for i in range(6)], "text": ["whole text"] * 6,
            "sentences": [[f"s{i}a", f"s{i}b"] for i in range(6)],
            "image": [_radiograph_like(80, 90, seed=i) for i in range(6)]}
    records = datasets.Dataset.from_dict(rows, features=datasets.Features({
        "id": datasets.Value("string"), "text": datasets.Value("string"),
        "sentences": datasets.List(datasets.Value("string")), "image": datasets.Image()}))
    plain = PairViews(records, ConvirtTrainTransform(output_size=32), seed=3)
    one_image = 80 * 90  # grayscale bytes
    cached = PairViews(records, ConvirtTrainTransform(output_size=32), seed=3, image_cache_bytes=4 * one_image)
    decoded = []
    original = Image.open
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: decoded.append(1) or original(*args, **kwargs))
    for index in range(18):  # three epochs
        expected, got = plain[index], cached[index]
        torch.testing.assert_close(got["pixel_values"], expected["pixel_values"], rtol=0, atol=0)
        assert (got["sentence"], got["id"]) == (expected["sentence"], expected["id"])
    # the plain views decode 18 times; the cache holds 4 of the 6 images, so only the other 2 are decoded again
    assert len(decoded) == 18 + 6 + 2 * 2
    assert cached.image_cache.used_bytes == 4 * one_image


def test_the_default_evaluation_resize_is_eight_sevenths_of_the_crop_rounded():
    """One definition for the processor a run saves, the evaluation loaders and the card's fallback (which once
    floored: 109 for a 96 px crop, where the processor had 110)."""
    from convirt_hf.data.transforms import default_eval_resize

    assert [default_eval_resize(crop) for crop in (32, 64, 96, 224)] == [37, 73, 110, 256]
