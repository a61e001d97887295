# Copyright 2026 The convirt-hf developers. Licensed under the Apache License, Version 2.0.
"""ConVIRT model configuration.

This file is self-contained (it imports only transformers) because it is copied next to the weights as remote code.
"""

import math
from typing import cast

from transformers import BertConfig, PretrainedConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)

PROJECTION_KINDS = ("mlp", "linear", "tversky")
# The Tversky projection's choices (Doumbouya et al., arXiv:2506.11035); the functions are in modeling_convirt.py, the
# names are repeated here so the configuration stays importable on its own.
TVERSKY_INTERSECTIONS = ("product", "min", "max", "mean", "gmean", "softmin")
TVERSKY_DIFFERENCES = ("ignorematch", "substractmatch")
TVERSKY_SIMILARITY_MODELS = ("contrast", "ratio")
TEXT_POOLING_KINDS = ("max", "mean", "cls")
# `frozen_text_layers` relative to the tower's depth: the paper freezes 6 of ClinicalBERT's 12 layers ("half").
FROZEN_TEXT_LAYER_WORDS = {"none": 0.0, "half": 0.5, "all": 1.0}


def _frozen_layers_fraction(spec) -> float | None:
    """The fraction of the layers a relative `frozen_text_layers` spec freezes; None for an absolute count."""
    if isinstance(spec, str):
        return FROZEN_TEXT_LAYER_WORDS[spec]
    return None if isinstance(spec, int) else float(spec)


def resolve_frozen_text_layers(spec, num_layers: int) -> int:
    """
    The number of leading text layers a `frozen_text_layers` spec freezes in a tower of `num_layers` layers: an
    integer count, a fraction in [0, 1] of the depth (rounded down, so only `"all"` or 1.0 freezes every layer), or
    one of the words `"none"`, `"half"` (the paper's 6 of 12) and `"all"`.
    """
    if isinstance(spec, bool) or not isinstance(spec, (int, float, str)):
        raise ValueError(f"frozen_text_layers must be a layer count, a fraction in [0, 1] or one of "
                         f"{sorted(FROZEN_TEXT_LAYER_WORDS)}, got {spec!r}")
    if isinstance(spec, str) and spec not in FROZEN_TEXT_LAYER_WORDS:
        raise ValueError(f"frozen_text_layers must be a layer count, a fraction in [0, 1] or one of "
                         f"{sorted(FROZEN_TEXT_LAYER_WORDS)}, got {spec!r}")
    fraction = _frozen_layers_fraction(spec)
    if fraction is None:
        if not 0 <= spec <= num_layers:
            raise ValueError(f"frozen_text_layers must be between 0 and the text tower's {num_layers} layers "
                             f"(text_config.num_hidden_layers), got {spec!r}")
        return cast(int, spec)  # _frozen_layers_fraction gives no fraction only for an int count
    if not 0.0 <= fraction <= 1.0:  # also false for NaN
        raise ValueError(f"frozen_text_layers as a fraction of the text tower's depth must be in [0, 1], got {spec!r}")
    return int(fraction * num_layers)


def check_partial_text_freezing(spec, num_layers: int) -> int:
    """
    Resolves `spec` like [`resolve_frozen_text_layers`] and refuses a number that freezes every layer of the tower:
    a count written for a deeper tower (the paper's 6 on a 6-layer BERT) would otherwise leave no text layer to train
    without a word. Freezing the whole tower is a choice to state as `"all"`.
    """
    count = resolve_frozen_text_layers(spec, num_layers)
    if count == num_layers > 0 and spec != "all":
        raise ValueError(
            f"frozen_text_layers={spec!r} freezes all {num_layers} layers of the text tower, leaving none to train. "
            f'Use "half" for the paper\'s rule (6 of 12 layers; {num_layers // 2} of {num_layers} here), a smaller '
            'count, or "all" if a fully frozen text tower is what you want.'
        )
    return count

# Written into every saved config so a folder or Hub repo loads with trust_remote_code=True and no installed package.
# register_for_auto_class keeps one auto class per Python class, so the map is filled here instead.
DEFAULT_AUTO_MAP = {
    "AutoConfig": "configuration_convirt.ConvirtConfig",
    "AutoModel": "modeling_convirt.ConvirtModel",
    "AutoModelForZeroShotImageClassification": "modeling_convirt.ConvirtModel",
}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_integer(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _positive_number(name: str, value) -> None:
    if not _is_number(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _non_negative_number(name: str, value) -> None:
    if not _is_number(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _unit_interval(name: str, value) -> None:
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def _choice(choices):
    def check(name: str, value) -> None:
        if value not in choices:
            raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return check


def _optional(check):
    return lambda name, value: None if value is None else check(name, value)


# The ConVIRT fields and their checks: ConvirtConfig and the pretraining script's arguments both validate with them.
CONVIRT_FIELD_CHECKS = {
    "projection": _choice(PROJECTION_KINDS),
    "projection_dim": _positive_integer,
    "projection_hidden_dim": _optional(_positive_integer),
    "tversky_num_features": _positive_integer,
    "tversky_alpha": _non_negative_number,
    "tversky_beta": _non_negative_number,
    "tversky_theta": _non_negative_number,
    "tversky_intersection": _choice(TVERSKY_INTERSECTIONS),
    "tversky_difference": _choice(TVERSKY_DIFFERENCES),
    "tversky_similarity": _choice(TVERSKY_SIMILARITY_MODELS),
    "tau": _positive_number,
    "loss_lambda": _unit_interval,
    "text_pooling": _choice(TEXT_POOLING_KINDS),
    "freeze_text_embeddings": _choice((True, False)),
    "num_channels": _positive_integer,
    "image_size": _positive_integer,
}


def check_convirt_fields(values: dict, num_text_layers: int | None = None) -> None:
    """
    Raises `ValueError` whose message starts with the field's name when one of `values` (ConVIRT field name -> value,
    any subset of `CONVIRT_FIELD_CHECKS` plus `frozen_text_layers`) is out of range. `frozen_text_layers` is checked
    against `num_text_layers` when the tower's depth is known, else only for its form.
    """
    for name, value in values.items():
        if name == "frozen_text_layers":
            resolve_frozen_text_layers(value, num_text_layers if num_text_layers is not None else 10**6)
        else:
            CONVIRT_FIELD_CHECKS[name](name, value)


class ConvirtConfig(PretrainedConfig):
    r"""
    Configuration of a [`ConvirtModel`]: a timm image tower and a BERT text tower, each followed by a projection head
    into a joint space, trained with the ConVIRT bidirectional contrastive loss (Zhang et al., 2020).

    The defaults are the paper's: ResNet-50, BERT-base, projection to 512 dimensions through a one-hidden-layer MLP,
    max pooling of the text tokens, tau = 0.1, lambda = 0.75, and the text embeddings plus the first half of the text
    layers (6 of 12) frozen.

    Args:
        image_model_name (`str`, *optional*, defaults to `"resnet50"`):
            timm architecture of the image tower (no pretrained tag: tower weights come from the checkpoint or from
            [`ConvirtModel.from_pretrained_towers`]).
        image_model_kwargs (`dict`, *optional*):
            Extra keyword arguments for `timm.create_model` (e.g. `{"drop_path_rate": 0.1}`).
        num_channels (`int`, *optional*, defaults to 3):
            Input channels of the image tower. Grayscale radiographs are replicated to 3 channels by the processor so
            that ImageNet-initialised towers can be used.
        image_size (`int`, *optional*, defaults to 224):
            Training and evaluation crop size; used by the processor and the exported timm config.
        text_config (`dict` or [`BertConfig`], *optional*):
            Configuration of the BERT text tower. Defaults to BERT-base.
        projection_dim (`int`, *optional*, defaults to 512):
            Dimension `d` of the joint embedding space.
        projection_hidden_dim (`int`, *optional*):
            Hidden width of the MLP heads. Defaults to each tower's own output width (2048 for ResNet-50, 768 for
            BERT-base), as in the paper.
        projection (`str`, *optional*, defaults to `"mlp"`):
            `"mlp"` (W2 ReLU(W1 h), the paper), `"linear"` (the paper's ablation) or `"tversky"`: one Tversky
            projection layer (Doumbouya, Jurafsky and Manning, 2025), the similarities of h to `projection_dim`
            learned prototypes over a learned feature bank, configured by the `tversky_*` fields.
        tversky_num_features (`int`, *optional*, defaults to 256):
            Size of each Tversky head's feature bank.
        tversky_alpha (`float`, *optional*, defaults to 0.5):
            Initial weight of the input's distinctive features f(X - P) (learned).
        tversky_beta (`float`, *optional*, defaults to 0.5):
            Initial weight of the prototype's distinctive features f(P - X) (learned).
        tversky_theta (`float`, *optional*, defaults to 1.0):
            Initial weight of the common features f(X n P) in the contrast model (learned).
        tversky_intersection (`str`, *optional*, defaults to `"product"`):
            How a shared feature's two measures combine: `"product"`, `"min"`, `"max"`, `"mean"`, `"gmean"` or
            `"softmin"`.
        tversky_difference (`str`, *optional*, defaults to `"substractmatch"`):
            `"ignorematch"` (features one object has and the other lacks) or `"substractmatch"` (the excess on
            shared features). `"ignorematch"` with `"product"` reduces to matrix products, the cheapest in memory.
        tversky_similarity (`str`, *optional*, defaults to `"contrast"`):
            `"contrast"` (theta f(X n P) - alpha f(X - P) - beta f(P - X)) or Tversky's `"ratio"` model.
        tau (`float`, *optional*, defaults to 0.1):
            Temperature of the contrastive loss. Named `tau` because `temperature` is a reserved generation argument.
        loss_lambda (`float`, *optional*, defaults to 0.75):
            Weight of the image-to-text term; `1 - loss_lambda` weighs text-to-image. 0.5 gives the symmetric CLIP loss.
        text_pooling (`str`, *optional*, defaults to `"max"`):
            `"max"` over all non-padding token vectors (the paper), `"mean"` over them, or `"cls"`.
        freeze_text_embeddings (`bool`, *optional*, defaults to `True`):
            Freeze the BERT embedding layer during training.
        frozen_text_layers (`int`, `float` or `str`, *optional*, defaults to `"half"`):
            Leading BERT layers whose weights are frozen: a count, a fraction of the tower's depth (rounded down), or
            `"none"`, `"half"` (the paper's 6 of 12) or `"all"`. Frozen parts run as a fixed feature extractor, in
            eval mode (no dropout) even while the model trains. [`~ConvirtConfig.num_frozen_text_layers`] gives the
            count.
        image_tower_source (`str`, *optional*):
            Where the image tower weights came from (a timm tag, Hub id or file name); informational, used by model
            cards.
        text_tower_source (`str`, *optional*):
            Where the text tower weights came from; informational.

    Example:

    ```python
    >>> from convirt_hf import ConvirtConfig, ConvirtModel

    >>> config = ConvirtConfig()  # ResNet-50 + BERT-base, the paper's settings
    >>> model = ConvirtModel(config)  # random weights; see ConvirtModel.from_pretrained_towers for the paper's init
    ```
    """

    model_type = "convirt"
    sub_configs = {"text_config": BertConfig}

    def __init__(
        self,
        image_model_name: str = "resnet50",
        image_model_kwargs: dict | None = None,
        num_channels: int = 3,
        image_size: int = 224,
        text_config: dict | BertConfig | None = None,
        projection_dim: int = 512,
        projection_hidden_dim: int | None = None,
        projection: str = "mlp",
        tversky_num_features: int = 256,
        tversky_alpha: float = 0.5,
        tversky_beta: float = 0.5,
        tversky_theta: float = 1.0,
        tversky_intersection: str = "product",
        tversky_difference: str = "substractmatch",
        tversky_similarity: str = "contrast",
        tau: float = 0.1,
        loss_lambda: float = 0.75,
        text_pooling: str = "max",
        freeze_text_embeddings: bool = True,
        frozen_text_layers: int | float | str = "half",
        image_tower_source: str | None = None,
        text_tower_source: str | None = None,
        **kwargs,
    ):
        if text_config is None:
            text_config = BertConfig()
        elif isinstance(text_config, dict):
            text_config = BertConfig(**{k: v for k, v in text_config.items() if k != "model_type"})
        elif not isinstance(text_config, BertConfig):
            raise TypeError(
                f"text_config must be a dict or a BertConfig, got {type(text_config).__name__}. ConVIRT's text tower "
                "is a BERT-family encoder."
            )

        self.image_model_name = image_model_name
        self.image_model_kwargs = dict(image_model_kwargs or {})
        self.num_channels = num_channels
        self.image_size = image_size
        self.text_config = text_config
        self.projection_dim = projection_dim
        self.projection_hidden_dim = projection_hidden_dim
        self.projection = projection
        self.tversky_num_features = tversky_num_features
        self.tversky_alpha = tversky_alpha
        self.tversky_beta = tversky_beta
        self.tversky_theta = tversky_theta
        self.tversky_intersection = tversky_intersection
        self.tversky_difference = tversky_difference
        self.tversky_similarity = tversky_similarity
        self.tau = tau
        self.loss_lambda = loss_lambda
        self.text_pooling = text_pooling
        self.freeze_text_embeddings = freeze_text_embeddings
        self.frozen_text_layers = frozen_text_layers
        self.image_tower_source = image_tower_source
        self.text_tower_source = text_tower_source
        kwargs.setdefault("auto_map", dict(DEFAULT_AUTO_MAP))
        super().__init__(**kwargs)
        self.validate_convirt_fields()

    def validate_convirt_fields(self) -> None:
        """Raises `ValueError` naming the field when a ConVIRT setting is out of range."""
        if not isinstance(self.image_model_name, str) or not self.image_model_name:
            raise ValueError("image_model_name must be a non-empty timm architecture name, got "
                             f"{self.image_model_name!r}")
        check_convirt_fields({name: getattr(self, name) for name in (*CONVIRT_FIELD_CHECKS, "frozen_text_layers")},
                             num_text_layers=self.text_config.num_hidden_layers)
        num_layers = self.text_config.num_hidden_layers
        if resolve_frozen_text_layers(self.frozen_text_layers, num_layers) == num_layers > 0 \
                and self.frozen_text_layers != "all":
            # a warning, not an error: saved folders must load (ConvirtModel.from_pretrained_towers and the
            # pretraining script refuse this setting before any training)
            logger.warning(
                "frozen_text_layers=%r freezes all %d text layers; write \"all\" if that is intended",
                self.frozen_text_layers, num_layers,
            )

    @property
    def num_frozen_text_layers(self) -> int:
        """The number of leading text layers `frozen_text_layers` freezes in this text tower."""
        return resolve_frozen_text_layers(self.frozen_text_layers, self.text_config.num_hidden_layers)

    @property
    def text_tower_frozen(self) -> bool:
        """True when no text-tower weight trains (embeddings and every layer frozen): its outputs never change."""
        return bool(self.freeze_text_embeddings) and self.num_frozen_text_layers == self.text_config.num_hidden_layers


__all__ = ["ConvirtConfig"]
