"""The model behind the demo page: a ConVIRT folder or Hub id, checked, loaded, fingerprinted and summarised.

A folder is checked before anything heavy is imported (`check_model_folder`), so that the command line can refuse a
folder that is not ConVIRT with one line naming `--model`. A Hub id is downloaded with `huggingface_hub` (only the
files a model needs) and then goes through the same check.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = "outputs/convirt-demo"
HOW_TO_MAKE_ONE = ("make one with `make pretrain` (it writes outputs/convirt-demo), or pass --model with a ConVIRT "
                   "folder or a Hub id such as my-org/convirt-demo")
# What a model repo needs for the demo; a Hub download fetches only these (plus the card), never pickles.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.py", "vocab.txt", "README.md"]
MEDICAL_DEVICE_LINE = ("**Not a medical device.** This page demonstrates a research model; it must not be used for "
                       "diagnosis, triage or any other clinical decision, and its scores are not probabilities of "
                       "disease.")


class ModelLoadError(ValueError):
    """The model cannot serve the demo (not ConVIRT, incomplete, or unreachable); the message says why."""


def looks_like_path(spec: str) -> bool:
    """Whether `spec` can only be meant as a local path (a Hub id is exactly `namespace/name`)."""
    return spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").replace("/", "", 1) or "\\" in spec


def check_model_folder(folder: str | os.PathLike) -> Path:
    """
    Raises [`ModelLoadError`] unless `folder` holds a ConVIRT model: a `config.json` with model_type "convirt",
    safetensors weights and the processor files. Reads only small JSON files and the directory listing.
    """
    from convirt_hf.hub import safetensors_weights

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(f"{folder} is not a folder")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{folder} is not a ConVIRT model folder: it has no config.json")
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except (ValueError, AttributeError) as error:
        raise ModelLoadError(f"{folder} is not a ConVIRT model folder: config.json is not a JSON object ({error})") \
            from error
    if model_type != "convirt":
        raise ModelLoadError(f"{folder} is not a ConVIRT model folder: its config.json has model_type {model_type!r}, "
                             "not 'convirt'")
    try:
        weights = safetensors_weights(folder)
    except ValueError as error:
        raise ModelLoadError(str(error)) from error
    missing = [] if weights else ["model.safetensors"]
    missing += [name for name in ("processor_config.json", "tokenizer_config.json") if not (folder / name).is_file()]
    if missing:
        raise ModelLoadError(f"{folder} is not a complete ConVIRT model folder: missing {', '.join(missing)} "
                             "(pickled weights are never loaded)")
    return folder


def resolve_model(spec: str | os.PathLike) -> Path:
    """The local folder of `spec`: the folder itself, or the snapshot of a Hub repo (downloaded if needed)."""
    path = Path(spec).expanduser()
    if path.exists() or looks_like_path(str(spec)):
        if not path.exists():
            raise ModelLoadError(f"{spec}: no such folder")
        return check_model_folder(path)
    from huggingface_hub import snapshot_download

    from convirt_hf.hub import check_repo_id

    try:
        check_repo_id(str(spec))
    except ValueError as error:
        raise ModelLoadError(f"{spec} is neither a folder nor a Hub repo id ({error})") from error
    try:
        folder = snapshot_download(repo_id=str(spec), allow_patterns=HUB_PATTERNS)
    except Exception as error:  # network, auth and not-found errors of every kind end the same way for the user
        raise ModelLoadError(f"could not download the model {spec} from the Hub ({type(error).__name__}: {error}); "
                             "check the id, your connection, and HF_TOKEN for a private repo") from error
    return check_model_folder(folder)


def model_digest(folder: Path) -> str:
    """sha256 over the files that decide the embeddings: config, processor settings, tokenizer and weights."""
    from convirt_hf.hub import safetensors_weights

    digest = hashlib.sha256()
    names = ["config.json", "processor_config.json", "preprocessor_config.json", "tokenizer.json", "vocab.txt",
             "tokenizer_config.json", *safetensors_weights(folder)]
    for name in names:
        path = folder / name
        if not path.is_file():
            continue
        digest.update(f"{name}\n".encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def card_summary(folder: Path) -> tuple[str, str]:
    """
    `(title, summary)` from the model card's README.md: its first heading and the first paragraph under it (the
    card's description of the model); a short fallback when there is no card.
    """
    readme = folder / "README.md"
    text = readme.read_text(errors="replace") if readme.is_file() else ""
    if text.startswith("---"):  # YAML metadata first: the body starts after its closing line
        end = text.find("\n---", 3)
        text = text[end + 4:] if end != -1 else ""
    title: str | None = None
    paragraph: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if title is None:
            if stripped.startswith("# "):
                title = stripped[2:].strip()
            continue
        if stripped.startswith("#") or (not stripped and paragraph):
            if paragraph:
                break
            continue
        if stripped:
            paragraph.append(stripped)
    summary = " ".join(paragraph) or "This model folder has no model card (README.md) describing it."
    return title or folder.name, re.sub(r"\s+", " ", summary)


@dataclass
class DemoModel:
    """A loaded model with what the page shows about it and what keys its gallery cache."""

    spec: str
    folder: Path
    model: object
    processor: object
    device: object
    digest: str
    title: str
    summary: str
    tau: float
    details: dict = field(default_factory=dict)


def load_demo_model(spec: str | os.PathLike, device: str | None = None) -> DemoModel:
    """
    Loads a ConVIRT model for the demo, in eval mode, on `device` (default: cuda when available, else cpu).

    Raises:
        [`ModelLoadError`]: the folder or repo is not a loadable ConVIRT model; the message says why.
    """
    import torch

    from convirt_hf import ConvirtModel, ConvirtProcessor

    folder = resolve_model(spec)
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        model = ConvirtModel.from_pretrained(folder, dtype=torch.float32).to(torch_device).eval()
        processor = ConvirtProcessor.from_pretrained(folder)
    except Exception as error:  # a damaged folder fails deep inside transformers in many ways
        raise ModelLoadError(f"{spec} looks like a ConVIRT folder but could not be loaded "
                             f"({type(error).__name__}: {error})") from error
    title, summary = card_summary(folder)
    config = model.config
    details = {"image encoder": config.image_model_name, "image size": f"{config.image_size} px",
               "embedding": config.projection_dim, "tau": config.tau}
    logger.info("loaded the ConVIRT model %s from %s on %s", spec, folder, torch_device)
    return DemoModel(str(spec), folder, model, processor, torch_device, model_digest(folder), title, summary,
                     float(config.tau), details)
