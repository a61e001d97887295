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

import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertModel, PreTrainedModel
from transformers.utils import ModelOutput, logging

from .configuration_convirt import ConvirtConfig

try:  # guarded init functions skip tensors already loaded from a checkpoint (transformers 5.x)
    from transformers import initialization as init
except ImportError:  # transformers 4.x: loaded weights are never re-initialised
    from torch.nn import init

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


PROJECTION_CLASSES = {"mlp": ConvirtMLPProjection, "linear": ConvirtLinearProjection}


def build_projection(kind: str, input_dim: int, output_dim: int, hidden_dim: int | None) -> nn.Module:
    return PROJECTION_CLASSES[kind](input_dim, output_dim, hidden_dim or input_dim)


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


def read_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Reads tower weights safely: safetensors, or a torch pickle restricted to tensors (weights_only=True)."""
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
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return state


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


def load_tower_state(
    tower: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "state dict", architecture: str = "the tower"
) -> None:
    """
    Loads a timm tower's weights strictly, after dropping classifier keys (`num_classes=0` towers have none); raises
    `ValueError` listing missing, unexpected and misshapen keys instead of a bare `load_state_dict` error.
    """
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(CLASSIFIER_PREFIXES)}
    expected = tower.state_dict()
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

        raise ValueError(
            f"The image tower weights from {source} do not fit {architecture!r}: "
            f"missing keys {listing(missing)}, unexpected keys {listing(unexpected)}, "
            f"shape mismatches {listing(misshapen)}"
        )
    tower.load_state_dict(state_dict, strict=True)


class ConvirtPreTrainedModel(PreTrainedModel):
    config_class = ConvirtConfig
    base_model_prefix = "convirt"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["BertLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Only the projection heads start from scratch here: the towers keep their own (timm/BERT) initialisation or
        # loaded weights; the generic PreTrainedModel init would wipe pretrained convolutions and BatchNorm statistics.
        if isinstance(module, tuple(PROJECTION_CLASSES.values())):
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
        self.image_projection = build_projection(
            config.projection, self.image_encoder.num_features, config.projection_dim, config.projection_hidden_dim
        )
        self.text_projection = build_projection(
            config.projection, config.text_config.hidden_size, config.projection_dim, config.projection_hidden_dim
        )
        self.freeze_text_layers()
        self.post_init()

    def freeze_text_layers(self) -> None:
        """Freezes the text embeddings and the first `config.frozen_text_layers` layers, as in the paper."""
        if self.config.freeze_text_embeddings:
            self.text_encoder.embeddings.requires_grad_(False)
        for layer in self.text_encoder.encoder.layer[: self.config.frozen_text_layers]:
            layer.requires_grad_(False)

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
        if input_ids is not None:
            text_pooled = self.encode_text(input_ids, attention_mask, token_type_ids)
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
        **config_kwargs,
    ) -> ConvirtModel:
        r"""
        Builds a ConVIRT model whose towers start from pretrained weights and whose projection heads are new: the
        paper's starting point (ImageNet ResNet-50 and ClinicalBERT).

        Args:
            image (`str` or `os.PathLike`, *optional*, defaults to `"resnet50.tv_in1k"`):
                A timm name with a pretrained tag, `"hf-hub:org/name"`, `"local-dir:/path"`, a local timm model
                folder, or a checkpoint file (`.safetensors`, or `.pt`/`.pth`/`.bin` read with
                `weights_only=True`) holding a timm or torchvision state dict; for a file, set `image_model_name`
                if the architecture is not ResNet-50. `None` keeps a randomly initialised `image_model_name` tower.
            text (`str` or `os.PathLike`, *optional*, defaults to `"emilyalsentzer/Bio_ClinicalBERT"`):
                Any BERT-family model id or local folder (`model_type` "bert").
            config_kwargs:
                Other [`ConvirtConfig`] fields (tau, loss_lambda, projection, frozen_text_layers, ...).

        Example:

        ```python
        >>> model = ConvirtModel.from_pretrained_towers("resnet50.tv_in1k", "emilyalsentzer/Bio_ClinicalBERT")
        ```
        """
        architecture, image_state, image_source = ("", None, None) if image is None else load_image_tower_weights(str(image))
        requested = config_kwargs.pop("image_model_name", None)
        if architecture and requested and requested != architecture:
            raise ValueError(
                f"image_model_name={requested!r} disagrees with the tower {image_source!r}, which is {architecture!r}"
            )
        image_model_name = architecture or requested or "resnet50"

        text_model = BertModel.from_pretrained(str(text), add_pooling_layer=False, dtype=torch.float32)
        if text_model.config.model_type != "bert":
            raise ValueError(f"The text tower must be a BERT-family model (model_type 'bert'), got {text_model.config.model_type!r}")
        text_config = copy.deepcopy(text_model.config)
        config = ConvirtConfig(
            image_model_name=image_model_name,
            text_config=text_config.to_dict(),
            image_tower_source=image_source,
            text_tower_source=str(text),
            **config_kwargs,
        )
        model = cls(config)
        if image_state is not None:
            model.load_image_tower_state(image_state, source=image_source)
        model.text_encoder.load_state_dict(text_model.state_dict(), strict=True)
        logger.warning(
            "ConvirtModel built from pretrained towers (%s, %s): the projection heads are newly initialised and need "
            "ConVIRT pretraining.",
            image_source or f"{image_model_name}, random initialisation",
            text,
        )
        return model

    def load_image_tower_state(self, state_dict: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Loads image tower weights, dropping classifier keys; raises listing missing, unexpected and misshapen keys."""
        load_tower_state(self.image_encoder, state_dict, source, self.config.image_model_name)

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
        tower.pretrained_cfg = self.image_encoder_pretrained_cfg()
        try:  # timm writes the config from the model's own pretrained_cfg
            save_for_hf(tower, str(save_directory), safe_serialization=True)
        finally:
            tower.pretrained_cfg = original_cfg
        return save_directory


__all__ = [
    "ConvirtModel",
    "ConvirtOutput",
    "ConvirtPreTrainedModel",
    "contrastive_logits",
    "convirt_loss",
    "load_tower_state",
    "pool_text",
]
