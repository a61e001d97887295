"""Batching image views and report text for [`ConvirtModel`].

Two pieces:

- [`PairTransform`] turns rows of the shared record shape (``image``, ``sentences``, ``text``) into training
  examples (``pixel_values`` and one ``sentence``). It is made for ``datasets.Dataset.set_transform``, so views and
  sentences are drawn afresh every time a row is read.
- [`ConvirtCollator`] stacks the views and tokenises the sentences of a list of examples with dynamic padding (to
  the longest sentence in the batch, capped at ``max_length``), which is much cheaper than padding every sentence
  to 128 tokens: most report sentences are 5-20 tokens long. With ``raw_images=True`` it batches decoded,
  unaugmented images of any size instead (zero-padded, with their true sizes), for
  [`~convirt_hf.data.gpu_augment.BatchedAugmentation`] to make the views on the training device.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .gpu_augment import params_from_list
from .pairs import check_text_mode, pair_text

logger = logging.getLogger(__name__)

__all__ = ["ConvirtCollator", "PairTransform"]


class ConvirtCollator:
    """
    Stacks `pixel_values` and tokenises the texts of a list of examples, padding to the longest text in the batch.

    Args:
        tokenizer ([`PreTrainedTokenizerBase`]): the text tower's tokenizer.
        max_length (`int`, *optional*, defaults to 128): texts are truncated to this many tokens (special tokens
            included); `None` uses the tokenizer's `model_max_length`.
        pad_to_multiple_of (`int`, *optional*): pad lengths up to a multiple of this (tensor-core friendly shapes on
            GPUs). Must divide `max_length`, so padding never goes past it.
        text_field (`str`, defaults to `"sentence"`): the key of the text in each example.
        return_token_type_ids (`bool`, defaults to `False`): also return `token_type_ids` (all zeros for single
            sentences; [`ConvirtModel`] does not need them).
        raw_images (`bool`, defaults to `False`): the examples' `pixel_values` are decoded, unaugmented images
            (`(C, H, W)`, C = 1 or 3, `uint8` or float in [0, 1], e.g. from
            [`~convirt_hf.data.gpu_augment.DecodedImage`]) of any size. They are zero-padded at the bottom and right
            to the batch's largest height and width into one `(N, C, H, W)` tensor (`uint8` when every image is
            `uint8`, else float32 in [0, 1]; C = 3 if any image has three channels, one-channel images then
            replicated), and `sizes`, an `(N, 2)` int64 tensor, holds each image's true `(height, width)`: what
            [`~convirt_hf.data.gpu_augment.BatchedAugmentation`] takes to augment the batch on the device. Examples
            that carry their own draw under `augmentation` (an `AugmentationParams`) give the batch an
            `augmentation` [`~convirt_hf.data.gpu_augment.BatchParams`].

    Each example is a mapping with `pixel_values` (a `(3, S, S)` tensor) and/or the text under `text_field`; every
    example of a batch must have the same keys. Returns a dict with `pixel_values` `(N, 3, S, S)` float, `input_ids`
    and `attention_mask` `(N, L)` (L = the longest text, at most `max_length`), and `id` (a list) when the examples
    carry ids.

    Example:

    ```python
    >>> collator = ConvirtCollator(tokenizer, max_length=64)
    >>> batch = collator([{"pixel_values": view, "sentence": "No pleural effusion."} for view in views])
    >>> model(**batch, return_loss=True).loss
    ```
    """

    def __init__(
        self,
        tokenizer,
        max_length: int | None = 128,
        pad_to_multiple_of: int | None = None,
        text_field: str = "sentence",
        return_token_type_ids: bool = False,
        raw_images: bool = False,
    ):
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        if pad_to_multiple_of is not None:
            if pad_to_multiple_of < 1:
                raise ValueError(f"pad_to_multiple_of must be positive, got {pad_to_multiple_of}")
            if max_length is not None and max_length % pad_to_multiple_of:
                raise ValueError(
                    f"max_length ({max_length}) must be a multiple of pad_to_multiple_of ({pad_to_multiple_of}), "
                    "or padding would make batches longer than max_length"
                )
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.text_field = text_field
        self.return_token_type_ids = return_token_type_ids
        self.raw_images = bool(raw_images)

    def _all_or_none(self, examples: Sequence[Mapping], key: str) -> bool:
        present = [key in example and example[key] is not None for example in examples]
        if any(present) and not all(present):
            missing = [index for index, has in enumerate(present) if not has]
            raise ValueError(f"examples {missing[:5]} of the batch have no {key!r} while others do")
        return all(present)

    def _stack_images(self, examples: Sequence[Mapping]) -> torch.Tensor:
        views = [torch.as_tensor(example["pixel_values"]) for example in examples]
        shapes = {tuple(view.shape) for view in views}
        if len(shapes) > 1:
            raise ValueError(f"pixel_values of one batch must share a shape, got {sorted(shapes)}")
        return torch.stack(views).to(torch.float32)

    @staticmethod
    def _pad_images(examples: Sequence[Mapping]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw images of any size zero-padded (bottom, right) into one batch, and their true (height, width)."""
        images = [torch.as_tensor(example["pixel_values"]) for example in examples]
        for index, image in enumerate(images):
            if image.ndim != 3 or image.shape[0] not in (1, 3) or image.shape[1] < 1 or image.shape[2] < 1:
                raise ValueError(f"example {index}: raw pixel_values must be a (C, H, W) image with C = 1 or 3, got "
                                 f"shape {tuple(image.shape)}")
            if image.dtype != torch.uint8 and not image.is_floating_point():
                raise TypeError(f"example {index}: raw pixel_values must be uint8 or float, got {image.dtype}")
        as_float = any(image.is_floating_point() for image in images)
        channels = max(image.shape[0] for image in images)
        height, width = max(image.shape[1] for image in images), max(image.shape[2] for image in images)
        batch = torch.zeros((len(images), channels, height, width), dtype=torch.float32 if as_float else torch.uint8)
        sizes = torch.tensor([list(image.shape[1:]) for image in images], dtype=torch.int64)
        for index, image in enumerate(images):
            if as_float and image.dtype == torch.uint8:
                image = image.to(torch.float32) / 255.0
            batch[index, :, : image.shape[1], : image.shape[2]] = image  # one channel broadcasts to three
        return batch, sizes

    def _tokenize(self, examples: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        texts = [example[self.text_field] for example in examples]
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"example {index}: {self.text_field!r} must be a string, got {type(text).__name__}")
        tokens = self.tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            pad_to_multiple_of=self.pad_to_multiple_of,
            return_attention_mask=True,
            return_token_type_ids=self.return_token_type_ids,
            return_tensors="pt",
        )
        keys = ("input_ids", "attention_mask") + (("token_type_ids",) if self.return_token_type_ids else ())
        return {key: tokens[key] for key in keys}

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if len(examples) == 0:
            raise ValueError("cannot collate an empty batch")
        has_images = self._all_or_none(examples, "pixel_values")
        has_text = self._all_or_none(examples, self.text_field)
        if not has_images and not has_text:
            raise ValueError(f"examples have neither 'pixel_values' nor {self.text_field!r}")
        batch: dict[str, Any] = {}
        if has_images and self.raw_images:
            batch["pixel_values"], batch["sizes"] = self._pad_images(examples)
        elif has_images:
            batch["pixel_values"] = self._stack_images(examples)
        if has_text:
            batch.update(self._tokenize(examples))
        if self.raw_images and all("augmentation" in example for example in examples):
            # each image's own draw (PairViews with DecodedImage(sampler=...)): applied on the training device
            batch["augmentation"] = params_from_list([example["augmentation"] for example in examples])
        if all("id" in example for example in examples):
            batch["id"] = [example["id"] for example in examples]
        return batch


def _accepts_generator(transform: Callable) -> bool:
    try:
        parameters = inspect.signature(transform).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "generator" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


class PairTransform:
    """
    Turns a batch of records (the shared record shape) into training examples, for `datasets.Dataset.set_transform`.

    Each row gets a view of its image from `image_transform` and one sentence drawn uniformly from its `sentences`
    (the paper's t_u), or its whole `text` in whole-report mode. Rows with an empty `sentences` list fall back to
    `text`. Every read of a row draws anew, so each epoch sees new views and sentences.

    The draws follow the order in which rows are read, so they are reproducible for one read order only. The
    training script uses [`~convirt_hf.data.pairs.PairViews`] instead, whose draws depend only on (seed, epoch,
    row), so that a run resumed mid-epoch sees exactly the views an uninterrupted one would.

    Args:
        image_transform (`Callable`): e.g. [`ConvirtTrainTransform`]; called as `image_transform(image,
            generator=torch.Generator)` when it takes a `generator` argument, else `image_transform(image)`.
        text_mode (`str`, defaults to `"sentence"`): `"sentence"` (sample one sentence) or `"whole"` (the whole
            `text`; `"report"` is accepted as a synonym, as the training script calls it).
        seed (`int`, *optional*): seeds the draws. In DataLoader worker processes the generator is re-seeded from
            `(seed, worker seed)` on first use: forked workers would otherwise copy one generator and draw the same
            views, and torch gives each worker a new seed every epoch (derived from the main process's seed), so
            runs stay reproducible. Without a seed the main process draws from fresh OS entropy.
        image_column (`str`, defaults to `"image"`), sentences_column (`str`, defaults to `"sentences"`),
        text_column (`str`, defaults to `"text"`): column names.

    Returns (when called) a dict of lists: `pixel_values`, `sentence`, and `id` when the batch has ids, ready for
    [`ConvirtCollator`].

    Example:

    ```python
    >>> records.set_transform(PairTransform(ConvirtTrainTransform(output_size=224), seed=0))
    >>> loader = DataLoader(records, batch_size=32, collate_fn=ConvirtCollator(tokenizer), drop_last=True)
    ```
    """

    def __init__(
        self,
        image_transform: Callable,
        text_mode: str = "sentence",
        seed: int | None = None,
        image_column: str = "image",
        sentences_column: str = "sentences",
        text_column: str = "text",
    ):
        check_text_mode(text_mode)
        self.image_transform = image_transform
        self.text_mode = "whole" if text_mode == "report" else text_mode
        self.seed = seed
        self.image_column = image_column
        self.sentences_column = sentences_column
        self.text_column = text_column
        self._pass_generator = _accepts_generator(image_transform)
        self._rng: np.random.Generator | None = None
        self._rng_owner: tuple[int, int] | None = None

    def _generator(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        owner = None if info is None else (info.id, info.seed)
        if self._rng is None or owner != self._rng_owner:
            entropy = [] if self.seed is None else [int(self.seed)]
            if info is not None:
                entropy.append(int(info.seed))
            self._rng = np.random.default_rng(entropy or None)
            self._rng_owner = owner
        return self._rng

    def _text(self, index: int, batch: Mapping[str, Sequence], rng: np.random.Generator) -> str:
        sentences = batch[self.sentences_column][index] if self.sentences_column in batch else None
        text = batch[self.text_column][index] if self.text_column in batch else None
        return pair_text(sentences, text, self.text_mode, rng)

    def __call__(self, batch: Mapping[str, Sequence]) -> dict[str, list]:
        if self.image_column not in batch:
            raise KeyError(f"the batch has no {self.image_column!r} column (columns: {sorted(batch)})")
        rng = self._generator()
        pixel_values, sentences = [], []
        for index, image in enumerate(batch[self.image_column]):
            if image is None:
                row = batch["id"][index] if "id" in batch else index
                raise ValueError(f"row {row} has no image")
            # one seed per row from the numpy stream: a row's view does not depend on how many draws the
            # previous rows' crops took
            seed = int(rng.integers(0, 2**63 - 1))
            if self._pass_generator:
                view = self.image_transform(image, generator=torch.Generator().manual_seed(seed))
            else:
                view = self.image_transform(image)
            pixel_values.append(view)
            sentences.append(self._text(index, batch, rng))
        output = {"pixel_values": pixel_values, "sentence": sentences}
        if "id" in batch:
            output["id"] = list(batch["id"])
        return output
