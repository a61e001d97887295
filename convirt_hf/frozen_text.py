"""Features of a frozen text tower, computed once per sentence and reused for the rest of training.

When neither the embeddings nor any layer of the text tower trains, and the frozen parts run without dropout (they
do: `ConvirtModel.train` keeps them in eval mode), the tower is a fixed function of the token ids. Its pooled output
for a sentence is then the same at every step, so computing it once and reusing it is exact, not an approximation,
and the text tower drops out of the training step's cost: report corpora repeat their sentences heavily ("No
pneumothorax."), and the synthetic corpus's 18,000 sentences are 370 distinct ones.

Each new sentence is encoded alone and unpadded, so its features never depend on which batch first brought it: a run
resumed from a checkpoint, which starts with an empty cache, computes bitwise the same features.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

__all__ = ["FrozenTextFeatures"]


class FrozenTextFeatures:
    """
    A cache of the pooled text features h_u of a [`ConvirtModel`] whose text tower is frozen
    (`config.text_tower_frozen`), keyed by the sentence's token ids. Pass the result to the model as
    `text_pooler_output`.

    Args:
        model ([`ConvirtModel`]): the (unwrapped) model whose frozen text tower encodes the sentences.
        max_entries (`int`, *optional*, defaults to 1,000,000): sentences kept; beyond it new sentences are encoded
            at every use (a million 768-wide features take 3 GB).

    Example:

    ```python
    >>> features = FrozenTextFeatures(model)
    >>> outputs = model(pixel_values=batch["pixel_values"],
    ...                 text_pooler_output=features(batch["input_ids"], batch["attention_mask"]))
    ```
    """

    def __init__(self, model, max_entries: int = 1_000_000):
        if not model.config.text_tower_frozen:
            raise ValueError("FrozenTextFeatures needs a fully frozen text tower (freeze_text_embeddings=True and "
                             'frozen_text_layers="all"): a trained layer changes its features at every step')
        self.model = model
        self.max_entries = max_entries
        self.features: dict[tuple[int, ...], torch.Tensor] = {}
        self.hits = self.misses = 0
        self._warned_full = False

    def __len__(self) -> int:
        return len(self.features)

    @torch.no_grad()
    def _encode(self, token_ids: tuple[int, ...], device: torch.device) -> torch.Tensor:
        input_ids = torch.tensor([token_ids], device=device)
        return self.model.encode_text(input_ids, torch.ones_like(input_ids))[0].float()

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The pooled features `(batch_size, text_hidden_size)` of a tokenised batch (right- or left-padded)."""
        device = input_ids.device
        keys = [tuple(ids[mask.bool()].tolist()) for ids, mask in zip(input_ids.cpu(), attention_mask.cpu())]
        rows = []
        for key in keys:
            cached = self.features.get(key)
            if cached is None:
                self.misses += 1
                cached = self._encode(key, device)
                if len(self.features) < self.max_entries:
                    self.features[key] = cached
                elif not self._warned_full:
                    self._warned_full = True
                    logger.warning("frozen text features: %d sentences cached (max_entries); new sentences are "
                                   "encoded at every use from now on", self.max_entries)
            else:
                self.hits += 1
            rows.append(cached)
        return torch.stack(rows)
