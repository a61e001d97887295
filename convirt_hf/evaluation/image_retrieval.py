"""Image-to-image retrieval with any image encoder: ConVIRT and the baselines of the paper's Table 2 by one code path.

Candidates are ranked by the cosine similarity of their features to each query's. The features are, for every encoder
spec the linear probe takes (`convirt_hf.evaluation.encoders`), the backbone's pooled features h_v; a ConVIRT model
can instead use its projected embeddings v = g_v(h_v) (`features="projection"`), the joint space that text->image
retrieval ranks in. The default is the backbone for every encoder, so that every row of a table compares the same
thing: random-init and ImageNet encoders have no projection head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import ImageEncoder, check_image_encoder_spec, load_image_encoder
from .features import encode_splits
from .retrieval import DEFAULT_KS, precision_at_k

__all__ = ["IMAGE_FEATURES", "ProjectedImageFeatures", "image_to_image", "retrieval_encoder"]

IMAGE_FEATURES = ("backbone", "projection")


class ProjectedImageFeatures(nn.Module):
    """A ConVIRT model's projected image embeddings g_v(f_v(x)), as an image encoder."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values)


def retrieval_encoder(spec: str, features: str = "backbone", architecture: str | None = None,
                      image_size: int | None = None, seed: int = 0) -> ImageEncoder:
    """
    The image encoder of `spec` (a ConVIRT folder, `"random:<arch>"`, a timm name or folder, a checkpoint file) whose
    features rank the candidates: the backbone's, or a ConVIRT model's projected embeddings.
    """
    if features not in IMAGE_FEATURES:
        raise ValueError(f"features must be one of {IMAGE_FEATURES}, got {features!r}")
    if features == "backbone":
        return load_image_encoder(spec, architecture=architecture, seed=seed, image_size=image_size)
    kind = check_image_encoder_spec(spec, architecture)
    if kind != "convirt":
        raise ValueError(f"{spec}: projected features exist for ConVIRT models only (a {kind} encoder has no "
                         "projection head); use backbone features")
    from convirt_hf import ConvirtModel

    model = ConvirtModel.from_pretrained(spec, dtype=torch.float32).eval()
    return ImageEncoder(ProjectedImageFeatures(model), model.config.projection_dim, int(model.config.image_size),
                        str(spec), "convirt")


def image_to_image(encoder: ImageEncoder, retrieval, ks: Sequence[int] = DEFAULT_KS, device=None,
                   batch_size: int = 64, progress: bool = False,
                   resize: int | None = None) -> tuple[dict, torch.Tensor]:
    """
    Image->image Precision@k (see `precision_at_k`) of `encoder` on a retrieval set, with the candidates' L2-normalised
    features (for embedding maps). Images get the evaluation view the ConVIRT processor makes, at the encoder's size:
    the short side resized to `resize` (default 8/7 of the size; a ConVIRT processor's `size["shortest_edge"]`),
    then a centre crop.
    """
    features = encode_splits(encoder, {"candidates": retrieval.candidates, "queries": retrieval.queries},
                             eval_mode="resize_crop", batch_size=batch_size, device=device, progress=progress,
                             resize=resize)
    candidates = F.normalize(features["candidates"].float(), dim=-1)
    queries = F.normalize(features["queries"].float(), dim=-1)
    result = precision_at_k(queries @ candidates.t(), retrieval.query_labels, retrieval.candidate_labels, ks)
    return result, candidates
