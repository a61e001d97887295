"""Image views: the paper's five training augmentations and the deterministic evaluation views.

Training view (Zhang et al., Appendix A), in this order:

1. random crop of 60-100% of the image area, aspect ratio 3/4-4/3 (torchvision's ``RandomResizedCrop`` rule),
   resized to the output size;
2. horizontal flip with probability 0.5;
3. affine transform: rotation in [-20, 20] degrees, translation up to 10% of each side, scale in [0.95, 1.05];
4. colour jitter: brightness factor, then contrast factor, both in [0.6, 1.4] (torchvision's ``adjust_brightness``
   and ``adjust_contrast``; the order is fixed where ``ColorJitter`` shuffles it, so one draw of parameters means
   one image);
5. Gaussian blur with sigma in [0.1, 3.0].

The paper lists "resize to 224" last; the crop is resized to the output size at step 1 instead (as
``RandomResizedCrop`` does), so steps 2-5 run on the small view. With the paper's inputs (256 pixels on the long
side) a pixel of the view is about a pixel of the input, so nothing changes but the cost.

Sampling and application are separate: :func:`sample_augmentation_params` draws an :class:`AugmentationParams` from
:class:`AugmentationRanges` with a ``torch.Generator``, and :func:`apply_augmentation` applies one draw. A batched GPU
path can reuse the sampler and be checked against this CPU path draw for draw.

Units:

- ``translate`` is in pixels of the view the affine acts on (``AugmentationParams.view_size``, the output size the
  draw was made for); applied at another size it is rescaled.
- ``sigma`` is in pixels of a 224-pixel view, the paper's size: at output size S the blur uses ``sigma * S / 224``
  pixels, so a 64-pixel demo view is blurred as much, relative to its content, as the paper's 224-pixel view (an
  unscaled sigma of 3 would wipe out a 64-pixel image's detail). The kernel covers +-3 sigma (99.7% of the
  Gaussian's mass): 19 taps for sigma 3.0 at 224, 7 at 64 (:func:`blur_kernel_size`). The blur is torchvision's
  kernel and padding computed as two 1-D passes (:func:`gaussian_blur`), about ten times faster than the 2-D
  convolution of ``TF.gaussian_blur``.
- ``angle`` follows torchvision's ``affine`` (clockwise); the range is symmetric, so the sign convention does not
  change the distribution.

Grayscale images stay one channel through the augmentations (a third of the work) and are replicated to three
channels at the end, as ImageNet-initialised towers expect; RGB images stay RGB. Views are normalised with the
ImageNet mean and standard deviation (timm's ``IMAGENET_DEFAULT_MEAN``/``IMAGENET_DEFAULT_STD``).

Evaluation views (:class:`ConvirtEvalTransform`): ``"resize_crop"`` resizes the short side (bicubic) and centre-crops,
exactly like the project's image processor (``CLIPImageProcessor``, torchvision backend); ``"pad_square"`` zero-pads
to a square and resizes, the paper's classification protocol, so nothing at the edges is cut off.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

__all__ = [
    "AUGMENTATION_PRESETS",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "AugmentationParams",
    "AugmentationRanges",
    "ConvirtEvalTransform",
    "ConvirtTrainTransform",
    "apply_augmentation",
    "default_eval_resize",
    "blur_kernel_size",
    "gaussian_blur",
    "normalize_view",
    "sample_augmentation_params",
    "sample_crop",
    "to_image_tensor",
]

# timm.data.IMAGENET_DEFAULT_MEAN / IMAGENET_DEFAULT_STD (copied so that importing the data code does not import timm)
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
PAPER_VIEW_SIZE = 224
BLUR_TRUNCATE = 3.0  # blur kernel radius, in sigmas
EVAL_MODES = ("resize_crop", "pad_square")


def _check_range(name: str, values, low: float | None = None, high: float | None = None) -> None:
    if len(values) != 2 or values[0] > values[1]:
        raise ValueError(f"AugmentationRanges.{name} must be a (low, high) pair with low <= high, got {values}")
    if (low is not None and values[0] < low) or (high is not None and values[1] > high):
        raise ValueError(f"AugmentationRanges.{name} must lie within [{low}, {high}], got {values}")


@dataclass(frozen=True)
class AugmentationRanges:
    """
    The ranges the training augmentations are drawn from; the defaults are the paper's (Appendix A).

    Args:
        crop_scale (`tuple[float, float]`, defaults to `(0.6, 1.0)`): fraction of the image area the crop covers.
        crop_ratio (`tuple[float, float]`, defaults to `(3/4, 4/3)`): crop aspect ratio (width / height), drawn
            log-uniformly as in torchvision's `RandomResizedCrop`.
        flip_probability (`float`, defaults to 0.5): probability of a horizontal flip.
        rotation (`tuple[float, float]`, defaults to `(-20.0, 20.0)`): rotation angle in degrees.
        translate (`tuple[float, float]`, defaults to `(0.1, 0.1)`): largest shift as a fraction of the view's
            width and height (torchvision's `RandomAffine(translate=...)`).
        scale (`tuple[float, float]`, defaults to `(0.95, 1.05)`): affine zoom factor.
        brightness (`tuple[float, float]`, defaults to `(0.6, 1.4)`): brightness factor.
        contrast (`tuple[float, float]`, defaults to `(0.6, 1.4)`): contrast factor.
        blur_sigma (`tuple[float, float]`, defaults to `(0.1, 3.0)`): Gaussian blur sigma, in pixels of a
            224-pixel view (see the module docstring).
    """

    crop_scale: tuple[float, float] = (0.6, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_probability: float = 0.5
    rotation: tuple[float, float] = (-20.0, 20.0)
    translate: tuple[float, float] = (0.1, 0.1)
    scale: tuple[float, float] = (0.95, 1.05)
    brightness: tuple[float, float] = (0.6, 1.4)
    contrast: tuple[float, float] = (0.6, 1.4)
    blur_sigma: tuple[float, float] = (0.1, 3.0)

    def __post_init__(self):
        _check_range("crop_scale", self.crop_scale, 0.0, 1.0)
        if self.crop_scale[0] <= 0:
            raise ValueError(f"AugmentationRanges.crop_scale must be positive, got {self.crop_scale}")
        _check_range("crop_ratio", self.crop_ratio, 1e-6)
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError(f"AugmentationRanges.flip_probability must be in [0, 1], got {self.flip_probability}")
        _check_range("rotation", self.rotation, -180.0, 180.0)
        if len(self.translate) != 2 or not all(0.0 <= value <= 1.0 for value in self.translate):
            raise ValueError(f"AugmentationRanges.translate must be two fractions in [0, 1], got {self.translate}")
        _check_range("scale", self.scale, 1e-6)
        _check_range("brightness", self.brightness, 0.0)
        _check_range("contrast", self.contrast, 0.0)
        _check_range("blur_sigma", self.blur_sigma, 1e-6)


AUGMENTATION_PRESETS: dict[str, AugmentationRanges] = {
    "paper": AugmentationRanges(),
    # For small from-scratch CPU runs on the synthetic corpus: at 64 px the paper's ranges (+-40% brightness and
    # contrast, crops down to 60% of the area) slow feature learning from scratch about threefold (measured: a
    # supervised ResNet-18 reaches 36% accuracy after 92 steps with them, 95% without).
    "light": AugmentationRanges(
        crop_scale=(0.8, 1.0), rotation=(-10.0, 10.0), translate=(0.05, 0.05), brightness=(0.8, 1.2),
        contrast=(0.8, 1.2), blur_sigma=(0.1, 1.0),
    ),
}


@dataclass(frozen=True)
class AugmentationParams:
    """
    One draw of the training augmentation for one image.

    Args:
        crop (`tuple[int, int, int, int]`): `(top, left, height, width)` of the crop box, in input pixels.
        flip (`bool`): whether the view is flipped horizontally.
        angle (`float`): rotation in degrees (clockwise, as torchvision's `affine`; the range is symmetric).
        translate (`tuple[float, float]`): `(tx, ty)` shift in pixels of a `view_size` view.
        scale (`float`): affine zoom factor.
        brightness (`float`): brightness factor.
        contrast (`float`): contrast factor.
        sigma (`float`): Gaussian blur sigma in pixels of a 224-pixel view.
        view_size (`int`, *optional*): the output size the draw was made for (the unit of `translate`); `None`
            means whatever size it is applied at.
    """

    crop: tuple[int, int, int, int]
    flip: bool
    angle: float
    translate: tuple[float, float]
    scale: float
    brightness: float
    contrast: float
    sigma: float
    view_size: int | None = None

    def as_dict(self) -> dict:
        return {field.name: getattr(self, field.name) for field in fields(self)}

    def replace(self, **changes) -> AugmentationParams:
        """A copy with some fields changed (e.g. `params.replace(flip=False)`)."""
        return replace(self, **changes)


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    device = generator.device if generator is not None else "cpu"
    return low + (high - low) * torch.rand((), generator=generator, device=device, dtype=torch.float64).item()


def _randint(generator: torch.Generator | None, high: int) -> int:
    """An integer in [0, high)."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, high, (1,), generator=generator, device=device).item())


def sample_crop(
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    scale: tuple[float, float] = (0.6, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """
    A random crop box `(top, left, height, width)` by torchvision's `RandomResizedCrop` rule: up to 10 tries of an
    area fraction (uniform in `scale`) and an aspect ratio (log-uniform in `ratio`) that fit the image, else the
    largest centred crop whose aspect ratio is within `ratio`.
    """
    if height < 1 or width < 1:
        raise ValueError(f"cannot crop an image of {height} x {width} pixels")
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(generator, *scale)
        aspect = math.exp(_uniform(generator, *log_ratio))
        crop_width = int(round(math.sqrt(target_area * aspect)))
        crop_height = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = _randint(generator, height - crop_height + 1)
            left = _randint(generator, width - crop_width + 1)
            return top, left, crop_height, crop_width
    in_ratio = width / height
    if in_ratio < ratio[0]:
        crop_width, crop_height = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        crop_height, crop_width = height, int(round(height * ratio[1]))
    else:
        crop_width, crop_height = width, height
    crop_height, crop_width = max(1, min(crop_height, height)), max(1, min(crop_width, width))
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


def sample_augmentation_params(
    height: int,
    width: int,
    rng: torch.Generator | None = None,
    ranges: AugmentationRanges = AugmentationRanges(),
    output_size: int = PAPER_VIEW_SIZE,
) -> AugmentationParams:
    """
    Draws the augmentation of one image.

    Args:
        height (`int`), width (`int`): size of the input image in pixels.
        rng (`torch.Generator`, *optional*): the source of randomness (torch's global generator when `None`).
            Draws are consumed in a fixed order (crop, flip, angle, tx, ty, scale, brightness, contrast, sigma), so
            a seeded generator gives the same parameters on every machine.
        ranges ([`AugmentationRanges`], *optional*): the ranges (the paper's by default).
        output_size (`int`, defaults to 224): side of the view the parameters are for; `translate` is in its pixels.

    Returns:
        [`AugmentationParams`]
    """
    crop = sample_crop(height, width, rng, ranges.crop_scale, ranges.crop_ratio)
    flip = _uniform(rng, 0.0, 1.0) < ranges.flip_probability
    angle = _uniform(rng, *ranges.rotation)
    max_dx, max_dy = ranges.translate[0] * output_size, ranges.translate[1] * output_size
    translate = (_uniform(rng, -max_dx, max_dx), _uniform(rng, -max_dy, max_dy))
    return AugmentationParams(
        crop=crop,
        flip=bool(flip),
        angle=angle,
        translate=translate,
        scale=_uniform(rng, *ranges.scale),
        brightness=_uniform(rng, *ranges.brightness),
        contrast=_uniform(rng, *ranges.contrast),
        sigma=_uniform(rng, *ranges.blur_sigma),
        view_size=output_size,
    )


def blur_kernel_size(output_size: int, sigma: float = 3.0, reference_size: int = PAPER_VIEW_SIZE) -> int:
    """
    The odd Gaussian kernel size covering +-3 sigma for `sigma` (in pixels of a `reference_size` view) at
    `output_size`, capped at the view size: 19 for sigma 3.0 at 224, 7 at 64. Pass the largest sigma of a range
    for one kernel size that serves a whole batch.
    """
    radius = max(1, math.ceil(BLUR_TRUNCATE * sigma * output_size / reference_size))
    largest = output_size if output_size % 2 else output_size - 1
    return max(1, min(2 * radius + 1, largest))


def _as_float(image: torch.Tensor) -> torch.Tensor:
    if image.dtype == torch.uint8:
        return image.to(torch.float32) / 255.0
    if not image.is_floating_point():
        raise TypeError(f"expected a uint8 or float image, got {image.dtype}")
    return image.to(torch.float32)


def apply_augmentation(image: torch.Tensor, params: AugmentationParams, output_size: int) -> torch.Tensor:
    """
    Applies one draw of the training augmentation.

    Args:
        image (`torch.Tensor`): a `(C, H, W)` image, `uint8` or float in [0, 1] (any number of channels).
        params ([`AugmentationParams`]): the draw, e.g. from [`sample_augmentation_params`].
        output_size (`int`): side S of the view.

    Returns:
        `torch.Tensor`: a `(C, S, S)` float32 view with values in [0, 1] (not normalised).
    """
    if image.ndim != 3:
        raise ValueError(f"expected a (C, H, W) image, got shape {tuple(image.shape)}")
    top, left, height, width = params.crop
    fits = 0 <= top and 0 <= left and height >= 1 and width >= 1
    if not fits or top + height > image.shape[-2] or left + width > image.shape[-1]:
        raise ValueError(f"crop box {params.crop} does not fit an image of shape {tuple(image.shape)}")
    # crop before converting to float: only the pixels that are kept are converted
    view = _as_float(image[:, top : top + height, left : left + width])
    view = TF.resize(view, [output_size, output_size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    if params.flip:
        view = TF.horizontal_flip(view)
    unit = output_size / (params.view_size or output_size)
    view = TF.affine(
        view,
        angle=float(params.angle),
        translate=[float(params.translate[0]) * unit, float(params.translate[1]) * unit],
        scale=float(params.scale),
        shear=[0.0, 0.0],
        # bilinear rather than RandomAffine's default nearest: nearest makes jagged edges at every rotation
        interpolation=InterpolationMode.BILINEAR,
        fill=0.0,
    )
    view = TF.adjust_brightness(view, float(params.brightness))
    view = TF.adjust_contrast(view, float(params.contrast))
    sigma = float(params.sigma) * output_size / PAPER_VIEW_SIZE
    kernel = blur_kernel_size(output_size, float(params.sigma))
    view = gaussian_blur(view, kernel, sigma)
    return view.clamp_(0.0, 1.0)


def gaussian_blur(image: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """
    torchvision's `gaussian_blur` (same kernel, same reflect padding) computed as two 1-D convolutions: the same
    result to float precision, about ten times faster for the 19-tap kernel of sigma 3 at 224 pixels.

    Args:
        image (`torch.Tensor`): a `(C, H, W)` or `(N, C, H, W)` float image.
        kernel_size (`int`): odd kernel size.
        sigma (`float`): standard deviation in pixels.
    """
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    if kernel_size == 1:
        return image.clone()
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size, dtype=torch.float32, device=image.device)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    kernel = (pdf / pdf.sum()).to(image.dtype)
    shape = image.shape
    flat = image.reshape(-1, 1, shape[-2], shape[-1])
    radius = kernel_size // 2
    flat = torch.nn.functional.pad(flat, [radius, radius, radius, radius], mode="reflect")
    flat = torch.nn.functional.conv2d(flat, kernel.view(1, 1, 1, kernel_size))
    flat = torch.nn.functional.conv2d(flat, kernel.view(1, 1, kernel_size, 1))
    return flat.reshape(shape)


def _collapse_gray(tensor: torch.Tensor) -> torch.Tensor:
    """An RGB image whose three channels are equal (a radiograph saved as RGB) is processed as one channel."""
    if tensor.shape[0] == 3 and torch.equal(tensor[0], tensor[1]) and torch.equal(tensor[0], tensor[2]):
        return tensor[:1]
    return tensor


def to_image_tensor(image) -> torch.Tensor:
    """
    Turns an image into a `(C, H, W)` tensor with C = 1 (grayscale) or 3 (RGB), `uint8` or float in [0, 1].

    Accepts PIL images in any mode, numpy arrays and tensors of shape `(H, W)`, `(H, W, C)` or `(C, H, W)`, and
    paths to image (or, with pydicom, DICOM) files. `uint8` data and float data in [0, 1] are kept as they are; other
    modes and dtypes (16-bit, alpha, palette, floats outside [0, 1]) go through the processor's conversion
    (`convirt_hf.modeling.processing_convirt.to_pil_rgb`: 16-bit scaled by the image's own range, alpha composited
    on black), so training and evaluation read images exactly as the processor does. RGB images with three equal
    channels come back as one channel.
    """
    if isinstance(image, Image.Image):
        if image.mode == "L":
            return torch.from_numpy(np.array(image, dtype=np.uint8))[None]
        if image.mode == "RGB":
            return _collapse_gray(torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous())
        return to_image_tensor(_processor_rgb(image))
    if isinstance(image, (str, os.PathLike)):
        return to_image_tensor(_processor_rgb(image))
    if isinstance(image, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(image))
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
    else:
        raise TypeError(f"unsupported image type {type(image).__name__}: pass a PIL image, array, tensor or path")
    if tensor.ndim == 3 and tensor.shape[-1] in (1, 3) and tensor.shape[0] not in (1, 3):
        tensor = tensor.permute(2, 0, 1)  # channels last
    if tensor.ndim == 2:
        tensor = tensor[None]
    usable = tensor.dtype == torch.uint8 or (
        tensor.is_floating_point() and tensor.numel() > 0 and tensor.min() >= 0.0 and tensor.max() <= 1.0
    )
    if tensor.ndim == 3 and tensor.shape[0] in (1, 3) and usable:
        return _collapse_gray(tensor.contiguous())
    return to_image_tensor(_processor_rgb(image))


def _processor_rgb(image) -> Image.Image:
    # imported here: the processor module pulls in transformers, which most callers of this module have already
    from convirt_hf.modeling.processing_convirt import to_pil_rgb

    return to_pil_rgb(image)


def _to_uint8(tensor: torch.Tensor) -> torch.Tensor:
    """Float [0, 1] to uint8 by rounding, as the processor's conversion does."""
    if tensor.dtype == torch.uint8:
        return tensor
    return (tensor * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def normalize_view(
    view: torch.Tensor, mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN, std: tuple[float, ...] = IMAGENET_DEFAULT_STD
) -> torch.Tensor:
    """Replicates a one-channel `(1, H, W)` view in [0, 1] to three channels and applies per-channel mean/std."""
    if view.shape[0] == 1:
        view = view.expand(3, -1, -1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return ((view.to(torch.float32) - mean_t) / std_t).contiguous()


class ConvirtTrainTransform:
    """
    The paper's random training view of an image, as a normalised `(3, S, S)` float tensor.

    Args:
        output_size (`int`, defaults to 224): side S of the view (small sizes such as 64 work).
        ranges ([`AugmentationRanges`], *optional*): augmentation ranges (the paper's by default; see
            `AUGMENTATION_PRESETS`).
        mean (`tuple[float, float, float]`), std (`tuple[float, float, float]`): normalisation (ImageNet's).

    Call it as `transform(image, generator=None)` with anything [`to_image_tensor`] accepts; a seeded
    `torch.Generator` makes the view reproducible.

    Example:

    ```python
    >>> import torch
    >>> from PIL import Image
    >>> view = ConvirtTrainTransform(output_size=64)(Image.new("L", (80, 100), 128), torch.Generator().manual_seed(0))
    >>> tuple(view.shape), view.dtype
    ((3, 64, 64), torch.float32)

    ```
    """

    def __init__(
        self,
        output_size: int = PAPER_VIEW_SIZE,
        ranges: AugmentationRanges = AugmentationRanges(),
        mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
        std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
    ):
        if output_size < 1:
            raise ValueError(f"output_size must be positive, got {output_size}")
        self.output_size = int(output_size)
        self.ranges = ranges
        self.mean, self.std = tuple(mean), tuple(std)

    def sample(self, height: int, width: int, generator: torch.Generator | None = None) -> AugmentationParams:
        """One draw of parameters for a `height` x `width` input."""
        return sample_augmentation_params(height, width, generator, self.ranges, output_size=self.output_size)

    def __call__(self, image, generator: torch.Generator | None = None) -> torch.Tensor:
        tensor = to_image_tensor(image)
        params = self.sample(tensor.shape[-2], tensor.shape[-1], generator)
        return normalize_view(apply_augmentation(tensor, params, self.output_size), self.mean, self.std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(output_size={self.output_size}, ranges={self.ranges})"


def default_eval_resize(crop: int) -> int:
    """The evaluation view's short side before its centre crop, when none is given: 8/7 of the crop (256 for 224)."""
    return round(crop * 8 / 7)


class ConvirtEvalTransform:
    """
    The deterministic evaluation view of an image, as a normalised `(3, crop, crop)` float tensor.

    Args:
        resize (`int`, defaults to 256): in `"resize_crop"` mode, the short side is resized to this (bicubic).
        crop (`int`, defaults to 224): side of the output.
        mode (`str`, defaults to `"resize_crop"`):
            - `"resize_crop"`: resize the short side to `resize`, centre-crop `crop` (retrieval, feature
              extraction). Matches the project's processor (`CLIPImageProcessor` with `size={"shortest_edge":
              resize}`, `crop_size=crop`, bicubic, ImageNet mean/std, torchvision backend) to float precision: the
              image is resized as uint8 like the processor does, float inputs first rounded to uint8.
            - `"pad_square"`: zero-pad to a square (image centred), resize to `crop` x `crop` (the paper's
              classification protocol; `resize` is not used).
        mean (`tuple[float, float, float]`), std (`tuple[float, float, float]`): normalisation (ImageNet's).

    Call it as `transform(image)`; a `generator` argument is accepted and ignored, so train and eval transforms
    are interchangeable.
    """

    def __init__(
        self,
        resize: int = 256,
        crop: int = PAPER_VIEW_SIZE,
        mode: str = "resize_crop",
        mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
        std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
    ):
        if mode not in EVAL_MODES:
            raise ValueError(f"mode must be one of {EVAL_MODES}, got {mode!r}")
        if resize < 1 or crop < 1:
            raise ValueError(f"resize and crop must be positive, got resize={resize}, crop={crop}")
        self.resize, self.crop, self.mode = int(resize), int(crop), mode
        self.mean, self.std = tuple(mean), tuple(std)

    def _resize_crop(self, tensor: torch.Tensor) -> torch.Tensor:
        height, width = tensor.shape[-2:]
        # the processor's size rule (transformers' get_resize_output_image_size): the long side is truncated
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize, int(self.resize * long / short)
        size = [new_long, new_short] if width <= height else [new_short, new_long]
        view = TF.resize(tensor, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
        height, width = view.shape[-2:]
        if self.crop > height or self.crop > width:  # pad like the processor when the crop is larger
            pad_w, pad_h = max(self.crop - width, 0), max(self.crop - height, 0)
            view = TF.pad(view, [pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2], fill=0)
            height, width = view.shape[-2:]
        # int((H - crop) / 2), as the processor (torchvision's center_crop rounds instead: a one-pixel shift)
        top, left = int((height - self.crop) / 2.0), int((width - self.crop) / 2.0)
        return TF.crop(view, top, left, self.crop, self.crop)

    def _pad_square(self, tensor: torch.Tensor) -> torch.Tensor:
        height, width = tensor.shape[-2:]
        side = max(height, width)
        top, left = (side - height) // 2, (side - width) // 2
        tensor = TF.pad(tensor, [left, top, side - width - left, side - height - top], fill=0)
        return TF.resize(tensor, [self.crop, self.crop], interpolation=InterpolationMode.BICUBIC, antialias=True)

    def __call__(self, image, generator: torch.Generator | None = None) -> torch.Tensor:
        tensor = _to_uint8(to_image_tensor(image))
        view = self._resize_crop(tensor) if self.mode == "resize_crop" else self._pad_square(tensor)
        return normalize_view(view.to(torch.float32) / 255.0, self.mean, self.std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(resize={self.resize}, crop={self.crop}, mode={self.mode!r})"
