"""Frozen-encoder feature extraction: one batched, no-grad pass over a record dataset."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from convirt_hf.modes import evaluating

logger = logging.getLogger(__name__)

__all__ = ["encode_splits", "extract_features"]


class _EvalViews(Dataset):
    """The deterministic view of each record's image (decoded in the loader's workers)."""

    def __init__(self, records, transform: Callable):
        self.records = records
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.records[index]["image"])


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    records,
    transform: Callable,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    description: str = "features",
    progress: bool = True,
) -> torch.Tensor:
    """
    Encodes every image of `records` once, in order, and returns a float32 `(N, num_features)` CPU tensor.

    Args:
        encoder (`nn.Module`): maps `pixel_values` to pooled features; put in eval mode for the pass (BatchNorm
            uses its running statistics) and restored afterwards.
        records: a `datasets.Dataset` (or any sequence of mappings) with an `image` column.
        transform (`Callable`): the evaluation view, e.g. [`ConvirtEvalTransform`].
        batch_size (`int`, defaults to 64), num_workers (`int`, defaults to 0): DataLoader settings.
        device: where to run the encoder (default: where its parameters are).
        description (`str`): the progress bar's label.
        progress (`bool`, defaults to `True`): show a progress bar.
    """
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    loader = DataLoader(_EvalViews(records, transform), batch_size=batch_size, num_workers=num_workers,
                        pin_memory=device.type == "cuda", shuffle=False)
    chunks = []
    with evaluating(encoder):
        for pixel_values in tqdm(loader, desc=description, disable=not progress, leave=False):
            chunks.append(encoder(pixel_values.to(device, non_blocking=True)).float().cpu())
    if not chunks:
        return torch.zeros(0, getattr(encoder, "num_features", 0))
    return torch.cat(chunks)


def encode_splits(
    encoder,
    splits: dict,
    eval_mode: str = "pad_square",
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    resize: int | None = None,
) -> dict[str, torch.Tensor]:
    """
    Features of every split (`{"train": records, ...}`) for an [`ImageEncoder`], at its own input size.

    `eval_mode` is the evaluation view (see [`ConvirtEvalTransform`]): `"pad_square"`, the paper's classification
    protocol (zero-pad to square, resize), or `"resize_crop"` (resize the short side to `resize`, by default 8/7 of
    the size, then centre crop).
    """
    from convirt_hf.data.transforms import ConvirtEvalTransform, default_eval_resize

    size = encoder.image_size
    transform = ConvirtEvalTransform(resize=resize or default_eval_resize(size), crop=size, mode=eval_mode)
    device = torch.device(device) if device is not None else torch.device("cpu")
    encoder.model.to(device)
    return {
        name: extract_features(encoder.model, records, transform, batch_size=batch_size, num_workers=num_workers,
                               device=device, description=f"{encoder.source} {name}", progress=progress)
        for name, records in splits.items()
    }
