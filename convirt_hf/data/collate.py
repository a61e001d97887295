"""Batching image views and report sentences for ConvirtModel."""

from __future__ import annotations

import torch


class ConvirtCollator:
    """
    Stacks `pixel_values` and tokenises the texts of a list of examples, padding to the longest text in the batch.

    Args:
        tokenizer: the text tower's tokenizer.
        max_length (`int`, defaults to 128): sentences are truncated to this many tokens.
        pad_to_multiple_of (`int`, *optional*): pad lengths to a multiple (tensor-core friendly shapes on GPUs).
        text_field (`str`, defaults to `"sentence"`): the key of the text in each example.

    Returns a dict with `pixel_values` (N, 3, S, S), `input_ids`, `attention_mask`, and `id` (a list) when the
    examples carry ids.
    """

    def __init__(self, tokenizer, max_length: int = 128, pad_to_multiple_of: int | None = None,
                 text_field: str = "sentence"):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.text_field = text_field

    def __call__(self, examples: list[dict]) -> dict:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        tokens = self.tokenizer(
            [example[self.text_field] for example in examples],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            pad_to_multiple_of=self.pad_to_multiple_of,
            return_token_type_ids=False,
            return_tensors="pt",
        )
        batch = {
            "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
            "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"],
        }
        if "id" in examples[0]:
            batch["id"] = [example["id"] for example in examples]
        return batch
