# Copyright 2026 The convirt-hf developers. Licensed under the Apache License, Version 2.0.
"""ConVIRT model configuration.

This file is self-contained (it imports only transformers) because it is copied next to the weights as remote code.
"""

from transformers import BertConfig, PretrainedConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)

PROJECTION_KINDS = ("mlp", "linear")
TEXT_POOLING_KINDS = ("max", "mean", "cls")

# Written into every saved config so a folder or Hub repo loads with trust_remote_code=True and no installed package.
# register_for_auto_class keeps one auto class per Python class, so the map is filled here instead.
DEFAULT_AUTO_MAP = {
    "AutoConfig": "configuration_convirt.ConvirtConfig",
    "AutoModel": "modeling_convirt.ConvirtModel",
    "AutoModelForZeroShotImageClassification": "modeling_convirt.ConvirtModel",
}


class ConvirtConfig(PretrainedConfig):
    r"""
    Configuration of a [`ConvirtModel`]: a timm image tower and a BERT text tower, each followed by a projection head
    into a joint space, trained with the ConVIRT bidirectional contrastive loss (Zhang et al., 2020).

    The defaults are the paper's: ResNet-50, BERT-base, projection to 512 dimensions through a one-hidden-layer MLP,
    max pooling of the text tokens, tau = 0.1, lambda = 0.75, and the text embeddings plus the first 6 of 12 text
    layers frozen.

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
            `"mlp"` (W2 ReLU(W1 h), the paper) or `"linear"` (the paper's ablation).
        tau (`float`, *optional*, defaults to 0.1):
            Temperature of the contrastive loss. Named `tau` because `temperature` is a reserved generation argument.
        loss_lambda (`float`, *optional*, defaults to 0.75):
            Weight of the image-to-text term; `1 - loss_lambda` weighs text-to-image. 0.5 gives the symmetric CLIP loss.
        text_pooling (`str`, *optional*, defaults to `"max"`):
            `"max"` over all non-padding token vectors (the paper), `"mean"` over them, or `"cls"`.
        freeze_text_embeddings (`bool`, *optional*, defaults to `True`):
            Freeze the BERT embedding layer during training.
        frozen_text_layers (`int`, *optional*, defaults to 6):
            Number of leading BERT layers whose weights are frozen.
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
        tau: float = 0.1,
        loss_lambda: float = 0.75,
        text_pooling: str = "max",
        freeze_text_embeddings: bool = True,
        frozen_text_layers: int = 6,
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
            raise ValueError(f"image_model_name must be a non-empty timm architecture name, got {self.image_model_name!r}")
        if self.projection not in PROJECTION_KINDS:
            raise ValueError(f"projection must be one of {PROJECTION_KINDS}, got {self.projection!r}")
        if self.text_pooling not in TEXT_POOLING_KINDS:
            raise ValueError(f"text_pooling must be one of {TEXT_POOLING_KINDS}, got {self.text_pooling!r}")
        if not float(self.tau) > 0:
            raise ValueError(f"tau must be > 0 (it divides the cosine similarities), got {self.tau!r}")
        if not 0.0 <= float(self.loss_lambda) <= 1.0:
            raise ValueError(f"loss_lambda must be in [0, 1], got {self.loss_lambda!r}")
        if int(self.projection_dim) <= 0:
            raise ValueError(f"projection_dim must be a positive integer, got {self.projection_dim!r}")
        if self.projection_hidden_dim is not None and int(self.projection_hidden_dim) <= 0:
            raise ValueError(f"projection_hidden_dim must be a positive integer or None, got {self.projection_hidden_dim!r}")
        if int(self.num_channels) <= 0:
            raise ValueError(f"num_channels must be a positive integer, got {self.num_channels!r}")
        if int(self.image_size) <= 0:
            raise ValueError(f"image_size must be a positive integer, got {self.image_size!r}")
        num_layers = self.text_config.num_hidden_layers
        if not 0 <= int(self.frozen_text_layers) <= num_layers:
            raise ValueError(
                f"frozen_text_layers must be between 0 and the text tower's {num_layers} layers "
                f"(text_config.num_hidden_layers), got {self.frozen_text_layers!r}"
            )


__all__ = ["ConvirtConfig"]
