"""Publishing trained folders to the Hugging Face Hub through one injectable `HfApi`.

Everything (weights, code, processor files, README.md) is uploaded with a single ``upload_folder`` call, so the Hub
never shows a half-published repo or a generic card. Tests pass a fake API object; the token comes from the usual
Hugging Face mechanisms (``HF_TOKEN``, ``hf auth login``) and is never printed or logged.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
# Training by-products that are not part of a model repo.
IGNORE_PATTERNS = ["checkpoints/*", "best_model/*", "tokenizer/*", "runs/*", ".incomplete-*", "*.jsonl",
                   "convirt_run.json"]


def check_repo_id(repo_id: str) -> str:
    if not REPO_ID_PATTERN.match(repo_id or "") or "--" in repo_id or ".." in repo_id:
        raise ValueError(f"{repo_id!r} is not a valid Hub repo id: use 'organisation/name' (letters, digits, - _ .)")
    return repo_id


def push_folder(folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                api=None, commit_message: str = "Upload ConVIRT model") -> str:
    """Creates `repo_id` if needed and uploads `folder` in one commit; returns the commit URL."""
    folder = Path(folder)
    check_repo_id(repo_id)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise ValueError(f"{folder} is not a trained model folder (config.json and model.safetensors are required)")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id=repo_id, branch=revision, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        repo_type="model",
        folder_path=str(folder),
        revision=revision,
        commit_message=commit_message,
        ignore_patterns=IGNORE_PATTERNS,
    )
    url = getattr(commit, "commit_url", str(commit))
    logger.info("uploaded %s to %s", folder, repo_id)
    return url
