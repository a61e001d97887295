"""Image views: the paper's five training augmentations and the deterministic evaluation view.

Training (Zhang et al., Appendix A), in this order:
1. random crop of 60-100% of the image area (aspect ratio 3/4-4/3, as torchvision's RandomResizedCrop), resized to
   the output size;
2. horizontal flip with probability 0.5;
3. affine transform: rotation in [-20, 20] degrees, translation up to 10% of each side, scale in [0.95, 1.05];
4. brightness and contrast factors in [0.6, 1.4] (brightness first, then contrast around the image mean);
5. Gaussian blur with sigma in [0.1, 3.0].

Parameters are drawn by :func:`sample_augmentation_params` and applied by :func:`apply_augmentation`, separately, so
that the batched GPU path can draw from exactly the same ranges and be checked against this one.

Blur sigma is in pixels of a 224-pixel view, the paper's size: at another output size it is scaled by
``output_size / 224`` so a small demo image is blurred as much, relative to its size, as the paper's. The kernel
covers +-3 sigma of the largest sigma.

Grayscale is processed as one channel and replicated to three at the end (ImageNet-initialised towers expect three),
then normalised with the ImageNet mean and standard deviation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAPER_VIEW_SIZE = 224


@dataclass(frozen=True)
class AugmentationRanges:
    """The paper's augmentation ranges (defaults)."""

    crop_scale: tuple[float, float] = (0.6, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_probability: float = 0.5
    max_rotation: float = 20.0
    max_translation: float = 0.1
    scale: tuple[float, float] = (0.95, 1.05)
    brightness: tuple[float, float] = (0.6, 1.4)
    contrast: tuple[float, float] = (0.6, 1.4)
    blur_sigma: tuple[float, float] = (0.1, 3.0)


AUGMENTATION_PRESETS = {
    "paper": AugmentationRanges(),
    # For small from-scratch CPU runs on the synthetic corpus: at 64 px the paper's ranges (+-40% brightness and
    # contrast, crops down to 60% of the area) slow feature learning from scratch about threefold (measured: a
    # supervised ResNet-18 reaches 36% accuracy after 92 steps with them, 95% without).
    "light": AugmentationRanges(
        crop_scale=(0.8, 1.0), max_rotation=10.0, max_translation=0.05, brightness=(0.8, 1.2), contrast=(0.8, 1.2),
        blur_sigma=(0.1, 1.0),
    ),
}


@dataclass(frozen=True)
class AugmentationParams:
    """One draw of the augmentation parameters for one image."""

    crop: tuple[int, int, int, int]  # top, left, height, width in input pixels
    flip: bool
    angle: float  # degrees
    translate: tuple[float, float]  # fractions of the output width and height
    scale: float
    brightness: float
    contrast: float
    sigma: float  # in pixels of a 224-pixel view


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def sample_crop(height: int, width: int, generator, scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop rule: up to 10 tries of (area, log-ratio), else a centred crop."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(generator, *scale)
        aspect = math.exp(_uniform(generator, *log_ratio))
        crop_width = int(round(math.sqrt(target_area * aspect)))
        crop_height = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(torch.randint(0, height - crop_height + 1, (1,), generator=generator).item())
            left = int(torch.randint(0, width - crop_width + 1, (1,), generator=generator).item())
            return top, left, crop_height, crop_width
    in_ratio = width / height
    if in_ratio < ratio[0]:
        crop_width, crop_height = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        crop_height, crop_width = height, int(round(height * ratio[1]))
    else:
        crop_width, crop_height = width, height
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


def sample_augmentation_params(
    height: int, width: int, generator: torch.Generator | None = None, ranges: AugmentationRanges = AugmentationRanges()
) -> AugmentationParams:
    """Draws one set of parameters for an input image of `height` x `width` pixels."""
    crop = sample_crop(height, width, generator, ranges.crop_scale, ranges.crop_ratio)
    return AugmentationParams(
        crop=crop,
        flip=bool(torch.rand((), generator=generator).item() < ranges.flip_probability),
        angle=_uniform(generator, -ranges.max_rotation, ranges.max_rotation),
        translate=(
            _uniform(generator, -ranges.max_translation, ranges.max_translation),
            _uniform(generator, -ranges.max_translation, ranges.max_translation),
        ),
        scale=_uniform(generator, *ranges.scale),
        brightness=_uniform(generator, *ranges.brightness),
        contrast=_uniform(generator, *ranges.contrast),
        sigma=_uniform(generator, *ranges.blur_sigma),
    )


def blur_kernel_size(output_size: int, max_sigma: float = 3.0) -> int:
    """An odd kernel covering +-3 sigma of the largest (size-scaled) sigma, no larger than the image."""
    radius = math.ceil(3 * max_sigma * output_size / PAPER_VIEW_SIZE)
    size = 2 * radius + 1
    return min(size, output_size if output_size % 2 else output_size - 1)


def to_gray_tensor(image) -> torch.Tensor:
    """A (1, H, W) float tensor in [0, 1] from a PIL image, a uint8/float tensor or a numpy array (gray or RGB)."""
    if isinstance(image, Image.Image):
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        image = image.convert("L")
        tensor = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).unsqueeze(0)
    elif isinstance(image, np.ndarray):
        tensor = torch.from_numpy(image.copy())
        tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        tensor = image.unsqueeze(0) if image.ndim == 2 else image
    else:
        raise TypeError(f"Unsupported image type {type(image).__name__}")
    tensor = tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float()
    if tensor.shape[0] == 3:
        tensor = TF.rgb_to_grayscale(tensor)
    elif tensor.shape[0] != 1:
        raise ValueError(f"Expected 1 or 3 channels, got an image of shape {tuple(tensor.shape)}")
    return tensor


def apply_augmentation(
    image: torch.Tensor, params: AugmentationParams, output_size: int, max_sigma: float = 3.0
) -> torch.Tensor:
    """Applies `params` to a (C, H, W) float image in [0, 1]; returns a (C, output_size, output_size) image in [0, 1]."""
    top, left, height, width = params.crop
    view = TF.resized_crop(
        image, top, left, height, width, [output_size, output_size], interpolation=InterpolationMode.BILINEAR,
        antialias=True,
    )
    if params.flip:
        view = TF.horizontal_flip(view)
    view = TF.affine(
        view,
        angle=params.angle,
        translate=[round(params.translate[0] * output_size), round(params.translate[1] * output_size)],
        scale=params.scale,
        shear=[0.0, 0.0],
        interpolation=InterpolationMode.BILINEAR,
        fill=0.0,
    )
    view = (view * params.brightness).clamp(0.0, 1.0)
    mean = view.mean(dim=(-3, -2, -1), keepdim=True)
    view = ((view - mean) * params.contrast + mean).clamp(0.0, 1.0)
    sigma = params.sigma * output_size / PAPER_VIEW_SIZE
    kernel = blur_kernel_size(output_size, max_sigma)
    return TF.gaussian_blur(view, kernel_size=[kernel, kernel], sigma=[sigma, sigma])


def normalise(gray: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Replicates a (1, H, W) view to 3 channels and applies per-channel mean/std."""
    rgb = gray.expand(3, -1, -1)
    mean_t = torch.tensor(mean, dtype=rgb.dtype).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=rgb.dtype).view(3, 1, 1)
    return (rgb - mean_t) / std_t


class ConvirtTrainTransform:
    """
    The paper's random training view of a radiograph, as a normalised (3, S, S) float tensor.

    Args:
        output_size (`int`, defaults to 224): side S of the view.
        ranges ([`AugmentationRanges`]): parameter ranges (the paper's by default).
    """

    def __init__(self, output_size: int = PAPER_VIEW_SIZE, ranges: AugmentationRanges = AugmentationRanges(),
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.output_size = output_size
        self.ranges = ranges
        self.mean, self.std = mean, std

    def __call__(self, image, generator: torch.Generator | None = None) -> torch.Tensor:
        gray = to_gray_tensor(image)
        params = sample_augmentation_params(gray.shape[-2], gray.shape[-1], generator, self.ranges)
        view = apply_augmentation(gray, params, self.output_size, self.ranges.blur_sigma[1])
        return normalise(view, self.mean, self.std)


class ConvirtEvalTransform:
    """
    The deterministic evaluation view, as a normalised (3, crop, crop) float tensor.

    Args:
        resize (`int`, defaults to 256): `"resize_crop"` resizes the short side to this (bicubic), then centre-crops.
        crop (`int`, defaults to 224): output side.
        mode (`str`, defaults to `"resize_crop"`): `"resize_crop"` matches [`ConvirtProcessor`] (retrieval and
            feature extraction); `"pad_square"` zero-pads to a square and resizes to `crop` (the paper's
            classification protocol: nothing is cut off).
    """

    def __init__(self, resize: int = 256, crop: int = PAPER_VIEW_SIZE, mode: str = "resize_crop",
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        if mode not in ("resize_crop", "pad_square"):
            raise ValueError(f"mode must be 'resize_crop' or 'pad_square', got {mode!r}")
        self.resize, self.crop, self.mode = resize, crop, mode
        self.mean, self.std = mean, std

    def __call__(self, image, generator: torch.Generator | None = None) -> torch.Tensor:
        gray = to_gray_tensor(image)
        height, width = gray.shape[-2:]
        if self.mode == "pad_square":
            side = max(height, width)
            top, left = (side - height) // 2, (side - width) // 2
            gray = TF.pad(gray, [left, top, side - width - left, side - height - top], fill=0.0)
            view = TF.resize(gray, [self.crop, self.crop], interpolation=InterpolationMode.BICUBIC, antialias=True)
        else:
            short, long = min(height, width), max(height, width)
            new_short, new_long = self.resize, int(self.resize * long / short)
            size = [new_short, new_long] if height <= width else [new_long, new_short]
            view = TF.resize(gray, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
            # floor, as the image processor does (torchvision's center_crop rounds: a one-pixel shift)
            top, left = (view.shape[-2] - self.crop) // 2, (view.shape[-1] - self.crop) // 2
            view = TF.crop(view, top, left, self.crop, self.crop)
        return normalise(view.clamp(0.0, 1.0), self.mean, self.std)
