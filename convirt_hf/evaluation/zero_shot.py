"""Zero-shot evaluation with a ConVIRT model: embedding image/text sets and the paper's retrieval protocol.

A retrieval set (the paper's CheXpert 8x200 layout, or the synthetic corpus's) is a folder written by
``datasets.save_to_disk`` with a ``retrieval_candidates`` split (images with exactly one category), a
``retrieval_queries`` split (query images, one category each) and ``text_queries.json`` (category -> sentences).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .retrieval import DEFAULT_KS, precision_at_k


@dataclass
class RetrievalSet:
    """Candidates and queries for zero-shot retrieval; labels are single category names."""

    candidates: object  # datasets.Dataset in the shared record shape
    queries: object
    text_queries: dict[str, list[str]]

    @staticmethod
    def single_label(records, split: str) -> list[str]:
        labels = records["labels"]
        bad = [i for i, row in enumerate(labels) if len(row) != 1]
        if bad:
            raise ValueError(f"{split}: retrieval rows need exactly one label; rows {bad[:10]} have {len(labels[bad[0]])}")
        return [row[0] for row in labels]

    @property
    def candidate_labels(self) -> list[str]:
        return self.single_label(self.candidates, "retrieval_candidates")

    @property
    def query_labels(self) -> list[str]:
        return self.single_label(self.queries, "retrieval_queries")

    def chance_rate(self) -> float:
        """Expected Precision@k of a random ranking, averaged over the image queries."""
        candidates = self.candidate_labels
        rates = [candidates.count(label) / len(candidates) for label in self.query_labels]
        return sum(rates) / len(rates)


def load_retrieval_set(path: str | Path) -> RetrievalSet:
    from datasets import load_from_disk

    path = Path(path).expanduser()
    corpus = load_from_disk(str(path))
    missing = [split for split in ("retrieval_candidates", "retrieval_queries") if split not in corpus]
    if missing or not (path / "text_queries.json").is_file():
        raise ValueError(
            f"{path} is not a retrieval set: it needs the splits retrieval_candidates and retrieval_queries and a "
            f"text_queries.json (missing: {missing + ([] if (path / 'text_queries.json').is_file() else ['text_queries.json'])})"
        )
    text_queries = json.loads((path / "text_queries.json").read_text())
    return RetrievalSet(corpus["retrieval_candidates"], corpus["retrieval_queries"], text_queries)


@torch.no_grad()
def embed_images(model, processor, images: Sequence, device, batch_size: int = 64) -> torch.Tensor:
    """L2-normalised projected image embeddings, in order."""
    chunks = []
    for start in range(0, len(images), batch_size):
        pixel_values = processor(images=list(images[start : start + batch_size]))["pixel_values"].to(device)
        chunks.append(model.get_image_features(pixel_values, normalize=True).float().cpu())
    return torch.cat(chunks)


@torch.no_grad()
def embed_texts(model, processor, texts: Sequence[str], device, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised projected text embeddings, in order."""
    chunks = []
    for start in range(0, len(texts), batch_size):
        tokens = processor(text=list(texts[start : start + batch_size]))
        chunks.append(
            model.get_text_features(
                tokens["input_ids"].to(device), tokens["attention_mask"].to(device), normalize=True
            ).float().cpu()
        )
    return torch.cat(chunks)


def evaluate_retrieval(
    model, processor, retrieval: RetrievalSet, device=None, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, dict]:
    """Image->image and text->image Precision@k (see `precision_at_k`), with the model in eval mode."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        candidates = embed_images(model, processor, retrieval.candidates["image"], device)
        queries = embed_images(model, processor, retrieval.queries["image"], device)
        sentences = [(category, sentence) for category, group in retrieval.text_queries.items() for sentence in group]
        texts = embed_texts(model, processor, [sentence for _, sentence in sentences], device)
    finally:
        model.train(was_training)
    candidate_labels = retrieval.candidate_labels
    return {
        "image->image": precision_at_k(queries @ candidates.t(), retrieval.query_labels, candidate_labels, ks),
        "text->image": precision_at_k(texts @ candidates.t(), [c for c, _ in sentences], candidate_labels, ks),
    }
