# Copyright 2026 The convirt-hf developers. Licensed under the Apache License, Version 2.0.
"""PyTorch ConVIRT model: a timm image tower and a BERT text tower with projection heads (Zhang et al., 2020).

This file is self-contained (torch, transformers, timm and a relative import of the configuration) because it is
copied next to the weights as remote code.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertModel, PreTrainedModel
from transformers.utils import ModelOutput, logging

from .configuration_convirt import ConvirtConfig, check_partial_text_freezing

init: ModuleType
try:  # guarded init functions skip tensors already loaded from a checkpoint (transformers 5.x)
    from transformers import initialization as _guarded_init

    init = _guarded_init
except ImportError:  # transformers 4.x: loaded weights are never re-initialised
    init = nn.init

logger = logging.get_logger(__name__)

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
# Key prefixes added by training wrappers (DDP, self-supervised frameworks) around a plain backbone.
STATE_DICT_PREFIXES = ("module.", "_orig_mod.", "backbone.", "encoder.", "model.")
CLASSIFIER_PREFIXES = ("fc.", "head.", "classifier.")


# Losses and pooling: small pure functions, reused by convirt_hf.losses for the multi-process loss.


def contrastive_logits(image_embeds: torch.Tensor, text_embeds: torch.Tensor, tau: float) -> torch.Tensor:
    """Cosine similarities of L2-normalised embeddings divided by `tau`: rows are images, columns are texts."""
    return image_embeds @ text_embeds.t() / tau


def convirt_loss(
    logits_per_image: torch.Tensor,
    logits_per_text: torch.Tensor,
    loss_lambda: float,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""
    The ConVIRT loss: L = mean_i [ lambda * l(v->u)_i + (1 - lambda) * l(u->v)_i ].

    `logits_per_image[i]` holds image i's similarities to every candidate text and `logits_per_text[i]` text i's to
    every candidate image; `labels[i]` is the column of the matching pair (the diagonal when omitted). Rows may be a
    subset of all pairs (one process's share), columns the whole batch. Computed in float32.
    """
    if labels is None:
        labels = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    image_to_text = F.cross_entropy(logits_per_image.float(), labels)
    text_to_image = F.cross_entropy(logits_per_text.float(), labels)
    return loss_lambda * image_to_text + (1.0 - loss_lambda) * text_to_image


def pool_text(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pools token vectors into one vector per text; padding positions (mask 0) never contribute."""
    if pooling == "cls":
        return last_hidden_state[:, 0]
    mask = attention_mask.to(torch.bool).unsqueeze(-1)
    if pooling == "max":
        return last_hidden_state.masked_fill(~mask, torch.finfo(last_hidden_state.dtype).min).amax(dim=1)
    if pooling == "mean":
        summed = last_hidden_state.masked_fill(~mask, 0.0).sum(dim=1)
        return summed / mask.sum(dim=1).clamp(min=1).to(summed.dtype)
    raise ValueError(f"Unknown text_pooling {pooling!r}")


@dataclass
class ConvirtOutput(ModelOutput):
    r"""
    Output of [`ConvirtModel`]. Fields a call cannot fill (text fields for an image-only call) are `None`.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `return_loss=True`):
            The ConVIRT bidirectional contrastive loss of the batch.
        logits_per_image (`torch.FloatTensor` of shape `(image_batch_size, text_batch_size)`):
            Cosine similarities between image and text embeddings divided by `tau`.
        logits_per_text (`torch.FloatTensor` of shape `(text_batch_size, image_batch_size)`):
            The transpose of `logits_per_image`.
        image_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
            L2-normalised projected image embeddings (v in the paper).
        text_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
            L2-normalised projected text embeddings (u in the paper).
        image_pooler_output (`torch.FloatTensor` of shape `(batch_size, image_num_features)`):
            The image tower's pooled features before projection (h_v); what transfer evaluation uses.
        text_pooler_output (`torch.FloatTensor` of shape `(batch_size, text_hidden_size)`):
            The text tower's pooled features before projection (h_u).
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_pooler_output: torch.FloatTensor | None = None
    text_pooler_output: torch.FloatTensor | None = None


class ConvirtMLPProjection(nn.Module):
    """The paper's projection g: W2 ReLU(W1 h)."""

    def __init__(self, input_dim: int, output_dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden)))


class ConvirtLinearProjection(nn.Module):
    """A single linear map, the paper's ablation of the MLP head."""

    def __init__(self, input_dim: int, output_dim: int, hidden_dim: int | None = None):
        super().__init__()
        self.fc = nn.Linear(input_dim, output_dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fc(hidden)


# Tversky projection (Doumbouya, Jurafsky and Manning, "Tversky Neural Networks", arXiv:2506.11035), written from the
# paper's equations. Objects are vectors; an object x "has" feature k of a learned bank F when x . f_k > 0, with
# measure x . f_k. Everything below works on those memberships, shape (..., num_features).


def _intersection_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a * b


def _intersection_gmean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sqrt()


def _intersection_softmin(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return -torch.logaddexp(-a, -b)  # a smooth min(a, b), slightly below it


# The paper's aggregations Psi of a shared feature's two measures, for the feature-set intersection (eq. 3).
TVERSKY_INTERSECTIONS = {
    "product": _intersection_product,
    "min": torch.minimum,
    "max": torch.maximum,
    "mean": lambda a, b: (a + b) / 2,
    "gmean": _intersection_gmean,
    "softmin": _intersection_softmin,
}
# The paper's two feature-set differences: "ignorematch" counts the features of A absent from B (eq. 4),
# "substractmatch" the excess of A over B on the features both have (eq. 5).
TVERSKY_DIFFERENCES = ("ignorematch", "substractmatch")
# "contrast": theta f(A n B) - alpha f(A - B) - beta f(B - A) (eq. 6); "ratio": Tversky's (1977) ratio model,
# f(A n B) / (f(A n B) + alpha f(A - B) + beta f(B - A)).
TVERSKY_SIMILARITY_MODELS = ("contrast", "ratio")
TVERSKY_RATIO_EPSILON = 1e-6


def tversky_salience(memberships: torch.Tensor) -> torch.Tensor:
    r"""
    The salience f(A) of each object: the summed measure of the features it has, sum_k (a . f_k) 1[a . f_k > 0]
    (the paper's eq. 2). `memberships` holds a . f_k in its last dimension.
    """
    return memberships.clamp_min(0).sum(dim=-1)


def tversky_intersection(a: torch.Tensor, b: torch.Tensor, reduction: str = "product") -> torch.Tensor:
    r"""
    f(A n B) for every pair: sum_k Psi(a_k, b_k) 1[a_k > 0 and b_k > 0] (the paper's eq. 3).

    Args:
        a (`torch.Tensor` of shape `(n, num_features)`): memberships a . f_k of the first objects.
        b (`torch.Tensor` of shape `(m, num_features)`): memberships of the second objects.
        reduction (`str`): Psi, one of `TVERSKY_INTERSECTIONS`.

    Returns:
        `torch.Tensor` of shape `(n, m)`.
    """
    if reduction == "product":
        # relu(a_k) relu(b_k) is a_k b_k exactly where both are positive, and 0 elsewhere: one matmul instead of an
        # (n, m, num_features) tensor, with the same values and gradients.
        return a.clamp_min(0) @ b.clamp_min(0).t()
    pairs_a, pairs_b = a.unsqueeze(1), b.unsqueeze(0)
    shared = (pairs_a > 0) & (pairs_b > 0)
    # Psi only ever sees positive measures: the masked-out entries are replaced by 1 before it, so that no branch of
    # torch.where carries a NaN gradient (sqrt at 0) back through the mask.
    ones = torch.ones((), dtype=a.dtype, device=a.device)
    measured = TVERSKY_INTERSECTIONS[reduction](torch.where(shared, pairs_a, ones), torch.where(shared, pairs_b, ones))
    return torch.where(shared, measured, torch.zeros((), dtype=a.dtype, device=a.device)).sum(dim=-1)


def tversky_difference(a: torch.Tensor, b: torch.Tensor, reduction: str = "substractmatch") -> torch.Tensor:
    r"""
    f(A - B) for every pair (swap the arguments for f(B - A)).

    - `"ignorematch"` (the paper's eq. 4): sum_k a_k 1[a_k > 0 and b_k <= 0], the features of A that B lacks.
    - `"substractmatch"` (eq. 5): sum_k (a_k - b_k) 1[a_k > 0 and b_k > 0 and a_k > b_k], how much more of the
      shared features A has.

    Args:
        a (`torch.Tensor` of shape `(n, num_features)`): memberships of the first objects.
        b (`torch.Tensor` of shape `(m, num_features)`): memberships of the second objects.

    Returns:
        `torch.Tensor` of shape `(n, m)`.
    """
    if reduction == "ignorematch":
        return a.clamp_min(0) @ (b <= 0).to(a.dtype).t()  # a matmul again: relu(a) against B's absent features
    if reduction == "substractmatch":
        # a_k > b_k > 0 is the same as relu(a_k - b_k) 1[b_k > 0]; the pairwise excess needs the (n, m, K) tensor
        excess = (a.unsqueeze(1) - b.unsqueeze(0)).clamp_min(0)
        return (excess * (b > 0).to(a.dtype).unsqueeze(0)).sum(dim=-1)
    raise ValueError(f"Unknown Tversky difference {reduction!r}; expected one of {TVERSKY_DIFFERENCES}")


def tversky_similarity(
    a: torch.Tensor,
    b: torch.Tensor,
    features: torch.Tensor,
    alpha: torch.Tensor | float,
    beta: torch.Tensor | float,
    theta: torch.Tensor | float = 1.0,
    intersection: str = "product",
    difference: str = "substractmatch",
    similarity: str = "contrast",
) -> torch.Tensor:
    r"""
    Tversky similarity S(a_i, b_j) of every pair of rows, over the feature bank `features` (the paper's eq. 6):

        S(a, b) = theta f(A n B) - alpha f(A - B) - beta f(B - A)            (similarity="contrast")
        S(a, b) = f(A n B) / (f(A n B) + alpha f(A - B) + beta f(B - A))      (similarity="ratio", Tversky 1977)

    where A = {k : a . f_k > 0}. With alpha != beta, S is asymmetric: S(a, b) != S(b, a).

    Args:
        a (`torch.Tensor` of shape `(n, dim)`): the objects compared (the "subjects": alpha weighs their own features).
        b (`torch.Tensor` of shape `(m, dim)`): the objects compared to (the "referents": beta weighs theirs).
        features (`torch.Tensor` of shape `(num_features, dim)`): the feature bank.
        alpha, beta, theta: the weights of the distinctive and common features (theta is unused by the ratio model).
        intersection (`str`, defaults to `"product"`): Psi, one of `TVERSKY_INTERSECTIONS`.
        difference (`str`, defaults to `"substractmatch"`): one of `TVERSKY_DIFFERENCES`.
        similarity (`str`, defaults to `"contrast"`): one of `TVERSKY_SIMILARITY_MODELS`.

    Returns:
        `torch.Tensor` of shape `(n, m)`.
    """
    a_members, b_members = a @ features.t(), b @ features.t()
    common = tversky_intersection(a_members, b_members, intersection)
    a_only = tversky_difference(a_members, b_members, difference)
    b_only = tversky_difference(b_members, a_members, difference).t()
    if similarity == "contrast":
        return theta * common - alpha * a_only - beta * b_only
    if similarity == "ratio":
        # all three measures are >= 0; the floor keeps a pair with no features at all (0 / 0) at 0
        return common / (common + alpha * a_only + beta * b_only).clamp_min(TVERSKY_RATIO_EPSILON)
    raise ValueError(f"Unknown Tversky similarity model {similarity!r}; expected one of {TVERSKY_SIMILARITY_MODELS}")


class TverskyProjection(nn.Module):
    r"""
    The Tversky projection layer (the paper's eq. 7): maps an input x to its Tversky similarities to `output_dim`
    learned prototypes, y_j = S(x, p_j), over a learned feature bank. It replaces a linear layer, whose outputs are
    dot products x . w_j with the rows of its weight; unlike one linear layer it can represent XOR.

    Parameters: `features` (num_features x input_dim, the bank F), `prototypes` (output_dim x input_dim, P, living
    in the input space like a linear layer's weight rows) and the scalars `alpha`, `beta`, `theta`, all learned.

    Args:
        input_dim (`int`): dimension d of the inputs (and of features and prototypes).
        output_dim (`int`): number m of prototypes, the output width.
        num_features (`int`, defaults to 256): size K of the feature bank.
        alpha (`float`, defaults to 0.5): initial weight of the input's distinctive features, f(X - P).
        beta (`float`, defaults to 0.5): initial weight of the prototype's distinctive features, f(P - X).
        theta (`float`, defaults to 1.0): initial weight of the common features (contrast model).
        intersection, difference, similarity (`str`): see [`tversky_similarity`].
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        num_features: int = 256,
        alpha: float = 0.5,
        beta: float = 0.5,
        theta: float = 1.0,
        intersection: str = "product",
        difference: str = "substractmatch",
        similarity: str = "contrast",
    ):
        super().__init__()
        for name, value, choices in (("intersection", intersection, tuple(TVERSKY_INTERSECTIONS)),
                                     ("difference", difference, TVERSKY_DIFFERENCES),
                                     ("similarity", similarity, TVERSKY_SIMILARITY_MODELS)):
            if value not in choices:
                raise ValueError(f"Tversky {name} must be one of {choices}, got {value!r}")
        self.input_dim, self.output_dim, self.num_features = input_dim, output_dim, num_features
        self.intersection, self.difference, self.similarity = intersection, difference, similarity
        self.initial_scalars = {"alpha": float(alpha), "beta": float(beta), "theta": float(theta)}
        self.features = nn.Parameter(torch.empty(num_features, input_dim))
        self.prototypes = nn.Parameter(torch.empty(output_dim, input_dim))
        self.alpha = nn.Parameter(torch.empty(()))
        self.beta = nn.Parameter(torch.empty(()))
        self.theta = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self, initialiser=nn.init, generator: torch.Generator | None = None) -> None:
        """
        Features ~ N(0, 1/d) and prototypes ~ N(0, 1): for inputs of unit-variance coordinates both memberships x . f_k
        and p . f_k are then about N(0, 1), so inputs and prototypes start with comparable feature measures (with
        prototypes at a linear layer's scale, p . f_k would be ~1/sqrt(d) and the intersections vanish).
        `initialiser` is `torch.nn.init` or transformers' guarded equivalent, which skips loaded tensors.
        """
        extra = {} if generator is None else {"generator": generator}
        initialiser.normal_(self.features, mean=0.0, std=self.input_dim**-0.5, **extra)
        initialiser.normal_(self.prototypes, mean=0.0, std=1.0, **extra)
        for name, value in self.initial_scalars.items():
            initialiser.constant_(getattr(self, name), value)

    def salience(self, hidden: torch.Tensor) -> torch.Tensor:
        """f(X) of each input, its summed feature measure (eq. 2); `prototype_salience` gives the prototypes'."""
        return tversky_salience(hidden @ self.features.t())

    def prototype_salience(self) -> torch.Tensor:
        return tversky_salience(self.prototypes @ self.features.t())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        leading = hidden.shape[:-1]
        flat = hidden.reshape(-1, hidden.shape[-1])
        # in the parameters' dtype (a float32 head over a half-precision tower keeps the feature tests x . f_k > 0
        # exact)
        output = tversky_similarity(flat.to(self.features.dtype), self.prototypes, self.features, self.alpha,
                                    self.beta, self.theta, self.intersection, self.difference, self.similarity)
        return output.reshape(*leading, self.output_dim).to(hidden.dtype)

    def extra_repr(self) -> str:
        return (f"input_dim={self.input_dim}, output_dim={self.output_dim}, num_features={self.num_features}, "
                f"intersection={self.intersection!r}, difference={self.difference!r}, similarity={self.similarity!r}")


class ConvirtTverskyProjection(TverskyProjection):
    """A ConVIRT projection head g made of one [`TverskyProjection`] layer, configured by the `tversky_*` fields."""

    def __init__(self, input_dim: int, output_dim: int, config: ConvirtConfig):
        super().__init__(
            input_dim,
            output_dim,
            num_features=config.tversky_num_features,
            alpha=config.tversky_alpha,
            beta=config.tversky_beta,
            theta=config.tversky_theta,
            intersection=config.tversky_intersection,
            difference=config.tversky_difference,
            similarity=config.tversky_similarity,
        )


PROJECTION_CLASSES = {
    "mlp": ConvirtMLPProjection, "linear": ConvirtLinearProjection, "tversky": ConvirtTverskyProjection,
}


def build_projection(config: ConvirtConfig, input_dim: int) -> nn.Module:
    """The head g of `config.projection` from a tower's `input_dim` features to `config.projection_dim`."""
    if config.projection == "tversky":
        return ConvirtTverskyProjection(input_dim, config.projection_dim, config)
    return PROJECTION_CLASSES[config.projection](
        input_dim, config.projection_dim, config.projection_hidden_dim or input_dim
    )


def create_image_tower(config: ConvirtConfig) -> nn.Module:
    """Builds the timm tower without weights (from_pretrained builds models on the meta device)."""
    name = config.image_model_name
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:8]}*")[:10]
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ValueError(
            f"Unknown timm architecture {name!r} (config.image_model_name). Use an architecture name such as "
            f"'resnet50' without a pretrained tag; load weights with ConvirtModel.from_pretrained_towers.{hint}"
        )
    return timm.create_model(
        name, pretrained=False, num_classes=0, in_chans=config.num_channels, **config.image_model_kwargs
    )


def strip_state_dict_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Removes wrapper prefixes ("module.", "backbone.", ...) shared by all keys, repeatedly."""
    changed = True
    while changed:
        changed = False
        for prefix in STATE_DICT_PREFIXES:
            if state_dict and all(key.startswith(prefix) for key in state_dict):
                state_dict = {key[len(prefix) :]: value for key, value in state_dict.items()}
                changed = True
    return state_dict


def _flatten_tensors(state: dict, prefix: str = "") -> tuple[dict[str, torch.Tensor], list[str]]:
    """Nested dicts of tensors (DINO's {"student": ..., "teacher": ...}) as one flat dict; other leaves are listed."""
    tensors, others = {}, []
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            tensors[name] = value
        elif isinstance(value, dict):
            nested, nested_others = _flatten_tensors(value, f"{name}.")
            tensors.update(nested)
            others += nested_others
        else:
            others.append(name)
    return tensors, others


def read_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """
    Reads tower weights safely: safetensors, or a torch pickle restricted to tensors (`weights_only=True`), of any
    file name (`.pt`, `.pth`, `.bin`, `.torch`, `.ckpt`). A training checkpoint's `state_dict`/`model` entry is used
    when it has one; nested dicts of tensors are flattened with "." and non-tensor entries (epoch counters, ...)
    dropped, so that [`load_tower_state`] can find the tower inside.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # weights_only refuses arbitrary pickled objects: say so instead of a raw trace
        raise ValueError(
            f"Could not read {path} as a tensor-only checkpoint (torch.load with weights_only=True): {error}. "
            "Convert it to .safetensors, or re-save it as a plain state dict."
        ) from error
    for container_key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(container_key), dict):
            state = state[container_key]
            break
    tensors, others = _flatten_tensors(state) if isinstance(state, dict) else ({}, [])
    if not tensors:
        raise ValueError(f"{path} does not hold a state dict of tensors")
    if others:
        logger.info("%s: ignoring %d entries that are not tensors (%s)", path, len(others), ", ".join(others[:5]))
    return tensors


def load_image_tower_weights(spec: str) -> tuple[str, dict[str, torch.Tensor], str]:
    """
    Resolves an image tower spec to (timm architecture, state dict without classifier, description).

    `spec` is a timm name with a pretrained tag ("resnet50.tv_in1k"), "hf-hub:org/name", "local-dir:/path", a local
    timm model folder, or a checkpoint file (.safetensors, .pt, .pth, .bin). A checkpoint file carries no
    architecture: the caller supplies it (config.image_model_name).
    """
    path = Path(spec)
    if path.is_file():
        state = strip_state_dict_prefixes(read_state_dict_file(path))
        return "", state, path.name
    if path.is_dir():
        spec = f"local-dir:{path}"
    tower = timm.create_model(spec, pretrained=True, num_classes=0)
    architecture = tower.pretrained_cfg.get("architecture") or spec.split(":")[-1].split(".")[0]
    return architecture, tower.state_dict(), spec


def _is_optional_key(key: str) -> bool:
    # BatchNorm's step counter: absent from older checkpoints (torchvision's own ResNet-50 release among them) and
    # only read when momentum=None; torch fills it with 0 for such checkpoints, so do we.
    return key.endswith("num_batches_tracked")


def tower_key_prefixes(state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, int]:
    """
    Every prefix under which some of the tower's keys appear in `state_dict`, with how many of the tower's required
    keys (right shape included) it holds: `{"": 120}` for a plain state dict, `{"encoder_q.": 120, "encoder_k.":
    120}` for a MoCo checkpoint. Found from the keys' dotted suffixes, so any wrapper nesting is seen.
    """
    coverage: dict[str, int] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        for start in range(len(parts)):
            suffix = ".".join(parts[start:])
            if suffix in expected and not _is_optional_key(suffix) and expected[suffix].shape == value.shape:
                prefix = "".join(f"{part}." for part in parts[:start])
                coverage[prefix] = coverage.get(prefix, 0) + 1
    return coverage


def select_tower_state(
    state_dict: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    prefix: str | None = None,
    source: str = "state dict",
) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """
    The part of a checkpoint that holds the tower: returns `(tower_state, prefix, ignored_keys)`.

    With `prefix=None` it is found: the plain layout when it holds the whole tower, otherwise the one prefix under
    which the whole tower is ("backbone." next to a "head.", "encoder_q." of MoCo, ...). Keys outside that prefix
    (projection heads, momentum encoders, optimiser state) are returned as `ignored_keys`; keys inside it are kept,
    so [`load_tower_state`] still reports unexpected ones. Raises `ValueError` when several prefixes each hold the
    whole tower (a student and a teacher): the caller names one.
    """
    required = sum(1 for key in expected if not _is_optional_key(key))
    if prefix is None:
        coverage = tower_key_prefixes(state_dict, expected)
        complete = sorted(p for p, count in coverage.items() if count == required)
        if "" in complete or not coverage:
            prefix = ""
        elif len(complete) == 1:
            prefix = complete[0]
        elif complete:
            raise ValueError(
                f"The image tower weights from {source} hold a whole tower under each of the prefixes {complete}: "
                "name the one to load (from_pretrained_towers(..., image_prefix=...), or load_tower_state(..., "
                "prefix=...))."
            )
        else:  # no complete tower anywhere: report against the closest match
            prefix = max(coverage, key=lambda p: (coverage[p], p == ""))
    if prefix and not any(key.startswith(prefix) for key in state_dict):
        found = sorted(tower_key_prefixes(state_dict, expected))
        raise ValueError(f"No key of the image tower weights from {source} starts with {prefix!r}; tower keys were "
                         f"found under {found}")
    tower_state = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    ignored = [key for key in state_dict if not key.startswith(prefix)]
    return tower_state, prefix, ignored


def load_tower_state(
    tower: nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: str = "state dict",
    architecture: str = "the tower",
    prefix: str | None = None,
) -> None:
    """
    Loads a timm tower's weights strictly from a timm or torchvision state dict (their ResNet key names are the
    same), raising `ValueError` with the missing, unexpected and misshapen keys instead of a bare `load_state_dict`
    error.

    The tower is looked up in the checkpoint with [`select_tower_state`] (wrapper prefixes such as "module." or
    "backbone.", self-supervised heads and momentum encoders next to it); classifier keys ("fc.", "head.",
    "classifier.") are dropped, as `num_classes=0` towers have none, and so are keys of modules the tower does not
    have (a "projector."), with a warning naming them; a missing BatchNorm `num_batches_tracked` is filled with 0.
    """
    expected = tower.state_dict()
    state_dict, prefix, ignored = select_tower_state(state_dict, expected, prefix, source)
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(CLASSIFIER_PREFIXES)}
    # Keys of a subtree the tower does not have at all ("projector.", "queue") belong to the training framework and are
    # skipped; an extra key inside one of the tower's own modules ("layer1.2." loaded into a ResNet-18) means another
    # architecture and stays an error below.
    tower_modules = {key.split(".")[0] for key in expected}
    foreign = [key for key in state_dict if key not in expected and key.split(".")[0] not in tower_modules]
    state_dict = {k: v for k, v in state_dict.items() if k not in set(foreign)}
    ignored += [f"{prefix}{key}" for key in foreign]
    if ignored:
        logger.warning(
            "Loading the image tower from the keys%s of %s; ignoring %d keys that are not the tower's (%s%s)",
            f" under {prefix!r}" if prefix else "", source, len(ignored), ", ".join(ignored[:5]),
            ", ..." if len(ignored) > 5 else "",
        )
    for key, value in expected.items():
        if _is_optional_key(key) and key not in state_dict:
            state_dict[key] = torch.zeros_like(value, device="cpu")
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    misshapen = [
        f"{key} {tuple(state_dict[key].shape)} vs {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state_dict and state_dict[key].shape != value.shape
    ]
    if missing or unexpected or misshapen:

        def listing(keys):
            return f"{keys[:8]}{f' (+{len(keys) - 8} more)' if len(keys) > 8 else ''}"

        where = f" under the prefix {prefix!r}" if prefix else ""
        raise ValueError(
            f"The image tower weights from {source}{where} do not fit {architecture!r} ({len(expected)} keys): "
            f"missing keys ({len(missing)}) {listing(missing)}, unexpected keys ({len(unexpected)}) "
            f"{listing(unexpected)}, shape mismatches ({len(misshapen)}) {listing(misshapen)}. Is image_model_name "
            "the checkpoint's architecture?"
        )
    tower.load_state_dict(state_dict, strict=True)


class ConvirtPreTrainedModel(PreTrainedModel):
    config_class = ConvirtConfig
    base_model_prefix = "convirt"
    main_input_name = "pixel_values"
    # transformers annotates this str | list[str], yet its own models set tuples (read with `in` only)
    input_modalities = ("image", "text")  # type: ignore[assignment]
    supports_gradient_checkpointing = True
    _no_split_modules = ["BertLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Only the projection heads start from scratch here: the towers keep their own (timm/BERT) initialisation or
        # loaded weights; the generic PreTrainedModel init would wipe pretrained convolutions and BatchNorm statistics.
        if isinstance(module, TverskyProjection):
            module.reset_parameters(init)
        elif isinstance(module, tuple(PROJECTION_CLASSES.values())):
            for layer in module.modules():
                if isinstance(layer, nn.Linear):
                    bound = 1.0 / layer.in_features**0.5  # nn.Linear's own default scale
                    init.uniform_(layer.weight, -bound, bound)
                    init.uniform_(layer.bias, -bound, bound)


class ConvirtModel(ConvirtPreTrainedModel):
    r"""
    ConVIRT: an image encoder f_v (timm) and a text encoder f_u (BERT, max-pooled), each followed by a projection head
    into a shared `projection_dim` space, trained so that an image and its report sentence are close.

    Works with images only, texts only, or both. With both it returns the similarity logits (rows: images) and, with
    `return_loss=True`, the single-process ConVIRT loss; multi-process training computes the loss from
    `image_embeds`/`text_embeds` with `convirt_hf.losses.ConvirtLoss`, which gathers negatives across processes.
    """

    def __init__(self, config: ConvirtConfig):
        super().__init__(config)
        self.image_encoder = create_image_tower(config)
        self.text_encoder = BertModel(config.text_config, add_pooling_layer=False)
        self.image_projection = build_projection(config, self.image_encoder.num_features)
        self.text_projection = build_projection(config, config.text_config.hidden_size)
        self.freeze_text_layers()
        self.post_init()

    def frozen_text_modules(self) -> list[nn.Module]:
        """The text embeddings (when frozen) and the first `config.num_frozen_text_layers` layers."""
        modules = [self.text_encoder.embeddings] if self.config.freeze_text_embeddings else []
        return modules + list(self.text_encoder.encoder.layer[: self.config.num_frozen_text_layers])

    def freeze_text_layers(self) -> None:
        """Freezes the text embeddings and the first `config.frozen_text_layers` layers, as in the paper."""
        for module in self.frozen_text_modules():
            module.requires_grad_(False)
        if self.training:
            self.train()

    def train(self, mode: bool = True) -> ConvirtModel:
        """
        Sets training mode like `nn.Module.train`, except that the frozen text parts stay in eval mode: they are a
        fixed feature extractor, so they apply no dropout and a sentence always gets the same features from them.
        """
        super().train(mode)
        if mode:
            for module in self.frozen_text_modules():
                module.eval()
        return self

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        # Loading replaces parameters with new ones that require grad: freeze again, as the config says.
        model.freeze_text_layers()
        return model

    def _set_gradient_checkpointing(self, enable: bool = True, *args, **kwargs) -> None:
        super()._set_gradient_checkpointing(enable, *args, **kwargs)
        self.image_encoder.set_grad_checkpointing(enable)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turns activation checkpointing on or off in both towers (timm-style switch, non-reentrant)."""
        from torch.utils.checkpoint import checkpoint

        def non_reentrant_checkpoint(function, *args, **kwargs):
            return checkpoint(function, *args, use_reentrant=False, **kwargs)

        self._set_gradient_checkpointing(enable, non_reentrant_checkpoint)

    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        expected = self.config.num_channels
        if pixel_values.ndim != 4 or pixel_values.shape[1] != expected:
            raise ValueError(
                f"pixel_values must have shape (batch, {expected}, height, width), got {tuple(pixel_values.shape)}. "
                "Grayscale images are replicated to 3 channels by ConvirtProcessor."
            )

    def get_image_features(self, pixel_values: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        r"""
        Returns the projected image embeddings v = g_v(f_v(x)), shape `(batch_size, projection_dim)`, L2-normalised
        when `normalize=True` (cosine similarity is then a dot product).
        """
        self.check_pixel_values(pixel_values)
        embeds = self.image_projection(self.image_encoder(pixel_values))
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        normalize: bool = False,
    ) -> torch.Tensor:
        r"""
        Returns the projected text embeddings u = g_u(pool(f_u(t))), shape `(batch_size, projection_dim)`,
        L2-normalised when `normalize=True`.
        """
        embeds = self.text_projection(self.encode_text(input_ids, attention_mask, token_type_ids))
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Returns the pooled text tower features h_u (before projection)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.text_encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        return pool_text(hidden, attention_mask, self.config.text_pooling)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_loss: bool = False,
        return_dict: bool | None = None,
        text_pooler_output: torch.Tensor | None = None,
    ) -> ConvirtOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`, *optional*):
                Images prepared by [`ConvirtProcessor`].
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Token ids of the report sentences.
            attention_mask (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                1 for real tokens, 0 for padding; padding is excluded from pooling.
            token_type_ids (`torch.LongTensor`, *optional*):
                Segment ids, passed to BERT (pipelines send them).
            return_loss (`bool`, *optional*, defaults to `False`):
                Return the ConVIRT loss; needs images and texts of the same batch size, pair i being (image i, text i).
            text_pooler_output (`torch.FloatTensor` of shape `(batch_size, text_hidden_size)`, *optional*):
                Pooled text-tower features h_u computed beforehand (`ConvirtOutput.text_pooler_output` of an earlier
                call), used instead of `input_ids`: a frozen text tower gives a sentence the same features every
                time, so training can compute them once per sentence (`convirt_hf.frozen_text.FrozenTextFeatures`).

        Example:

        ```python
        >>> outputs = model(**processor(images=images, text=sentences, return_tensors="pt"), return_loss=True)
        >>> outputs.loss, outputs.logits_per_image.shape
        ```
        """
        image_pooled = image_embeds = text_pooled = text_embeds = None
        logits_per_image = logits_per_text = loss = None
        if pixel_values is not None:
            self.check_pixel_values(pixel_values)
            image_pooled = self.image_encoder(pixel_values)
            image_embeds = F.normalize(self.image_projection(image_pooled), dim=-1)
        if input_ids is not None and text_pooler_output is not None:
            raise ValueError("pass input_ids or text_pooler_output, not both")
        if input_ids is not None:
            text_pooled = self.encode_text(input_ids, attention_mask, token_type_ids)
        elif text_pooler_output is not None:
            text_pooled = text_pooler_output
        if text_pooled is not None:
            text_embeds = F.normalize(self.text_projection(text_pooled), dim=-1)

        if return_loss:
            if image_embeds is None or text_embeds is None:
                raise ValueError("return_loss=True needs both pixel_values and input_ids")
            if image_embeds.shape[0] != text_embeds.shape[0]:
                raise ValueError(
                    f"return_loss=True needs one text per image: got {image_embeds.shape[0]} images and "
                    f"{text_embeds.shape[0]} texts"
                )
        if image_embeds is not None and text_embeds is not None:
            logits_per_image = contrastive_logits(image_embeds, text_embeds, self.config.tau)
            logits_per_text = logits_per_image.t()
            if return_loss:
                loss = convirt_loss(logits_per_image, logits_per_text, self.config.loss_lambda)

        output = ConvirtOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            image_pooler_output=image_pooled,
            text_pooler_output=text_pooled,
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    @classmethod
    def from_pretrained_towers(
        cls,
        image: str | os.PathLike | None = "resnet50.tv_in1k",
        text: str | os.PathLike = "emilyalsentzer/Bio_ClinicalBERT",
        image_prefix: str | None = None,
        **config_kwargs,
    ) -> ConvirtModel:
        r"""
        Builds a ConVIRT model whose towers start from pretrained weights and whose projection heads are new: the
        paper's starting point (ImageNet ResNet-50 and ClinicalBERT).

        Args:
            image (`str` or `os.PathLike`, *optional*, defaults to `"resnet50.tv_in1k"`):
                A timm name with a pretrained tag, `"hf-hub:org/name"`, `"local-dir:/path"`, a local timm model
                folder, or a checkpoint file (`.safetensors`, or `.pt`/`.pth`/`.bin`/`.torch` read with
                `weights_only=True`) holding a timm or torchvision state dict; for a file, set `image_model_name`
                if the architecture is not ResNet-50. `None` keeps a randomly initialised `image_model_name` tower.
                A file may be a training checkpoint: wrapper prefixes (`"module."`, `"backbone."`, ...) are
                removed and the tower is found next to projection heads or momentum encoders (see
                [`load_tower_state`]), as for self-supervised medical ResNet-50 weights.
            text (`str` or `os.PathLike`, *optional*, defaults to `"emilyalsentzer/Bio_ClinicalBERT"`):
                Any BERT-family model id or local folder (`model_type` "bert").
            image_prefix (`str`, *optional*):
                The key prefix of the tower inside a checkpoint file that holds several whole towers (`"teacher."`
                of a DINO checkpoint, `"encoder_q."` of MoCo); found automatically otherwise.
            config_kwargs:
                Other [`ConvirtConfig`] fields (tau, loss_lambda, projection, frozen_text_layers, ...);
                `text_tower_source` defaults to `text`.
                `frozen_text_layers` (default `"half"`, the paper's 6 of 12) is refused when a number would freeze
                every layer of this tower: pass `"all"` for a fully frozen text tower.

        Example:

        ```python
        >>> model = ConvirtModel.from_pretrained_towers("resnet50.tv_in1k", "emilyalsentzer/Bio_ClinicalBERT")
        ```
        """
        architecture, image_state, image_source = (
            ("", None, None) if image is None else load_image_tower_weights(str(image)))
        requested = config_kwargs.pop("image_model_name", None)
        if architecture and requested and requested != architecture:
            raise ValueError(
                f"image_model_name={requested!r} disagrees with the tower {image_source!r}, which is {architecture!r}"
            )
        image_model_name = architecture or requested or "resnet50"

        text_model = BertModel.from_pretrained(str(text), add_pooling_layer=False, dtype=torch.float32)
        if text_model.config.model_type != "bert":
            raise ValueError("The text tower must be a BERT-family model (model_type 'bert'), got "
                             f"{text_model.config.model_type!r}")
        text_config = copy.deepcopy(text_model.config)
        check_partial_text_freezing(config_kwargs.get("frozen_text_layers", "half"), text_config.num_hidden_layers)
        config_kwargs.setdefault("text_tower_source", str(text))
        config = ConvirtConfig(
            image_model_name=image_model_name,
            text_config=text_config.to_dict(),
            image_tower_source=image_source,
            **config_kwargs,
        )
        model = cls(config)
        if image_state is not None:
            model.load_image_tower_state(image_state, source=image_source, prefix=image_prefix)
        model.text_encoder.load_state_dict(text_model.state_dict(), strict=True)
        logger.warning(
            "ConvirtModel built from pretrained towers (%s, %s): the projection heads are newly initialised and need "
            "ConVIRT pretraining.",
            image_source or f"{image_model_name}, random initialisation",
            text,
        )
        return model

    def load_image_tower_state(
        self, state_dict: dict[str, torch.Tensor], source: str = "state dict", prefix: str | None = None
    ) -> None:
        """
        Loads image tower weights from a timm or torchvision state dict or a training checkpoint holding one (see
        [`load_tower_state`]); raises `ValueError` listing missing, unexpected and misshapen keys.
        """
        load_tower_state(self.image_encoder, state_dict, source, self.config.image_model_name, prefix=prefix)

    def image_encoder_pretrained_cfg(self) -> dict:
        """The timm `pretrained_cfg` describing how this model's image tower expects its input."""
        size = self.config.image_size
        pretrained_cfg = dict(self.image_encoder.pretrained_cfg)
        pretrained_cfg.update(
            architecture=self.config.image_model_name,
            input_size=(self.config.num_channels, size, size),
            fixed_input_size=False,
            interpolation="bicubic",
            crop_pct=0.875,
            crop_mode="center",
            mean=IMAGENET_DEFAULT_MEAN,
            std=IMAGENET_DEFAULT_STD,
            num_classes=0,
            tag="convirt",
            license=pretrained_cfg.get("license", None),
        )
        for key in ("hf_hub_id", "url", "file", "hf_hub_filename", "state_dict", "test_input_size", "test_crop_pct"):
            pretrained_cfg.pop(key, None)
        return {key: value for key, value in pretrained_cfg.items() if value is not None}

    def export_image_encoder(self, save_directory: str | os.PathLike) -> Path:
        r"""
        Writes the image tower as a plain timm model folder (`config.json` + `model.safetensors`), so that
        `timm.create_model("local-dir:" + save_directory, pretrained=True)` (or `"hf-hub:org/name"` once pushed) gives
        this encoder, with `num_classes=0` (pooled features).
        """
        from timm.models import save_for_hf

        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        tower = self.image_encoder
        original_cfg = tower.pretrained_cfg
        # torch types Module.__setattr__ for tensors and modules only; plain attributes such as timm's are fine
        tower.pretrained_cfg = self.image_encoder_pretrained_cfg()  # type: ignore[assignment]
        try:  # timm writes the config from the model's own pretrained_cfg
            save_for_hf(tower, str(save_directory), safe_serialization=True)
        finally:
            tower.pretrained_cfg = original_cfg
        return save_directory


__all__ = [
    "ConvirtModel",
    "ConvirtOutput",
    "ConvirtPreTrainedModel",
    "TverskyProjection",
    "contrastive_logits",
    "convirt_loss",
    "load_tower_state",
    "pool_text",
    "select_tower_state",
    "tversky_similarity",
]
