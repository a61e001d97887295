"""Zero-shot evaluation with a ConVIRT model: embedding image/text sets and the paper's retrieval protocol.

A retrieval set (the paper's CheXpert 8x200 layout, or the synthetic corpus's) is a folder written by
``datasets.save_to_disk`` with a ``retrieval_candidates`` split (images with exactly one category), a
``retrieval_queries`` split (query images, one category each) and ``text_queries.json`` (category -> sentences).

Zero-shot classification by prompts (`class_prompt_embeddings`, `zero_shot_classify`, `score_zero_shot`) is at the
end of the module.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from convirt_hf.modes import evaluating

from .retrieval import DEFAULT_KS, precision_at_k

# Prepared pixel values of a retrieval set are kept between evaluations up to this size (the demo's 480 images at
# 64 px take 24 MB; the paper's 8 x 200 set at 224 px would take 1 GB and is prepared at every evaluation instead).
PREPARED_IMAGES_MAX_BYTES = 256 * 2**20


@dataclass
class RetrievalSet:
    """Candidates and queries for zero-shot retrieval; labels are single category names."""

    candidates: object  # datasets.Dataset in the shared record shape
    queries: object
    text_queries: dict[str, list[str]]
    _prepared: dict = field(default_factory=dict, repr=False, compare=False)

    def prepared_images(self, split: str, processor) -> torch.Tensor:
        """
        The processor's pixel values of the `"candidates"` or `"queries"` images, prepared once per processor and
        reused by later evaluations (a training run evaluates retrieval many times) when they fit
        `PREPARED_IMAGES_MAX_BYTES`.
        """
        key = (split, processor.image_processor.to_json_string())
        if key in self._prepared:
            return self._prepared[key]
        images = getattr(self, split)["image"]
        pixel_values = torch.cat([processor(images=list(images[start:start + 64]))["pixel_values"]
                                  for start in range(0, len(images), 64)])
        stored = sum(value.numel() * value.element_size() for value in self._prepared.values())
        if stored + pixel_values.numel() * pixel_values.element_size() <= PREPARED_IMAGES_MAX_BYTES:
            self._prepared[key] = pixel_values
        return pixel_values

    @staticmethod
    def single_label(records, split: str) -> list[str]:
        labels = records["labels"]
        bad = [i for i, row in enumerate(labels) if len(row) != 1]
        if bad:
            raise ValueError(f"{split}: retrieval rows need exactly one label; rows {bad[:10]} have "
                             f"{len(labels[bad[0]])}")
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
            f"text_queries.json (missing: "
            f"{missing + ([] if (path / 'text_queries.json').is_file() else ['text_queries.json'])})"
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
def embed_pixel_values(model, pixel_values: torch.Tensor, device, batch_size: int = 64) -> torch.Tensor:
    """L2-normalised projected image embeddings of prepared pixel values, in order."""
    return torch.cat([model.get_image_features(pixel_values[start:start + batch_size].to(device),
                                               normalize=True).float().cpu()
                      for start in range(0, len(pixel_values), batch_size)])


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
    model, processor, retrieval: RetrievalSet, device=None, ks: Sequence[int] = DEFAULT_KS,
    directions: Sequence[str] = ("image->image", "text->image"),
) -> dict[str, dict]:
    """
    Image->image and text->image Precision@k (see `precision_at_k`) in the joint space (projected embeddings), with
    the model in eval mode: what pretraining tracks. (`convirt_hf.evaluation.image_retrieval.image_to_image` ranks
    images by any encoder's features, the backbone's by default.)
    """
    device = device or next(model.parameters()).device
    results = {}
    with evaluating(model):
        candidates = embed_pixel_values(model, retrieval.prepared_images("candidates", processor), device)
        if "image->image" in directions:
            queries = embed_pixel_values(model, retrieval.prepared_images("queries", processor), device)
            results["image->image"] = precision_at_k(queries @ candidates.t(), retrieval.query_labels,
                                                     retrieval.candidate_labels, ks)
        if "text->image" in directions:
            sentences = [(category, sentence) for category, group in retrieval.text_queries.items()
                         for sentence in group]
            texts = embed_texts(model, processor, [sentence for _, sentence in sentences], device)
            results["text->image"] = precision_at_k(texts @ candidates.t(), [c for c, _ in sentences],
                                                    retrieval.candidate_labels, ks)
    return results


# ------------------------------------------------------------------------------------ zero-shot classification
#
# Each class is described by one or more prompts (e.g. a retrieval set's text_queries.json sentences). A class's
# embedding is the mean of its prompts' L2-normalised text embeddings, normalised again; an image's class scores
# are its cosine similarities to the class embeddings, and its probabilities softmax(similarity / tau), tau the
# model's temperature (config.tau, 0.1 in the paper).
#
# Scoring against a ClassificationTask (`score_zero_shot`):
# - multi-class: softmax over the task's classes only; accuracy (argmax) and one-vs-rest AUC, as score_predictions.
# - binary and multi-label: there is no per-class sigmoid to threshold, so each class's score is its softmax
#   probability among *all* prompt classes (a binary task's prompts need at least one other class, e.g. "no
#   finding", to compare against). Only the rank-based AUCs are meaningful for these scores and kept; the 0.5-
#   threshold accuracy of a binary task is dropped.


@dataclass
class ZeroShotOutput:
    """Cosine similarities `(num_images, num_classes)` of images to class embeddings, and the temperature."""

    classes: list[str]
    similarities: torch.Tensor
    tau: float

    @property
    def probabilities(self) -> torch.Tensor:
        """softmax(similarity / tau) over all classes."""
        return torch.softmax(self.similarities / self.tau, dim=-1)

    def predictions(self) -> list[str]:
        """The most similar class of each image."""
        return [self.classes[index] for index in self.similarities.argmax(dim=-1).tolist()]


def _check_prompts(prompts) -> list[str]:
    if not prompts:
        raise ValueError("zero-shot classification needs prompts: a mapping of class names to sentences")
    for name, sentences in prompts.items():
        if isinstance(sentences, str) or not sentences or not all(isinstance(s, str) and s.strip() for s in sentences):
            raise ValueError(f"class {name!r} needs a non-empty list of non-empty prompt sentences, got {sentences!r}")
    return list(prompts)


def class_prompt_embeddings(
    model, processor, prompts: dict[str, Sequence[str]], device=None, batch_size: int = 256
) -> torch.Tensor:
    """
    One embedding per class, in the order of `prompts` (class -> sentences): the mean of the class's L2-normalised
    prompt embeddings, L2-normalised again. Returns a float32 `(num_classes, projection_dim)` CPU tensor.
    """
    classes = _check_prompts(prompts)
    device = device or next(model.parameters()).device
    sentences = [sentence for name in classes for sentence in prompts[name]]
    with evaluating(model):
        embeddings = embed_texts(model, processor, sentences, device, batch_size=batch_size)
    means, start = [], 0
    for name in classes:
        count = len(prompts[name])
        means.append(embeddings[start : start + count].mean(dim=0))
        start += count
    return torch.nn.functional.normalize(torch.stack(means), dim=-1)


def zero_shot_classify(
    model,
    processor,
    images: Sequence,
    prompts: dict[str, Sequence[str]],
    device=None,
    tau: float | None = None,
    batch_size: int = 64,
    image_embeddings: torch.Tensor | None = None,
) -> ZeroShotOutput:
    """
    Classifies `images` by their cosine similarity to the class prompt embeddings ([`class_prompt_embeddings`]).

    Args:
        images: anything the processor takes (PIL images, arrays, paths).
        prompts: class name -> prompt sentences.
        tau: the softmax temperature of `ZeroShotOutput.probabilities` (default: the model's `config.tau`).
        image_embeddings: precomputed L2-normalised image embeddings of `images` (then `images` is not read).

    Returns:
        [`ZeroShotOutput`]: `classes`, `similarities` `(num_images, num_classes)`, `tau`; `.probabilities` is
        softmax(similarities / tau).
    """
    device = device or next(model.parameters()).device
    tau = float(tau if tau is not None else getattr(model.config, "tau", 0.1))
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    classes = _check_prompts(prompts)
    class_embeddings = class_prompt_embeddings(model, processor, prompts, device)
    if image_embeddings is None:
        with evaluating(model):
            image_embeddings = embed_images(model, processor, images, device, batch_size=batch_size)
    return ZeroShotOutput(classes, image_embeddings.float() @ class_embeddings.t(), tau)


def score_zero_shot(task, output: ZeroShotOutput, labels: Sequence[Sequence[str]],
                    patient_ids: Sequence[str | None] | None = None, split: str = "test") -> dict[str, float | None]:
    """
    A [`ClassificationTask`]'s metrics for zero-shot predictions, through `scoring.score_predictions` (see the
    notes above `ZeroShotOutput` for the scores used). Patient-level metrics are added for patient-level tasks
    when `patient_ids` are given.

    Raises:
        ValueError: a task class has no prompts, or a binary/multi-label task has a single prompt class.
    """
    from .scoring import score_predictions

    missing = [name for name in task.classes if name not in output.classes]
    if missing:
        raise ValueError(f"task {task.name!r}: no prompts for the classes {missing} (prompt classes: {output.classes})")
    columns = [output.classes.index(name) for name in task.classes]
    targets, keep = task.targets(labels, split=split)
    keep_rows = torch.as_tensor(keep.nonzero()[0])
    if task.kind == "multiclass":
        scores = torch.softmax(output.similarities[:, columns] / output.tau, dim=-1)
    else:
        if len(output.classes) < 2:
            raise ValueError(f"task {task.name!r}: a {task.kind} task needs prompts for at least one other class to "
                             f"compare against (got only {output.classes})")
        scores = output.probabilities[:, columns]
        if task.kind == "binary":
            scores = scores[:, 0]
    patients = None
    if task.patient_level and patient_ids is not None:
        patients = [patient_ids[i] for i in keep_rows.tolist()]
    metrics = score_predictions(task, targets, scores[keep_rows].double().numpy(), patient_ids=patients)
    if task.kind == "binary":
        metrics = {name: value for name, value in metrics.items() if not name.endswith("accuracy")}
    return metrics


def evaluate_zero_shot_classification(
    model, processor, records, tasks: Sequence, prompts: dict[str, Sequence[str]], device=None,
    tau: float | None = None, batch_size: int = 64,
) -> dict[str, dict[str, float | None]]:
    """Each task's zero-shot metrics on `records` (a dataset with `image`, the tasks' label columns, optional
    `patient_id`)."""
    output = zero_shot_classify(model, processor, records["image"], prompts, device=device, tau=tau,
                                batch_size=batch_size)
    columns = getattr(records, "column_names", None) or []
    patient_ids = records["patient_id"] if "patient_id" in columns else None
    return {task.name: score_zero_shot(task, output, records[task.column], patient_ids) for task in tasks}
