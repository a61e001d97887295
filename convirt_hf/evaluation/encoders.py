"""Image encoders for transfer evaluation: a ConVIRT model's image tower, any timm model, or a random baseline.

Every harness (linear probe, fine-tuning, embedding maps) takes an encoder *spec*, so that ConVIRT and its baselines
are evaluated by the very same code:

- a folder saved by [`ConvirtModel.save_pretrained`] (its `config.json` says `model_type: convirt`): the pretrained
  image tower f_v;
- ``"random:<timm architecture>"`` (e.g. ``"random:resnet50"``): the paper's random-initialisation baseline, seeded;
- a timm spec with pretrained weights: ``"resnet50.tv_in1k"`` (the paper's ImageNet baseline, downloaded by timm),
  ``"hf-hub:org/name"``, ``"local-dir:/path"`` or a local timm model folder (`config.json` with `architecture`);
- a checkpoint file (``.safetensors``; ``.pt``/``.pth``/``.bin`` read with ``weights_only=True``) holding a timm or
  torchvision state dict, with ``architecture`` naming the model it fits (default ResNet-50).

The encoder returns pooled features (timm's ``num_classes=0`` output, h_v in the paper), which is what the paper's
transfer experiments build on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["ImageEncoder", "check_image_encoder_spec", "load_image_encoder", "is_convirt_folder"]

RANDOM_PREFIX = "random:"
DEFAULT_ARCHITECTURE = "resnet50"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


@dataclass
class ImageEncoder:
    """
    A frozen-or-trainable image encoder and what the evaluation needs to know about it.

    Args:
        model (`nn.Module`): maps `pixel_values` `(N, 3, S, S)` to pooled features `(N, num_features)`.
        num_features (`int`): feature width.
        image_size (`int`): the input side the encoder was trained at (a ConVIRT model's `config.image_size`, else
            the timm default input size).
        source (`str`): the spec it was loaded from, as recorded in results.
        kind (`str`): `"convirt"`, `"timm"` or `"random"`.
    """

    model: nn.Module
    num_features: int
    image_size: int
    source: str
    kind: str


def is_convirt_folder(path: str | Path) -> bool:
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == "convirt"
    except (OSError, ValueError):
        return False


def _timm_input_size(model: nn.Module, default: int = 224) -> int:
    size = getattr(model, "pretrained_cfg", {}).get("input_size") or (3, default, default)
    return int(size[-1])


def _from_convirt_folder(folder: Path) -> ImageEncoder:
    from convirt_hf import ConvirtModel

    convirt = ConvirtModel.from_pretrained(folder, dtype=torch.float32)
    tower = convirt.image_encoder
    return ImageEncoder(tower, tower.num_features, int(convirt.config.image_size), str(folder), "convirt")


def _random(architecture: str, seed: int, image_size: int | None) -> ImageEncoder:
    import timm

    if not timm.is_model(architecture):
        raise ValueError(f"random:{architecture}: {architecture!r} is not a timm architecture")
    with torch.random.fork_rng():  # a seeded baseline without disturbing the caller's random stream
        torch.manual_seed(seed)
        tower = timm.create_model(architecture, pretrained=False, num_classes=0)
    size = image_size or _timm_input_size(tower)
    return ImageEncoder(tower, tower.num_features, size, f"{RANDOM_PREFIX}{architecture}", "random")


def _from_checkpoint(path: Path, architecture: str) -> ImageEncoder:
    import timm

    from convirt_hf.modeling.modeling_convirt import load_tower_state, read_state_dict_file, strip_state_dict_prefixes

    tower = timm.create_model(architecture, pretrained=False, num_classes=0)
    load_tower_state(tower, strip_state_dict_prefixes(read_state_dict_file(path)), str(path), architecture)
    return ImageEncoder(tower, tower.num_features, _timm_input_size(tower), str(path), "timm")


def check_image_encoder_spec(spec: str | Path, architecture: str | None = None) -> str:
    """
    What an encoder spec names, checked without building a model or downloading weights, so that a script can refuse
    a bad spec before any work: `"random"`, `"convirt"`, `"timm_folder"`, `"checkpoint"` or `"timm"`.

    Raises:
        `FileNotFoundError` for a path that does not exist or a folder that holds no model; `ValueError` for an
        unknown architecture or a spec that is none of the above (the errors [`load_image_encoder`] would raise).
    """
    import timm

    spec = str(spec)
    path = Path(spec).expanduser()
    if spec.startswith(RANDOM_PREFIX):
        name = spec[len(RANDOM_PREFIX) :] or architecture or DEFAULT_ARCHITECTURE
        if not timm.is_model(name):
            raise ValueError(f"random:{name}: {name!r} is not a timm architecture")
        return "random"
    if path.is_dir():
        if is_convirt_folder(path):
            return "convirt"
        if (path / "config.json").is_file():
            return "timm_folder"
        raise FileNotFoundError(f"{path} is neither a ConVIRT model folder nor a timm model folder (no config.json)")
    if path.is_file():
        name = architecture or DEFAULT_ARCHITECTURE
        if not timm.is_model(name):
            raise ValueError(f"checkpoint {spec}: architecture {name!r} is not a timm architecture")
        return "checkpoint"
    hub_or_local = spec.startswith(("hf-hub:", "local-dir:"))
    # timm names hold no "/": such a spec is a path (outputs/convirt-demo before `make pretrain` has written it)
    if spec.endswith(CHECKPOINT_SUFFIXES) or spec.startswith((".", "/", "~")) or ("/" in spec and not hub_or_local):
        raise FileNotFoundError(f"image encoder {spec!r} does not exist")
    if spec.startswith("local-dir:") and not Path(spec[len("local-dir:") :]).expanduser().is_dir():
        raise FileNotFoundError(f"image encoder {spec!r}: no such folder")
    if hub_or_local or timm.is_model(spec):
        return "timm"
    raise ValueError(
        f"image encoder {spec!r}: expected a ConVIRT folder, 'random:<timm architecture>', a timm name with a "
        "pretrained tag (e.g. 'resnet50.tv_in1k'), 'hf-hub:org/name', a timm folder or a checkpoint file"
    )


def load_image_encoder(
    spec: str | Path, architecture: str | None = None, seed: int = 0, image_size: int | None = None
) -> ImageEncoder:
    """
    Resolves an encoder spec (see the module docstring) to an [`ImageEncoder`] in eval mode on the CPU.

    Args:
        spec (`str` or `Path`): a ConVIRT folder, `"random:<arch>"`, a timm spec/folder, or a checkpoint file.
        architecture (`str`, *optional*): the timm architecture of a checkpoint file (default ResNet-50).
        seed (`int`, defaults to 0): seeds the random baseline's initialisation.
        image_size (`int`, *optional*): overrides the input side for random and timm encoders (a ConVIRT folder
            knows its own).

    Raises:
        `FileNotFoundError` for a path that does not exist; `ValueError` for an unknown architecture or weights
        that do not fit it.
    """
    spec = str(spec)
    path = Path(spec).expanduser()
    kind = check_image_encoder_spec(spec, architecture)
    if kind == "random":
        encoder = _random(spec[len(RANDOM_PREFIX) :] or architecture or DEFAULT_ARCHITECTURE, seed, image_size)
    elif kind == "convirt":
        encoder = _from_convirt_folder(path)
    elif kind == "timm_folder":
        encoder = _from_timm(f"local-dir:{path}", image_size)
    elif kind == "checkpoint":
        encoder = _from_checkpoint(path, architecture or DEFAULT_ARCHITECTURE)
    else:
        encoder = _from_timm(spec, image_size)
    if image_size is not None and encoder.kind != "convirt":
        encoder.image_size = int(image_size)
    encoder.model.eval()
    return encoder


def _from_timm(spec: str, image_size: int | None) -> ImageEncoder:
    import timm

    tower = timm.create_model(spec, pretrained=True, num_classes=0)
    return ImageEncoder(tower, tower.num_features, image_size or _timm_input_size(tower), spec, "timm")
