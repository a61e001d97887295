"""The batched (GPU) augmentation draws its parameters from the CPU sampler's distributions and, for the same
parameters, gives the CPU path's views: exactly where the math is the same, within interpolation tolerance where the
CPU path's antialiased resize differs. Everything runs on the CPU device here; the code is device-agnostic."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from convirt_hf.data.gpu_augment import (
    BatchedAugmentation,
    BatchParams,
    params_from_list,
    sample_batch_params,
)
from convirt_hf.data.transforms import (
    AUGMENTATION_PRESETS,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    AugmentationParams,
    AugmentationRanges,
    apply_augmentation,
    normalize_view,
    sample_augmentation_params,
    sample_crop,
)

SIZE = 224
STD = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)


def _radiograph_like(height: int, width: int, seed: int = 0, channels: int = 1) -> torch.Tensor:
    """A smooth uint8 (C, H, W) image: a bright ellipse (the chest) on a gradient with slow ripples."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, height, dtype=torch.float64),
                          torch.linspace(-1, 1, width, dtype=torch.float64), indexing="ij")
    planes = []
    for channel in range(channels):
        phase = seed + 0.7 * channel
        value = (0.3 + 0.35 * torch.exp(-2 * ((x / 0.6) ** 2 + ((y - 0.1) / 0.8) ** 2)) + 0.2 * (x + 1) / 2
                 + 0.1 * torch.sin(3 * y + phase) * torch.cos(2 * x - phase))
        planes.append(value)
    return (torch.stack(planes).clamp(0, 1) * 255).round().to(torch.uint8)


def _identity(height: int = SIZE, width: int = SIZE) -> AugmentationParams:
    return AugmentationParams(crop=(0, 0, height, width), flip=False, angle=0.0, translate=(0.0, 0.0), scale=1.0,
                              brightness=1.0, contrast=1.0, sigma=1e-3, view_size=SIZE)


def _cpu_views(images, params, size=SIZE) -> torch.Tensor:
    return torch.stack([normalize_view(apply_augmentation(image, p, size)) for image, p in zip(images, params)])


def _unit_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| of normalised views, back in [0, 1] pixel units."""
    return (a - b).abs() * STD


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (ties handled: both CDFs evaluated at every observed value)."""
    a, b = np.sort(a), np.sort(b)
    values = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, values, side="right") / len(a)
    cdf_b = np.searchsorted(b, values, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def _columns_cpu(draws: list[AugmentationParams], height: int, width: int) -> dict[str, np.ndarray]:
    crops = np.array([p.crop for p in draws], dtype=np.float64)
    return {
        "top": crops[:, 0], "left": crops[:, 1], "crop height": crops[:, 2], "crop width": crops[:, 3],
        "area": crops[:, 2] * crops[:, 3] / (height * width), "ratio": crops[:, 3] / crops[:, 2],
        "flip": np.array([p.flip for p in draws], dtype=np.float64),
        "angle": np.array([p.angle for p in draws]),
        "translate x": np.array([p.translate[0] for p in draws]),
        "translate y": np.array([p.translate[1] for p in draws]),
        "scale": np.array([p.scale for p in draws]),
        "brightness": np.array([p.brightness for p in draws]),
        "contrast": np.array([p.contrast for p in draws]),
        "sigma": np.array([p.sigma for p in draws]),
    }


def _columns_batched(params: BatchParams, height: int, width: int) -> dict[str, np.ndarray]:
    h, w = params.height.double().numpy(), params.width.double().numpy()
    return {
        "top": params.top.double().numpy(), "left": params.left.double().numpy(), "crop height": h,
        "crop width": w, "area": h * w / (height * width), "ratio": w / h,
        "flip": params.flip.double().numpy(), "angle": params.angle.numpy(),
        "translate x": params.translate_x.numpy(), "translate y": params.translate_y.numpy(),
        "scale": params.scale.numpy(), "brightness": params.brightness.numpy(),
        "contrast": params.contrast.numpy(), "sigma": params.sigma.numpy(),
    }


KS_THRESHOLD = 0.035  # 8000 vs 20000 draws: the 0.1% critical value is 0.026; a range shifted by 5% gives 0.05


def test_batched_sampler_draws_the_cpu_samplers_distributions():
    # a portrait 300 x 160 image: large crops near ratio 4/3 do not fit, so several tries are often needed
    height, width = 300, 160
    cpu_generator = torch.Generator().manual_seed(0)
    cpu = _columns_cpu([sample_augmentation_params(height, width, cpu_generator) for _ in range(8000)],
                       height, width)
    count = 20000
    batched = _columns_batched(
        sample_batch_params([height] * count, [width] * count, torch.Generator().manual_seed(1)), height, width)
    for name in cpu:
        statistic = _ks(cpu[name], batched[name])
        assert statistic < KS_THRESHOLD, f"{name}: KS statistic {statistic:.4f}"
    # negative control: each range shifted by 5% of its span is detected
    for name, field, shift in [("angle", "rotation", 2.0), ("brightness", "brightness", 0.04),
                               ("contrast", "contrast", 0.04), ("scale", "scale", 0.005),
                               ("sigma", "blur_sigma", 0.145), ("area", "crop_scale", 0.02)]:
        low, high = getattr(AugmentationRanges(), field)
        shifted = AugmentationRanges(**{field: (low + shift, min(high + shift, 1.0) if field == "crop_scale"
                                                else high + shift)})
        wrong = _columns_batched(
            sample_batch_params([height] * count, [width] * count, torch.Generator().manual_seed(2), shifted),
            height, width)
        assert _ks(cpu[name], wrong[name]) > KS_THRESHOLD, f"{name}: a shifted range went unnoticed"


def test_batched_draws_stay_in_their_ranges():
    generator = torch.Generator().manual_seed(0)
    # aspect ratios 2/3-3/2: even the centred fallback crop covers more than 60% of the area
    heights = torch.randint(200, 300, (20000,), generator=generator)
    widths = torch.randint(200, 300, (20000,), generator=generator)
    params = sample_batch_params(heights, widths, generator, output_size=SIZE)
    assert len(params) == 20000 and params.view_size == SIZE and params.device == torch.device("cpu")
    assert params.top.dtype == torch.int64 and params.flip.dtype == torch.bool
    assert (params.top >= 0).all() and (params.left >= 0).all()
    assert (params.top + params.height <= heights).all() and (params.left + params.width <= widths).all()
    area = (params.height * params.width).double() / (heights * widths).double()
    ratio = params.width.double() / params.height.double()
    assert area.min() >= 0.6 - 0.02 and area.max() <= 1.0  # crop boxes are rounded to whole pixels
    assert ratio.min() >= 3 / 4 - 0.02 and ratio.max() <= 4 / 3 + 0.02
    assert 0.49 < params.flip.double().mean() < 0.51
    ranges = AugmentationRanges()
    for name, values, (low, high) in [
        ("angle", params.angle, ranges.rotation), ("translate x", params.translate_x, (-0.1 * SIZE, 0.1 * SIZE)),
        ("translate y", params.translate_y, (-0.1 * SIZE, 0.1 * SIZE)), ("scale", params.scale, ranges.scale),
        ("brightness", params.brightness, ranges.brightness), ("contrast", params.contrast, ranges.contrast),
        ("sigma", params.sigma, ranges.blur_sigma),
    ]:
        assert values.dtype == torch.float64, name
        assert low <= values.min() and values.max() <= high, name
        span = high - low
        assert values.min() < low + 0.01 * span and values.max() > high - 0.01 * span, f"{name} does not cover"
    light = sample_batch_params([100] * 500, [100] * 500, generator, AUGMENTATION_PRESETS["light"], output_size=64)
    assert light.angle.abs().max() <= 10 and light.sigma.max() <= 1.0 and light.translate_x.abs().max() <= 3.2
    # nothing fits a 1000 x 10 strip: the centred fallback, as the CPU sampler's
    strip = sample_batch_params([1000, 10], [10, 1000], generator)
    boxes = list(zip(strip.top.tolist(), strip.left.tolist(), strip.height.tolist(), strip.width.tolist()))
    assert boxes == [sample_crop(1000, 10, generator), sample_crop(10, 1000, generator)] == [(493, 0, 13, 10),
                                                                                             (0, 493, 10, 13)]
    with pytest.raises(ValueError, match="same length"):
        sample_batch_params([10, 20], [10], generator)
    with pytest.raises(ValueError, match="integers"):
        sample_batch_params([10.5], [10.0], generator)
    with pytest.raises(ValueError, match="positive"):
        sample_batch_params([0], [10], generator)


def test_params_convert_both_ways():
    params = sample_batch_params([256, 200], [240, 256], torch.Generator().manual_seed(3))
    items = params.to_list()
    assert all(isinstance(item, AugmentationParams) and item.view_size == SIZE for item in items)
    again = params_from_list(items)
    for field in dataclasses.fields(BatchParams):
        a, b = getattr(params, field.name), getattr(again, field.name)
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, field.name
    # translations of draws made for other view sizes are converted to the first draw's unit
    mixed = params_from_list([_identity().replace(translate=(2.0, 1.0)),
                              _identity().replace(translate=(4.0, -2.0), view_size=2 * SIZE)])
    assert mixed.view_size == SIZE and mixed.translate_x.tolist() == [2.0, 2.0]
    assert mixed.translate_y.tolist() == [1, -1]
    with pytest.raises(ValueError, match="view_size"):
        params_from_list([_identity(), _identity().replace(view_size=None)])
    with pytest.raises(ValueError, match="at least one"):
        params_from_list([])


# each effect alone (identity elsewhere) on a 256 x 240 image, with the largest |difference| allowed (and the mean):
# where the CPU path does one resampling the results agree to float precision; a crop shrunk to 224 pixels differs by
# the CPU resize's antialiasing, a rotated crop that is resized by the CPU's second resampling
_BASE = _identity()
EFFECTS = {
    "identity": (_BASE, 1e-5, 1e-6),
    "flip": (_BASE.replace(flip=True), 1e-5, 1e-6),
    "rotation": (_BASE.replace(angle=13.0), 1e-4, 1e-6),
    "rotation 90": (_BASE.replace(angle=-90.0), 1e-5, 1e-6),
    "translation": (_BASE.replace(translate=(7.0, -5.0)), 1e-4, 1e-6),
    "translation fractional": (_BASE.replace(translate=(7.3, -5.6)), 1e-4, 1e-6),
    "translation other unit": (_BASE.replace(translate=(14.0, -10.0), view_size=2 * SIZE), 1e-4, 1e-6),
    "scale": (_BASE.replace(scale=1.04), 1e-4, 1e-6),
    "crop": (_BASE.replace(crop=(20, 9, 224, 224)), 1e-5, 1e-6),
    "crop enlarged": (_BASE.replace(crop=(10, 5, 150, 170)), 1e-5, 1e-6),
    "crop shrunk": (_BASE.replace(crop=(0, 0, 256, 240)), 2e-3, 2e-4),
    "crop enlarged + rotation": (_BASE.replace(crop=(10, 5, 150, 170), angle=13.0), 3e-3, 5e-4),
    "brightness": (_BASE.replace(brightness=1.35), 1e-5, 1e-6),
    "contrast": (_BASE.replace(contrast=0.65), 1e-5, 1e-6),
    "brightness + contrast": (_BASE.replace(brightness=0.7, contrast=1.4), 1e-5, 1e-6),
    "blur": (_BASE.replace(sigma=2.3), 1e-5, 1e-6),
    "blur small": (_BASE.replace(sigma=0.6), 1e-5, 1e-6),
    "blur tiny": (_BASE.replace(sigma=0.1), 1e-5, 1e-6),
}


def test_each_effect_alone_matches_the_cpu_path():
    image = _radiograph_like(256, 240)
    names = list(EFFECTS)
    params = [EFFECTS[name][0] for name in names]
    # all effects in one batch: per-sample parameters, including one blur kernel size for several sigmas
    batched = BatchedAugmentation(SIZE)(image.expand(len(names), -1, -1, -1), params=params)
    expected = _cpu_views([image] * len(names), params)
    for index, name in enumerate(names):
        _, largest, mean = EFFECTS[name]
        difference = _unit_difference(batched[index], expected[index])
        assert difference.max() < largest and difference.mean() < mean, (
            f"{name}: max {difference.max():.2e}, mean {difference.mean():.2e}")


def test_random_draws_match_the_cpu_path_on_a_mixed_batch():
    # grayscale portraits, landscapes and squares zero-padded into one batch, plus RGB images
    shapes = [(256, 240), (240, 256), (256, 256), (256, 200)] * 6
    images = [_radiograph_like(h, w, seed=i) for i, (h, w) in enumerate(shapes)]
    generator = torch.Generator().manual_seed(0)
    params = [sample_augmentation_params(h, w, generator) for h, w in shapes]
    batch = torch.zeros(len(images), 1, 256, 256, dtype=torch.uint8)
    for index, image in enumerate(images):
        batch[index, :, : image.shape[1], : image.shape[2]] = image
    batched = BatchedAugmentation(SIZE)(batch, sizes=shapes, params=params)
    difference = _unit_difference(batched, _cpu_views(images, params))
    assert difference.mean() < 2e-4 and difference.amax(dim=(1, 2, 3)).max() < 0.01, (
        f"mean {difference.mean():.2e}, max {difference.max():.2e}")
    rgb = [_radiograph_like(256, 240, seed=i, channels=3) for i in range(4)]
    rgb_params = [sample_augmentation_params(256, 240, generator) for _ in rgb]
    difference = _unit_difference(BatchedAugmentation(SIZE)(torch.stack(rgb), params=rgb_params),
                                  _cpu_views(rgb, rgb_params))
    assert difference.mean() < 2e-4 and difference.max() < 0.01


def test_padded_images_are_augmented_as_if_alone():
    augment = BatchedAugmentation(64)
    small, large = _radiograph_like(70, 50, seed=1), _radiograph_like(90, 80, seed=2)
    params = sample_batch_params([70, 90], [50, 80], torch.Generator().manual_seed(0), output_size=64)
    batch = torch.full((2, 1, 90, 80), 255, dtype=torch.uint8)  # padding that must not leak into the views
    batch[0, :, :70, :50], batch[1] = small, large
    views = augment(batch, sizes=torch.tensor([[70, 50], [90, 80]]), params=params)
    alone = [augment(image[None], params=params_from_list([p])) for image, p in zip((small, large), params.to_list())]
    torch.testing.assert_close(views, torch.cat(alone), rtol=0, atol=1e-5)


def test_views_are_deterministic_for_a_seed():
    batch = torch.stack([_radiograph_like(256, 256, seed=i) for i in range(4)])
    augment = BatchedAugmentation(SIZE)
    first = augment(batch, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, augment(batch, generator=torch.Generator().manual_seed(7)))
    assert not torch.allclose(first, augment(batch, generator=torch.Generator().manual_seed(8)))
    torch.manual_seed(3)
    global_draw = augment(batch)
    torch.manual_seed(3)
    assert torch.equal(global_draw, augment(batch))  # the global generator when none is given
    assert not torch.allclose(first[0], first[1])  # per-sample parameters


def test_output_shape_dtype_and_normalisation():
    gray = torch.full((3, 1, 40, 30), 128, dtype=torch.uint8)
    views = BatchedAugmentation(32)(gray, params=[_identity(40, 30).replace(view_size=32)] * 3)
    assert views.shape == (3, 3, 32, 32) and views.dtype == torch.float32 and views.is_contiguous()
    expected = (128 / 255 - torch.tensor(IMAGENET_DEFAULT_MEAN)) / torch.tensor(IMAGENET_DEFAULT_STD)
    torch.testing.assert_close(views, expected.view(1, 3, 1, 1).expand_as(views), rtol=0, atol=1e-5)
    batch = torch.randint(0, 256, (2, 3, 50, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    augment = BatchedAugmentation(24, channels_last=True)
    from_uint8 = augment(batch, generator=torch.Generator().manual_seed(1))
    assert from_uint8.shape == (2, 3, 24, 24) and from_uint8.is_contiguous(memory_format=torch.channels_last)
    from_float = augment(batch.float() / 255, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(from_float, from_uint8, rtol=0, atol=1e-5)
    low = (0 - torch.tensor(IMAGENET_DEFAULT_MEAN)) / torch.tensor(IMAGENET_DEFAULT_STD)
    high = (1 - torch.tensor(IMAGENET_DEFAULT_MEAN)) / torch.tensor(IMAGENET_DEFAULT_STD)
    per_channel = from_uint8.transpose(0, 1).reshape(3, -1)
    assert (per_channel.min(dim=1).values >= low - 1e-5).all() and (per_channel.max(dim=1).values <= high + 1e-5).all()


def test_clear_errors_for_bad_inputs():
    augment = BatchedAugmentation(32)
    good = torch.zeros(2, 1, 40, 40, dtype=torch.uint8)
    with pytest.raises(ValueError, match="N, C, H, W"):
        augment(torch.zeros(1, 40, 40, dtype=torch.uint8))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        augment(torch.zeros(2, 2, 40, 40, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8 or float"):
        augment(torch.zeros(2, 1, 40, 40, dtype=torch.int32))
    with pytest.raises(TypeError, match="tensor"):
        augment(np.zeros((2, 1, 40, 40), dtype=np.uint8))
    with pytest.raises(ValueError, match="sizes"):
        augment(good, sizes=[(40, 40)])
    with pytest.raises(ValueError, match="sizes must lie within"):
        augment(good, sizes=[(40, 40), (41, 40)])
    with pytest.raises(ValueError, match="crop box"):
        augment(good, sizes=[(40, 40), (20, 20)], params=[_identity(40, 40)] * 2)
    with pytest.raises(ValueError, match="parameter draws"):
        augment(good, params=[_identity(40, 40)])
    with pytest.raises(ValueError, match="output_size"):
        BatchedAugmentation(0)


def test_grid_is_affine_grids():
    import torch.nn.functional as F

    from convirt_hf.data.gpu_augment import _affine_grid

    theta = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0))
    for size in (1, 7, 32):
        expected = F.affine_grid(theta, [5, 1, size, size], align_corners=False)
        torch.testing.assert_close(_affine_grid(theta, size), expected, rtol=0, atol=1e-6)


def test_loader_drawn_parameters_make_a_rows_view_independent_of_its_batch_and_equal_to_the_cpu_draw():
    """The training loaders draw each row's parameters from its own (seed, epoch, row) generator, as the CPU path does:
    a view is then the same in any batch (and any process, and after a resume)."""
    from PIL import Image

    from convirt_hf.data.collate import ConvirtCollator
    from convirt_hf.data.gpu_augment import DecodedImage
    from convirt_hf.data.pairs import PairViews
    from convirt_hf.data.transforms import ConvirtTrainTransform

    images = [Image.fromarray(_radiograph_like(90 + 7 * i, 80 + 5 * i, seed=i)[0].numpy()) for i in range(5)]
    records = [{"id": f"r{i}", "image": image, "text": "x", "sentences": ["x"]} for i, image in enumerate(images)]
    sampler = ConvirtTrainTransform(output_size=32, ranges=AUGMENTATION_PRESETS["paper"])
    device_views = PairViews(records, DecodedImage(sampler=sampler), seed=7)
    cpu_views = PairViews(records, sampler, seed=7)
    collate = ConvirtCollator(tokenizer=None, raw_images=True)
    augment = BatchedAugmentation(output_size=32, ranges=AUGMENTATION_PRESETS["paper"])

    def views(indices):
        batch = collate([{key: value for key, value in device_views[i].items() if key != "sentence"}
                         for i in indices])
        return augment(batch["pixel_values"], sizes=batch["sizes"], params=batch["augmentation"])

    epoch = 3 * len(records)  # epoch 3: indices are epoch-tagged
    alone, among_others = views([epoch + 4]), views([epoch + 1, epoch + 4, epoch + 2])[1:2]
    torch.testing.assert_close(alone, among_others, rtol=0, atol=1e-6)
    for row in range(5):  # the CPU path draws the same parameters for the row: views agree up to resampling
        cpu = cpu_views[epoch + row]["pixel_values"]
        device = views([epoch + row])[0]
        assert (cpu - device).abs().mean() < 0.05, row
    assert not torch.allclose(views([epoch + 4]), views([4]))  # another epoch, another view
