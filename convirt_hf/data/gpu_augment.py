"""Batched (GPU) training views: the paper's five augmentations for a whole batch on the device.

The CPU path (:mod:`convirt_hf.data.transforms`) augments one image at a time in the data-loader workers. This module
does the same for a ``(N, C, H, W)`` batch of preprocessed images (``uint8`` or float in [0, 1]; C = 1 or 3) on
whatever device the batch lives on, with per-sample random parameters:

- :func:`sample_batch_params` draws a :class:`BatchParams` (tensors on the generator's device) from exactly the
  distributions of :func:`~convirt_hf.data.transforms.sample_augmentation_params`: the crop box by torchvision's
  ``RandomResizedCrop`` rule (10 tries of an area fraction uniform in ``crop_scale`` and a log-uniform aspect ratio,
  the same integer rounding, top/left uniform integers, the same centre-crop fallback; the tries are vectorised),
  the flip with ``flip_probability``, angle, translation (pixels of the output view), scale, brightness, contrast and
  sigma (pixels of a 224-pixel view) uniform in their ranges. The random numbers are consumed differently (one
  ``(N, 30)`` draw), so a seed gives other values than the CPU sampler, from the same distributions.
- :func:`params_from_list` batches a list of :class:`~convirt_hf.data.transforms.AugmentationParams`, so both paths
  can be fed identical parameters (and :meth:`BatchParams.to_list` goes the other way).
- :class:`BatchedAugmentation` applies a draw to a batch:

  1. geometry -- crop, resize to the output size, horizontal flip and torchvision's ``affine`` (rotation about the
     view centre with ``TF.affine``'s angle sign, translation, scale, fill 0) -- as one affine grid
     (``F.affine_grid``'s, built as an outer sum, which is five times faster on CPU) plus one bilinear
     ``F.grid_sample`` over the batch. The grid is the view's affine grid mapped, per sample and
     elementwise, through flip and crop-resize into the image's own pixels (each image's own size, so zero-padded
     batches of different sizes work); coordinates are clamped to the crop box as the CPU resize does at its edges,
     and the zero fill reproduces torchvision's bilinear fill blend (``TF.affine`` multiplies by a resampled mask,
     so a partly outside pixel is attenuated twice);
  2. brightness (multiply, clamp to [0, 1]) then contrast (torchvision's ``adjust_contrast``: blend with the mean of
     the image's grayscale, clamp), per sample;
  3. Gaussian blur with per-sample sigma (``sigma * S / 224`` pixels): one odd kernel size for the batch,
     :func:`~convirt_hf.data.transforms.blur_kernel_size` of the batch's largest sigma, as two grouped 1-D
     convolutions with reflect padding. Each sample's taps beyond its own +-3 sigma radius are zeroed, so every
     sample gets exactly the kernel of :func:`~convirt_hf.data.transforms.gaussian_blur` that the CPU path uses;
  4. clamp to [0, 1], replicate one channel to three and normalise (``normalize_view``); float32 ``(N, 3, S, S)``,
     optionally channels-last.

Differences from the CPU path. The CPU path resizes the crop with antialiasing and then resamples the resized view a
second time for the affine transform; this path samples the image once, bilinearly, without antialias. So outputs
match closely, not bit for bit. Measured by ``tests/data/test_gpu_augment.py`` (smooth radiograph-like 256-pixel
images, 224-pixel views, |difference| in [0, 1] units before normalisation):

- flip, rotation, translation (whole or fractional pixels, other units), scale, a crop that is not resized or is
  enlarged, brightness, contrast, blur (sigma 0.1-2.3, mixed in one batch): max < 2e-5, mean < 1e-7 (float
  precision: these steps are the same math);
- a 256 x 240 crop shrunk to 224 (antialias or not): max 8e-4, mean 1e-4; an enlarged crop also rotated (two
  resamplings or one): max 1.1e-3, mean 1e-4;
- random draws of the paper's ranges on a zero-padded batch of mixed sizes: mean 4e-5, max 1e-3.

On white noise, the worst case for the antialiasing difference, random draws differ by a mean of 0.016.

In training (``training/pretrain.py --gpu_augmentation``, the default) the data-loader workers decode each image and
draw its parameters with the row's own generator (:class:`DecodedImage` with a sampler), exactly as the CPU path
draws them; :class:`~convirt_hf.data.collate.ConvirtCollator` with ``raw_images=True`` zero-pads the decoded images
into one batch with their ``sizes`` and parameters, and the training loop applies them on the device. A view then
depends on (seed, epoch, row) only, so a resumed run makes exactly the views of an uninterrupted one. (A batch
without parameters is drawn from a generator seeded by :func:`batch_seed`.)

The parameters are float64 (as the CPU sampler's); the per-sample coefficients of the geometry are computed in float64
and the grid in float32. For a seeded ``torch.Generator`` the output is deterministic (the forward ops used are
deterministic on CPU and CUDA). Sampling its own parameters, :class:`BatchedAugmentation` does not synchronise with
the device (the batch kernel size comes from the range's largest sigma); explicit ``params`` cost one
synchronisation (their crop boxes are checked and their largest sigma read), ``sizes`` given on the host are checked
there and copied once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from convirt_hf.data.transforms import (
    BLUR_TRUNCATE,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    PAPER_VIEW_SIZE,
    AugmentationParams,
    AugmentationRanges,
    ConvirtTrainTransform,
    blur_kernel_size,
    to_image_tensor,
)

__all__ = ["BatchParams", "BatchedAugmentation", "DecodedImage", "DecodedView", "batch_seed", "params_from_list",
           "sample_batch_params"]

CROP_TRIES = 10  # torchvision's RandomResizedCrop
PAPER_RANGES = AugmentationRanges()
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale

# columns of the single uniform draw of sample_batch_params
_AREA, _RATIO = slice(0, CROP_TRIES), slice(CROP_TRIES, 2 * CROP_TRIES)
_TOP, _LEFT, _FLIP, _ANGLE, _TX, _TY, _SCALE, _BRIGHTNESS, _CONTRAST, _SIGMA = range(2 * CROP_TRIES,
                                                                                     2 * CROP_TRIES + 10)
_COLUMNS = 2 * CROP_TRIES + 10


@dataclass(frozen=True)
class BatchParams:
    """
    One draw of the training augmentation for each image of a batch, as `(N,)` tensors on one device.

    Args:
        top, left, height, width (`torch.LongTensor`): the crop box of each image, in its input pixels.
        flip (`torch.BoolTensor`): horizontal flip.
        angle (`torch.DoubleTensor`): rotation in degrees (torchvision's `affine` convention).
        translate_x, translate_y (`torch.DoubleTensor`): shift in pixels of a `view_size` view.
        scale, brightness, contrast (`torch.DoubleTensor`): affine zoom, brightness and contrast factors.
        sigma (`torch.DoubleTensor`): blur sigma in pixels of a 224-pixel view.
        view_size (`int`, *optional*): the output size the draw was made for (the unit of the translation); `None`
            means whatever size it is applied at.
    """

    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    flip: torch.Tensor
    angle: torch.Tensor
    translate_x: torch.Tensor
    translate_y: torch.Tensor
    scale: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    sigma: torch.Tensor
    view_size: int | None = None

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "view_size"}

    def __len__(self) -> int:
        return int(self.top.shape[0])

    @property
    def device(self) -> torch.device:
        return self.top.device

    def to(self, device, non_blocking: bool = False) -> BatchParams:
        """The same draw on `device`."""
        moved = {name: value.to(device, non_blocking=non_blocking) for name, value in self._tensors().items()}
        return BatchParams(**moved, view_size=self.view_size)

    def to_list(self) -> list[AugmentationParams]:
        """The draw as one [`AugmentationParams`] per image (for the CPU path)."""
        values = {name: value.cpu().tolist() for name, value in self._tensors().items()}
        return [
            AugmentationParams(
                crop=(values["top"][i], values["left"][i], values["height"][i], values["width"][i]),
                flip=bool(values["flip"][i]),
                angle=values["angle"][i],
                translate=(values["translate_x"][i], values["translate_y"][i]),
                scale=values["scale"][i],
                brightness=values["brightness"][i],
                contrast=values["contrast"][i],
                sigma=values["sigma"][i],
                view_size=self.view_size,
            )
            for i in range(len(self))
        ]


def params_from_list(params: Sequence[AugmentationParams], device=None) -> BatchParams:
    """
    Batches one [`AugmentationParams`] per image into a [`BatchParams`] on `device` (CPU by default). Translations
    are converted to pixels of the first item's `view_size`; items must all have a `view_size` or all have none.
    """
    params = list(params)
    if not params:
        raise ValueError("params_from_list needs at least one AugmentationParams")
    view_size = params[0].view_size
    if any((p.view_size is None) != (view_size is None) for p in params):
        raise ValueError("the AugmentationParams of one batch must all have a view_size or all have none, got "
                         f"{sorted({str(p.view_size) for p in params})}")
    # translations are converted to pixels of the first draw's view size
    units = [1.0 if view_size is None else view_size / p.view_size for p in params]

    def floats(values):
        return torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)

    crops = torch.tensor([list(map(int, p.crop)) for p in params], dtype=torch.int64, device=device)
    return BatchParams(
        top=crops[:, 0].contiguous(), left=crops[:, 1].contiguous(),
        height=crops[:, 2].contiguous(), width=crops[:, 3].contiguous(),
        flip=torch.tensor([bool(p.flip) for p in params], dtype=torch.bool, device=device),
        angle=floats(p.angle for p in params),
        translate_x=floats(p.translate[0] * unit for p, unit in zip(params, units)),
        translate_y=floats(p.translate[1] * unit for p, unit in zip(params, units)),
        scale=floats(p.scale for p in params),
        brightness=floats(p.brightness for p in params),
        contrast=floats(p.contrast for p in params),
        sigma=floats(p.sigma for p in params),
        view_size=view_size,
    )


def _uniform(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * u  # the CPU sampler's formula, in float64


def _as_sizes(values, name: str, device) -> torch.Tensor:
    tensor = torch.as_tensor(values, device=device)
    if tensor.ndim != 1 or tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must be a 1-D sequence of integers, got {values!r}")
    if tensor.device.type == "cpu" and (tensor < 1).any():  # device tensors are not checked (no synchronisation)
        raise ValueError(f"{name} must be positive, got {tensor.tolist()}")
    return tensor.to(torch.int64)


def sample_batch_params(
    heights,
    widths,
    generator: torch.Generator | None = None,
    ranges: AugmentationRanges = PAPER_RANGES,
    output_size: int = PAPER_VIEW_SIZE,
    device=None,
) -> BatchParams:
    """
    Draws the augmentation of each image of a batch, from the distributions of `sample_augmentation_params`.

    Args:
        heights, widths (sequences of `int` or 1-D integer tensors): each input image's true size in pixels.
        generator (`torch.Generator`, *optional*): the source of randomness; the draw lives on its device. Without
            one, the default generator of `device` (or of the `heights` tensor's device, else CPU) is used.
        ranges ([`AugmentationRanges`], *optional*): the ranges (the paper's by default).
        output_size (`int`, defaults to 224): side of the view; the translation is in its pixels.
        device (*optional*): where to draw when no generator is given.

    Returns:
        [`BatchParams`]
    """
    if generator is not None:
        device = generator.device
    elif device is None:
        device = heights.device if isinstance(heights, torch.Tensor) else torch.device("cpu")
    height = _as_sizes(heights, "heights", device)
    width = _as_sizes(widths, "widths", device)
    if height.shape != width.shape:
        raise ValueError(f"heights and widths must have the same length, got {height.shape[0]} and {width.shape[0]}")
    count = height.shape[0]
    u = torch.rand((count, _COLUMNS), generator=generator, device=device, dtype=torch.float64)

    # crop: RandomResizedCrop's ten tries at once, the first one that fits wins
    h, w = height.to(torch.float64)[:, None], width.to(torch.float64)[:, None]
    target_area = (h * w) * _uniform(u[:, _AREA], *ranges.crop_scale)
    log_ratio = (math.log(ranges.crop_ratio[0]), math.log(ranges.crop_ratio[1]))
    aspect = torch.exp(_uniform(u[:, _RATIO], *log_ratio))
    try_width = torch.round(torch.sqrt(target_area * aspect))  # round half to even, as Python's round
    try_height = torch.round(torch.sqrt(target_area / aspect))
    fits = (try_width > 0) & (try_width <= w) & (try_height > 0) & (try_height <= h)
    first = fits.to(torch.int32).argmax(dim=1, keepdim=True)  # the first try that fits (0 when none does)
    found = fits.any(dim=1)
    crop_w, crop_h = try_width.gather(1, first)[:, 0], try_height.gather(1, first)[:, 0]
    # the fallback: the largest centred crop whose aspect ratio is within range
    h, w = h[:, 0], w[:, 0]
    in_ratio = w / h
    narrow, wide = in_ratio < ranges.crop_ratio[0], in_ratio > ranges.crop_ratio[1]
    fallback_w = torch.where(wide, torch.round(h * ranges.crop_ratio[1]), w)
    fallback_h = torch.where(narrow, torch.round(w / ranges.crop_ratio[0]), h)
    fallback_w = torch.minimum(fallback_w.clamp(min=1), w)
    fallback_h = torch.minimum(fallback_h.clamp(min=1), h)
    crop_w = torch.where(found, crop_w, fallback_w).to(torch.int64)
    crop_h = torch.where(found, crop_h, fallback_h).to(torch.int64)
    # top and left: uniform integers in [0, H - h] (the CPU sampler's randint), else centred
    spare_h, spare_w = height - crop_h, width - crop_w
    top = torch.minimum(torch.floor(u[:, _TOP] * (spare_h + 1).to(torch.float64)).to(torch.int64), spare_h)
    left = torch.minimum(torch.floor(u[:, _LEFT] * (spare_w + 1).to(torch.float64)).to(torch.int64), spare_w)
    top = torch.where(found, top, spare_h // 2)
    left = torch.where(found, left, spare_w // 2)

    max_dx, max_dy = ranges.translate[0] * output_size, ranges.translate[1] * output_size
    return BatchParams(
        top=top, left=left, height=crop_h, width=crop_w,
        flip=u[:, _FLIP] < ranges.flip_probability,
        angle=_uniform(u[:, _ANGLE], *ranges.rotation),
        translate_x=_uniform(u[:, _TX], -max_dx, max_dx),
        translate_y=_uniform(u[:, _TY], -max_dy, max_dy),
        scale=_uniform(u[:, _SCALE], *ranges.scale),
        brightness=_uniform(u[:, _BRIGHTNESS], *ranges.brightness),
        contrast=_uniform(u[:, _CONTRAST], *ranges.contrast),
        sigma=_uniform(u[:, _SIGMA], *ranges.blur_sigma),
        view_size=int(output_size),
    )


def _affine_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """
    `F.affine_grid(theta, (N, 1, size, size), align_corners=False)` built as an outer sum per coordinate: the same
    grid to float precision, about five times faster on CPU (`affine_grid` is a batched matrix product with an
    inner dimension of 3); on a GPU both are negligible.
    """
    count = theta.shape[0]
    base = (torch.arange(size, dtype=theta.dtype, device=theta.device) * 2.0 + 1.0) / size - 1.0
    grid = torch.empty((count, size, size, 2), dtype=theta.dtype, device=theta.device)
    for axis in range(2):
        along_x = torch.addcmul(theta[:, axis, 2, None], theta[:, axis, 0, None], base)  # (N, S): column j
        along_y = theta[:, axis, 1, None] * base  # (N, S): row i
        torch.add(along_x[:, None, :], along_y[:, :, None], out=grid[..., axis])
    return grid


class BatchedAugmentation:
    """
    The paper's random training views of a batch, computed on the batch's device (see the module docstring).

    Args:
        output_size (`int`, defaults to 224): side S of the views.
        ranges ([`AugmentationRanges`], *optional*): augmentation ranges (the paper's by default).
        mean (`tuple[float, float, float]`), std (`tuple[float, float, float]`): normalisation (ImageNet's).
        channels_last (`bool`, defaults to `False`): return the views in channels-last memory format.

    Call it as `augment(images, sizes=None, generator=None, params=None)`:

    - `images`: a `(N, C, H, W)` `uint8` or float (values in [0, 1]) tensor, C = 1 or 3;
    - `sizes`: each image's true `(height, width)` when smaller images are zero-padded at the bottom and right,
      an `(N, 2)` integer tensor or a sequence of pairs (default: all `(H, W)`); checked when given on the host
      (a device tensor is trusted, to avoid a synchronisation);
    - `generator`: a `torch.Generator` for the draw (any device; the draw is moved to the images' device);
    - `params`: a [`BatchParams`] (or a list of [`AugmentationParams`]) to apply instead of a random draw.

    Returns a float32 `(N, 3, S, S)` tensor on the images' device.

    Example:

    ```python
    >>> import torch
    >>> augment = BatchedAugmentation(output_size=64)
    >>> images = torch.randint(0, 256, (4, 1, 80, 72), dtype=torch.uint8)
    >>> views = augment(images, generator=torch.Generator().manual_seed(0))
    >>> tuple(views.shape), views.dtype
    ((4, 3, 64, 64), torch.float32)

    ```
    """

    def __init__(
        self,
        output_size: int = PAPER_VIEW_SIZE,
        ranges: AugmentationRanges = PAPER_RANGES,
        mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
        std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
        channels_last: bool = False,
    ):
        if output_size < 1:
            raise ValueError(f"output_size must be positive, got {output_size}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std must have three values, got {mean} and {std}")
        self.output_size = int(output_size)
        self.ranges = ranges
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.channels_last = bool(channels_last)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(output_size={self.output_size}, ranges={self.ranges}, "
                f"channels_last={self.channels_last})")

    def sample(self, sizes: torch.Tensor, generator: torch.Generator | None = None, device=None) -> BatchParams:
        """A draw for images of the given `(N, 2)` true sizes."""
        return sample_batch_params(sizes[:, 0], sizes[:, 1], generator, self.ranges, self.output_size, device=device)

    # -- input checks -------------------------------------------------------------------------------------------
    @staticmethod
    def _check_images(images) -> None:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"expected a tensor batch, got {type(images).__name__}")
        if images.ndim != 4:
            raise ValueError(f"expected a (N, C, H, W) batch, got shape {tuple(images.shape)}")
        if images.shape[1] not in (1, 3):
            raise ValueError(f"expected 1 or 3 channels, got shape {tuple(images.shape)}")
        if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
            raise ValueError(f"expected a non-empty batch, got shape {tuple(images.shape)}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise TypeError(f"expected a uint8 or float batch, got {images.dtype}")

    @staticmethod
    def _sizes(images: torch.Tensor, sizes) -> torch.Tensor:
        count, _, height, width = images.shape
        if sizes is None:
            return torch.tensor([[height, width]], dtype=torch.int64, device=images.device).expand(count, 2)
        on_host = not isinstance(sizes, torch.Tensor) or sizes.device.type == "cpu"
        tensor = torch.as_tensor(sizes)
        if tensor.shape != (count, 2) or tensor.is_floating_point() or tensor.dtype == torch.bool:
            raise ValueError(f"sizes must be {count} integer (height, width) pairs, got shape {tuple(tensor.shape)}")
        tensor = tensor.to(torch.int64)
        if on_host and (  # checked without a device synchronisation
            (tensor < 1).any() or (tensor[:, 0] > height).any() or (tensor[:, 1] > width).any()
        ):
            raise ValueError(f"sizes must lie within the batch's {height} x {width} pixels, got {tensor.tolist()}")
        return tensor.to(images.device)

    @staticmethod
    def _check_crops(params: BatchParams, sizes: torch.Tensor) -> None:
        sizes = sizes.to(params.device)
        bad = ((params.top < 0) | (params.left < 0) | (params.height < 1) | (params.width < 1)
               | (params.top + params.height > sizes[:, 0]) | (params.left + params.width > sizes[:, 1]))
        if bool(bad.any()):
            index = int(bad.nonzero()[0, 0])
            box = (params.top[index], params.left[index], params.height[index], params.width[index])
            raise ValueError(f"crop box {tuple(int(v) for v in box)} of image {index} does not fit its size "
                             f"{tuple(int(v) for v in sizes[index])}")

    # -- the augmentation ---------------------------------------------------------------------------------------
    def __call__(self, images: torch.Tensor, sizes=None, generator: torch.Generator | None = None,
                 params: BatchParams | Sequence[AugmentationParams] | None = None) -> torch.Tensor:
        self._check_images(images)
        sizes = self._sizes(images, sizes)
        device = images.device
        if params is None:
            draw_device = generator.device if generator is not None else device
            params = self.sample(sizes.to(draw_device), generator, device=draw_device).to(device)
            largest_sigma = float(self.ranges.blur_sigma[1])  # static: no device synchronisation
        else:
            if not isinstance(params, BatchParams):
                params = params_from_list(params)
            if len(params) != images.shape[0]:
                raise ValueError(f"got {len(params)} parameter draws for a batch of {images.shape[0]} images")
            params = params.to(device)
            self._check_crops(params, sizes)
            largest_sigma = float(params.sigma.max())
        view = self._geometry_and_brightness(images, sizes, params)
        view = self._contrast(view, params.contrast)
        view = self._blur(view, params.sigma, largest_sigma)
        view = view.clamp_(0.0, 1.0)
        return self._normalize(view)

    def _geometry_and_brightness(self, images: torch.Tensor, sizes: torch.Tensor, params: BatchParams) -> torch.Tensor:
        """Crop, resize, flip and affine as one resampling, times the fill mask and the brightness factor."""
        size = self.output_size
        count, _, in_height, in_width = images.shape
        # torchvision's inverse affine matrix (TF.affine about the view centre, no shear), in the view's normalised
        # coordinates: x_in = (cos (x - tx) + sin (y - ty)) / s,  y_in = (-sin (x - tx) + cos (y - ty)) / s
        unit = size / (params.view_size or size)
        rot = torch.deg2rad(params.angle)
        cos, sin = torch.cos(rot) / params.scale, torch.sin(rot) / params.scale
        tx, ty = params.translate_x * (unit / (0.5 * size)), params.translate_y * (unit / (0.5 * size))
        theta = torch.stack([
            torch.stack([cos, sin, -(cos * tx + sin * ty)], dim=-1),
            torch.stack([-sin, cos, sin * tx - cos * ty], dim=-1),
        ], dim=1)
        grid = _affine_grid(theta.to(torch.float32), size)  # (N, S, S, 2)
        # TF.affine's bilinear zero fill resamples a mask of ones and multiplies by it; the zero-padded sample equals
        # the border-clamped sample times that mask, so the view is (clamped sample) * mask ** 2. The mask is a tent
        # per axis: clamp(min(u + 1, S - u), 0, 1) at view pixel u, = clamp(0.5 + S / 2 * (1 - |g|), 0, 1).
        tent = grid.abs().mul_(-0.5 * size).add_(0.5 * size + 0.5).clamp_(0.0, 1.0)
        weight = tent[..., 0].mul(tent[..., 1]).square_()
        # flip, crop and resize are per-axis affine maps g -> P g + Q into the batch tensor's normalised coordinates
        # (align_corners=False). Clamping the view coordinate to its pixel centres (the border clamp above) and the
        # image coordinate to the crop's pixel centres (what the resize does at the crop's edges) is one symmetric
        # clamp of g to +-min((S - 1) / S, (c - 1) / c) for a crop side of c pixels.
        f64 = {"dtype": torch.float64, "device": images.device}
        crop = torch.stack([params.width, params.height], dim=-1).to(**f64)  # (N, 2): x then y
        start = torch.stack([params.left, params.top], dim=-1).to(**f64)
        extent = torch.tensor([in_width, in_height], **f64)
        sign = torch.stack([torch.where(params.flip, -1.0, 1.0).to(**f64), torch.ones(count, **f64)], dim=-1)
        slope = sign * crop / extent
        offset = (crop + 2.0 * start) / extent - 1.0
        bound = torch.minimum((crop - 1.0) / crop, torch.full_like(crop, (size - 1.0) / size))
        as_grid = {"dtype": torch.float32}
        bound = bound.to(**as_grid)[:, None, None, :]
        source = torch.addcmul(offset.to(**as_grid)[:, None, None, :], grid.clamp_(-bound, bound),
                               slope.to(**as_grid)[:, None, None, :])
        pixels = images.to(torch.float32)
        sampled = F.grid_sample(pixels, source, mode="bilinear", padding_mode="zeros", align_corners=False)
        # uint8 to [0, 1], fill mask and brightness in one multiply; brightness clamps to [0, 1] as torchvision's
        to_unit = 1.0 / 255.0 if images.dtype == torch.uint8 else 1.0
        weight = weight.mul_((params.brightness * to_unit).to(torch.float32)[:, None, None])
        return sampled.mul_(weight[:, None]).clamp_(0.0, 1.0)

    @staticmethod
    def _contrast(view: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
        """torchvision's adjust_contrast per sample: blend with the mean of the grayscale image, clamp."""
        if view.shape[1] == 3:
            r, g, b = view.unbind(dim=1)
            gray = r.mul(GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2])
            mean = gray.mean(dim=(-2, -1))
        else:
            mean = view.mean(dim=(-3, -2, -1))
        factor = contrast.to(torch.float32)
        offset = (1.0 - factor) * mean
        return view.mul_(factor[:, None, None, None]).add_(offset[:, None, None, None]).clamp_(0.0, 1.0)

    def _blur(self, view: torch.Tensor, sigma: torch.Tensor, largest_sigma: float) -> torch.Tensor:
        """Per-sample Gaussian blur: each sample's own torchvision kernel, zero-padded to one batch kernel size."""
        size = self.output_size
        kernel_size = blur_kernel_size(size, largest_sigma)
        if kernel_size == 1:
            return view
        count, channels = view.shape[:2]
        radius = kernel_size // 2
        # each sample's kernel size by blur_kernel_size's rule, vectorised (float64 as the Python arithmetic)
        own_radius = torch.ceil(BLUR_TRUNCATE * sigma * size / PAPER_VIEW_SIZE).clamp_(min=1.0)
        largest_odd = size if size % 2 else size - 1
        own_size = torch.clamp(2.0 * own_radius + 1.0, max=float(largest_odd))
        own_half = (own_size - 1.0) * 0.5
        offsets = torch.linspace(-radius, radius, kernel_size, dtype=torch.float32, device=view.device)
        pixels_sigma = (sigma * size / PAPER_VIEW_SIZE).to(torch.float32)
        pdf = torch.exp(-0.5 * (offsets[None, :] / pixels_sigma[:, None]).pow(2))
        pdf = pdf * (offsets[None, :].abs() <= own_half.to(torch.float32)[:, None])
        kernel = pdf / pdf.sum(dim=1, keepdim=True)  # (N, K)
        kernel = kernel.repeat_interleave(channels, dim=0)  # one per (sample, channel) group
        flat = view.reshape(1, count * channels, size, size)
        flat = F.pad(flat, [radius, radius, radius, radius], mode="reflect")
        flat = F.conv2d(flat, kernel.view(-1, 1, 1, kernel_size), groups=count * channels)
        flat = F.conv2d(flat, kernel.view(-1, 1, kernel_size, 1), groups=count * channels)
        return flat.view(count, channels, size, size)

    def _normalize(self, view: torch.Tensor) -> torch.Tensor:
        """normalize_view for a batch: one channel replicated to three, then per-channel mean and std."""
        if view.shape[1] == 1:
            view = view.expand(-1, 3, -1, -1)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=view.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=view.device).view(1, 3, 1, 1)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        out = torch.empty(view.shape, dtype=torch.float32, device=view.device, memory_format=memory_format)
        return torch.sub(view, mean, out=out).div_(std)


class DecodedView(NamedTuple):
    """A decoded image and the augmentation drawn for it, to be applied on the training device."""

    image: torch.Tensor
    params: AugmentationParams


class DecodedImage:
    """
    The data-loader half of the device path: an image as the `(C, H, W)` tensor the CPU path would augment
    ([`~convirt_hf.data.transforms.to_image_tensor`]: C = 1 for grayscale, `uint8` or float in [0, 1]), at its
    stored size, without augmentation. It takes a `generator` argument, so it stands in for
    [`~convirt_hf.data.transforms.ConvirtTrainTransform`] in [`~convirt_hf.data.pairs.PairViews`].

    Args:
        sampler ([`~convirt_hf.data.transforms.ConvirtTrainTransform`], *optional*): with a sampler, each image also
            gets its augmentation parameters, drawn here with the row's own generator exactly as the CPU path draws
            them, and the call returns a [`DecodedView`]. A view then depends on (seed, epoch, row) only: not on the
            batch it lands in, the process that trains it, or a resume. Without one, the generator is ignored and
            the call returns the tensor.
    """

    def __init__(self, sampler: ConvirtTrainTransform | None = None):
        self.sampler = sampler

    def __call__(self, image, generator: torch.Generator | None = None) -> torch.Tensor | DecodedView:
        tensor = to_image_tensor(image)
        if self.sampler is None:
            return tensor
        return DecodedView(tensor, self.sampler.sample(tensor.shape[-2], tensor.shape[-1], generator))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sampler={self.sampler!r})"


def batch_seed(seed: int, epoch: int, batch: int, process: int = 0) -> int:
    """
    The seed of one batch's augmentation generator: a function of the run's `seed`, the `epoch`, the `batch` index
    within the epoch and the `process` index only (through numpy's `SeedSequence`, so nearby tuples give unrelated
    streams), never of a global random state: a run resumed at any batch draws the views an uninterrupted run does.
    """
    values = [int(seed), int(epoch), int(batch), int(process)]
    if any(value < 0 for value in values):
        raise ValueError(f"seed, epoch, batch and process must be >= 0, got {values}")
    return int(np.random.SeedSequence(values).generate_state(1, np.uint64)[0] >> np.uint64(1))  # 63 bits
