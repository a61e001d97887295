# Copyright 2026 The convirt-hf developers. Licensed under the Apache License, Version 2.0.
"""ConVIRT processor: radiograph-aware image preparation plus a BERT tokenizer.

This file is self-contained (numpy, PIL, torch, transformers) because it is copied next to the weights as remote code.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPImageProcessor, ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

IMAGENET_DEFAULT_MEAN = [0.485, 0.456, 0.406]
IMAGENET_DEFAULT_STD = [0.229, 0.224, 0.225]
DICOM_SUFFIXES = (".dcm", ".dicom")


def window_to_uint8(array: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Maps [low, high] (the array's own min/max by default) linearly to 0..255, clipping outside."""
    array = array.astype(np.float32)
    low = float(array.min()) if low is None else float(low)
    high = float(array.max()) if high is None else float(high)
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    scaled = (np.clip(array, low, high) - low) * (255.0 / (high - low))
    return np.round(scaled).astype(np.uint8)


def read_dicom(path: str | os.PathLike) -> Image.Image:
    """
    Reads a DICOM radiograph as 8-bit grayscale: modality rescale, the file's VOI window (or the pixel range),
    and inversion of MONOCHROME1 images so that bone is bright. Needs the optional `pydicom` package.
    """
    try:
        import pydicom
    except ImportError as error:
        raise ImportError(
            f"Reading {path} needs pydicom: pip install 'convirt-hf[dicom]' (or pip install pydicom)"
        ) from error
    dataset = pydicom.dcmread(str(path))
    pixels = dataset.pixel_array.astype(np.float32)
    if pixels.ndim == 3 and getattr(dataset, "SamplesPerPixel", 1) == 1:
        pixels = pixels[0]  # multi-frame file: a radiograph is its first frame
    slope, intercept = getattr(dataset, "RescaleSlope", 1), getattr(dataset, "RescaleIntercept", 0)
    pixels = pixels * float(slope or 1) + float(intercept or 0)
    low = high = None
    centre, width = getattr(dataset, "WindowCenter", None), getattr(dataset, "WindowWidth", None)
    if centre is not None and width is not None:
        centre = float(centre[0] if isinstance(centre, pydicom.multival.MultiValue) else centre)
        width = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        low, high = centre - width / 2.0, centre + width / 2.0
    image = window_to_uint8(pixels, low, high)
    if getattr(dataset, "PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        image = 255 - image
    return Image.fromarray(image, mode="L")


def to_pil_rgb(image) -> Image.Image:
    """
    Turns a radiograph in any common form into an 8-bit RGB PIL image (gray replicated to three channels):
    a PIL image in any mode (16-bit scaled by its own range, alpha dropped), a numpy array or torch tensor of shape
    (H, W), (H, W, C) or (C, H, W) (integers > 8 bits scaled by their range, floats in [0, 1] taken as intensities),
    or a path to an image or DICOM file.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if path.suffix.lower() in DICOM_SUFFIXES:
            return read_dicom(path).convert("RGB")
        with Image.open(path) as opened:
            opened.load()
            return to_pil_rgb(opened)
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return Image.fromarray(window_to_uint8(np.asarray(image)), mode="L").convert("RGB")
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (0, 0, 0, 255))
            return Image.alpha_composite(background, image).convert("RGB")
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = np.moveaxis(array, 0, -1)  # channels-first to channels-last
        if array.ndim == 3 and array.shape[-1] == 4:
            array = array[..., :3]
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
            raise ValueError(f"Cannot read an image from an array of shape {image.shape}")
        if array.dtype == np.uint8:
            pass
        elif np.issubdtype(array.dtype, np.floating) and array.size and array.min() >= 0.0 and array.max() <= 1.0:
            array = np.round(array * 255.0).astype(np.uint8)
        else:
            array = window_to_uint8(array)
        pil = Image.fromarray(array, mode="L" if array.ndim == 2 else "RGB")
        return pil.convert("RGB")
    raise TypeError(f"Unsupported image type {type(image).__name__}: pass a PIL image, numpy array, tensor or path")


def default_image_processor(image_size: int = 224, resize_size: int = 256) -> CLIPImageProcessor:
    """Resize the short side to `resize_size`, centre-crop `image_size`, ImageNet mean/std (the paper's eval view)."""
    return CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": resize_size},
        resample=Image.Resampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
        do_convert_rgb=True,
    )


class ConvirtProcessor(ProcessorMixin):
    r"""
    Prepares radiographs and report sentences for [`ConvirtModel`].

    Images (PIL in any mode, numpy arrays, tensors, image paths, or DICOM paths when pydicom is installed) are turned
    into 8-bit RGB (gray replicated, 16-bit windowed by the image's own range, MONOCHROME1 inverted), then resized
    and centre-cropped by the image processor (by default short side 256, crop 224, ImageNet mean/std). Text goes to
    the BERT tokenizer with padding and truncation.

    Args:
        image_processor ([`CLIPImageProcessor`]): the image processor.
        tokenizer ([`BertTokenizerFast`]): the tokenizer of the text tower.
    """

    attributes = ["image_processor", "tokenizer"]
    image_processor_class = "AutoImageProcessor"
    tokenizer_class = "AutoTokenizer"

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_tokenizer(
        cls, tokenizer, image_size: int = 224, resize_size: int = 256, **tokenizer_kwargs
    ) -> ConvirtProcessor:
        """Builds a processor from a tokenizer (or its name/path, e.g. the text tower's) and the default image
        processor."""
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer), **tokenizer_kwargs)
        return cls(image_processor=default_image_processor(image_size, resize_size), tokenizer=tokenizer)

    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        return_tensors: str | None = "pt",
        padding: bool | str = True,
        truncation: bool = True,
        max_length: int | None = 128,
        **kwargs,
    ) -> BatchFeature:
        r"""
        Args:
            images: one image or a list of images (see the class docstring for accepted forms).
            text (`str` or `list[str]`): report sentences.
            return_tensors (`str`, *optional*, defaults to `"pt"`): tensor type of the outputs.
            padding, truncation, max_length: passed to the tokenizer (dynamic padding to the longest, 128 tokens).

        Returns:
            [`BatchFeature`] with `pixel_values` and/or `input_ids`, `attention_mask` (and `token_type_ids`).
        """
        if images is None and text is None:
            raise ValueError("ConvirtProcessor needs images, text, or both")
        data = {}
        if text is not None:
            data.update(
                self.tokenizer(
                    text,
                    return_tensors=return_tensors,
                    padding=padding,
                    truncation=truncation,
                    max_length=max_length,
                    **kwargs,
                )
            )
        if images is not None:
            batch = images if isinstance(images, (list, tuple)) else [images]
            pixel_values = self.image_processor([to_pil_rgb(image) for image in batch], return_tensors=return_tensors)
            data["pixel_values"] = pixel_values["pixel_values"]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return list(dict.fromkeys(self.tokenizer.model_input_names + ["pixel_values"]))


__all__ = ["ConvirtProcessor"]
