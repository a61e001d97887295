"""Publishing trained ConVIRT folders to the Hugging Face Hub.

Publishing is two steps. [`build_publish_folder`] copies exactly what a model repo needs out of a training output
folder (safetensors weights, config with the auto_map, remote code, processor and tokenizer files) and renders the
README.md model card with the repo id and the evaluation results; [`build_timm_folder`] exports the image encoder as
a plain timm model. [`push`] then uploads one such folder with a single `HfApi.upload_folder` call, so the Hub never
shows a half-published repo or a generic card.

The `HfApi` is injectable (tests pass a fake that records calls). The token comes from the usual Hugging Face
mechanisms (`HF_TOKEN`, `hf auth login`, or an explicit argument); it is checked before anything is built or sent and
is never printed, logged or written to a file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from convirt_hf.atomic import swap_in_folder
from convirt_hf.hub_errors import hub_errors

logger = logging.getLogger(__name__)

REPO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
# Git ref names the Hub accepts for branches (a conservative subset of git-check-ref-format).
REVISION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,199}$")
REMOTE_CODE_FILES = ("configuration_convirt.py", "modeling_convirt.py", "processing_convirt.py")
# What pretrain.py writes beside the weights and the card needs: without them the card cannot say how it was trained.
RUN_FILES = ("training_args.json", "metrics.json")
PROCESSOR_FILES = ("processor_config.json",)
OPTIONAL_PROCESSOR_FILES = ("preprocessor_config.json", "tokenizer.json", "vocab.txt", "special_tokens_map.json",
                            "added_tokens.json")
# Pickle-based weight formats execute code when loaded: they are never copied or uploaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
REQUIRED_AUTO_MAP = {
    "AutoConfig": "configuration_convirt.ConvirtConfig",
    "AutoModel": "modeling_convirt.ConvirtModel",
    "AutoModelForZeroShotImageClassification": "modeling_convirt.ConvirtModel",
}
PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing_convirt.ConvirtProcessor"}
TOKEN_HELP = "set the HF_TOKEN environment variable or run `hf auth login` (a token with write access)"


class MissingTokenError(ValueError):
    """No Hugging Face token is available for an upload."""


# ---------------------------------------------------------------------------------------------------------------------
# Checks


def check_repo_id(repo_id: str) -> str:
    """Returns `repo_id` if it is a valid `namespace/name` Hub repo id, else raises `ValueError` naming it."""
    if not isinstance(repo_id, str) or not REPO_ID_PATTERN.match(repo_id) or "--" in repo_id or ".." in repo_id or (
        repo_id.endswith((".git", ".", "-"))
    ):
        raise ValueError(
            f"{repo_id!r} is not a valid Hub repo id: use 'namespace/name' with letters, digits, '-', '_' and '.' "
            "(no '--' or '..', at most 96 characters each side)"
        )
    return repo_id


def check_revision(revision: str | None) -> str | None:
    """Returns `revision` (a branch name, or None for main) if the Hub can create it, else raises `ValueError`."""
    if revision is None:
        return None
    if (not REVISION_PATTERN.match(revision) or ".." in revision or "//" in revision
            or revision.endswith(("/", ".lock"))):
        raise ValueError(f"--revision {revision!r} is not a valid branch name")
    return revision


def resolve_token(api=None, token: str | None = None) -> str:
    """
    The token an upload will use: `token`, else the api's own, else the one `huggingface_hub` finds (`HF_TOKEN`, the
    `hf auth login` file). Raises [`MissingTokenError`] when there is none; the token itself is never logged.
    """
    if token:
        return token
    api_token = getattr(api, "token", None)
    if isinstance(api_token, str) and api_token:
        return api_token
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise MissingTokenError(f"No Hugging Face token found: {TOKEN_HELP}. Nothing was uploaded.")
    return found


def check_push_ready(repo_id: str, api=None, token: str | None = None, revision: str | None = None) -> None:
    """Fails early (before training or building) when `push` would fail on the repo id, the revision or the token."""
    check_repo_id(repo_id)
    check_revision(revision)
    resolve_token(api, token)


def missing_trained_files(folder: str | os.PathLike) -> list[str]:
    """What a pretrain.py output folder needs for publishing and `folder` lacks (an empty list when complete)."""
    folder = Path(folder)
    missing = [name for name in ("config.json", *REMOTE_CODE_FILES, *PROCESSOR_FILES, "tokenizer_config.json",
                                 *RUN_FILES) if not (folder / name).is_file()]
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.txt").is_file():
        missing.append("tokenizer.json (or vocab.txt)")
    if not safetensors_weights(folder):
        missing.append("model.safetensors (or model.safetensors.index.json and its shards)")
    return missing


def safetensors_weights(folder: Path) -> list[str]:
    """The safetensors weight files of a folder: model.safetensors, or an index and every shard it names."""
    if (folder / "model.safetensors").is_file():
        return ["model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (KeyError, ValueError, AttributeError) as error:
            raise ValueError(f"{index} is not a safetensors index (no weight_map): {error}") from error
        absent = [shard for shard in shards if not (folder / shard).is_file()]
        if absent:
            raise ValueError(f"{folder}: the safetensors index names shards that are missing: {absent}")
        return ["model.safetensors.index.json", *shards]
    return []


def check_trained_folder(folder: str | os.PathLike) -> Path:
    """
    Raises unless `folder` is a trained ConVIRT folder (as written by `training/pretrain.py`) with safetensors
    weights; the error lists everything that is missing.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    missing = missing_trained_files(folder)
    pickled = sorted(path.name for path in folder.iterdir() if path.suffix in PICKLE_SUFFIXES and path.is_file())
    if pickled and any(name.startswith("model.safetensors") for name in missing):
        raise ValueError(
            f"{folder} holds pickled weights ({', '.join(pickled)}) but no safetensors: only safetensors weights are "
            "published. Re-save the model with save_pretrained(folder, safe_serialization=True)."
        )
    if missing:
        raise ValueError(
            f"{folder} is not a trained ConVIRT folder (written by training/pretrain.py): missing {', '.join(missing)}"
        )
    config = _read_json(folder / "config.json")
    if config.get("model_type") != "convirt":
        raise ValueError(f"{folder}/config.json has model_type {config.get('model_type')!r}, not 'convirt'")
    for name in safetensors_weights(folder):
        if name.endswith(".safetensors"):
            _check_safetensors(folder / name)
    return folder


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return value


def _check_safetensors(path: Path) -> None:
    # Reads the header only: a renamed pickle or a truncated download fails here, not on a user's machine.
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
    except Exception as error:  # safetensors raises its own error type for a bad header
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from error
    if not keys:
        raise ValueError(f"{path} holds no tensors")


# ---------------------------------------------------------------------------------------------------------------------
# Building folders


def _prepare_destination(out_dir: Path, trained_dir: Path, overwrite: bool, allowed: Sequence[str]) -> None:
    """Refuses to replace `out_dir` unless asked, and refuses to delete anything but an earlier build."""
    resolved, source = out_dir.resolve(), trained_dir.resolve()
    if resolved == source or resolved in source.parents:
        raise ValueError(f"the build folder {out_dir} would contain the model folder {trained_dir}: choose another")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    if not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"{out_dir} exists: pass overwrite=True (--overwrite) to rebuild it")
    foreign = sorted(path.name for path in out_dir.iterdir() if path.name not in allowed)
    if foreign:
        raise FileExistsError(
            f"{out_dir} holds files that a build does not write ({', '.join(foreign[:8])}): refusing to delete it; "
            "choose an empty or new build folder"
        )


def _replace(partial: Path, out_dir: Path) -> None:
    # The finished build replaces the old one by renames, so a failed build never leaves half a folder.
    swap_in_folder(partial, out_dir)


def _fill_auto_map(path: Path, required: dict) -> None:
    """Adds missing auto_map entries (folders saved before a class was registered lack them); keeps the rest as is."""
    value = _read_json(path)
    auto_map = dict(value.get("auto_map") or {})
    if all(auto_map.get(key) == target for key, target in required.items()):
        return
    auto_map.update(required)
    value["auto_map"] = auto_map
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def model_folder_files(trained_dir: Path) -> list[str]:
    """The files of `trained_dir` that go into the model repo (before README.md is rendered)."""
    names = [*safetensors_weights(trained_dir), "config.json", *REMOTE_CODE_FILES, *PROCESSOR_FILES,
             "tokenizer_config.json"]
    names += [name for name in OPTIONAL_PROCESSOR_FILES if (trained_dir / name).is_file()]
    return list(dict.fromkeys(names))


def build_publish_folder(trained_dir: str | os.PathLike, out_dir: str | os.PathLike, repo_id: str,
                         evaluation_files: Sequence[str | os.PathLike] = (), overwrite: bool = False, *,
                         evaluation_model: str | None = None, timm_repo_id: str | None = None,
                         license: str | None = None) -> Path:
    r"""
    Builds the folder of a Hub model repo from a trained ConVIRT folder.

    The folder holds exactly: the safetensors weights, `config.json` (its auto_map covering AutoConfig, AutoModel and
    AutoModelForZeroShotImageClassification), the remote code files, `processor_config.json` (auto_map AutoProcessor)
    and the tokenizer files, plus a README.md model card rendered for `repo_id` with the evaluation results.
    Checkpoints, logs, `training_args.json` and `metrics.json` stay behind (their content is in the card); pickled
    weights are never copied.

    Args:
        trained_dir (`str` or `os.PathLike`): a `training/pretrain.py` output folder.
        out_dir (`str` or `os.PathLike`): the folder to build; must not exist or be empty unless `overwrite`.
        repo_id (`str`): the Hub repo the folder is for (`namespace/name`), used in the card.
        evaluation_files (`Sequence`, *optional*): evaluation results JSON files (linear probe, fine-tune, retrieval,
            reproduce) whose summary means go into the card's table and model-index.
        overwrite (`bool`, *optional*, defaults to `False`): replace an earlier build in `out_dir`.
        evaluation_model (`str`, *optional*): the model's name in the evaluation files when it cannot be matched to
            `trained_dir` by path.
        timm_repo_id (`str`, *optional*): the repo of the exported timm encoder, linked from the card.
        license (`str`, *optional*): the card's license (default: apache-2.0 for the synthetic corpus, else "other").

    Returns:
        `Path` of the built folder.

    Raises:
        `ValueError` for a bad repo id, a folder that is not a trained ConVIRT folder (listing what is missing),
        pickled-only weights or an unusable evaluation file; `FileNotFoundError` for missing folders or files;
        `FileExistsError` when `out_dir` holds something and `overwrite` is not set.
    """
    from convirt_hf import ConvirtConfig
    from convirt_hf.model_card import read_evaluation_file, write_model_card

    check_repo_id(repo_id)
    if timm_repo_id is not None:
        check_repo_id(timm_repo_id)
    trained_dir = check_trained_folder(trained_dir)
    out_dir = Path(out_dir).expanduser()
    # Every input is read before anything is written, so a bad evaluation file leaves no half-built folder.
    evaluations = [read_evaluation_file(path) for path in evaluation_files]
    files = model_folder_files(trained_dir)
    _prepare_destination(out_dir, trained_dir, overwrite, allowed=[*files, "README.md"])
    arguments = _read_json(trained_dir / "training_args.json")
    metrics = _read_json(trained_dir / "metrics.json")
    config = ConvirtConfig.from_pretrained(trained_dir)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        for name in files:
            shutil.copy2(trained_dir / name, partial / name)
        _fill_auto_map(partial / "config.json", REQUIRED_AUTO_MAP)
        _fill_auto_map(partial / "processor_config.json", PROCESSOR_AUTO_MAP)
        write_model_card(partial, config, arguments, metrics, repo_id, evaluations=evaluations,
                         evaluation_model=evaluation_model, model_dir=trained_dir, timm_repo_id=timm_repo_id,
                         license=license)
        _replace(partial, out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.info("built the model repo folder %s for %s (%d files)", out_dir, repo_id, len(files) + 1)
    return out_dir


def build_timm_folder(trained_dir: str | os.PathLike, out_dir: str | os.PathLike, repo_id: str | None = None, *,
                      convirt_repo_id: str | None = None, overwrite: bool = False, license: str | None = None) -> Path:
    r"""
    Exports the image encoder of a trained ConVIRT folder as a timm model repo folder: `config.json` (architecture,
    `pretrained_cfg`), `model.safetensors` and a short README.md, so that
    `timm.create_model("hf-hub:<repo_id>", pretrained=True)` (or `"local-dir:<out_dir>"`) gives the encoder.

    Args:
        trained_dir (`str` or `os.PathLike`): a `training/pretrain.py` output folder.
        out_dir (`str` or `os.PathLike`): the folder to build; must not exist or be empty unless `overwrite`.
        repo_id (`str`, *optional*): the timm repo the folder is for, used in the card.
        convirt_repo_id (`str`, *optional*): the full model's repo, the card's `base_model`.
        overwrite (`bool`, *optional*, defaults to `False`): replace an earlier build in `out_dir`.
        license (`str`, *optional*): as for [`build_publish_folder`].

    Returns:
        `Path` of the built folder.
    """
    import torch
    from huggingface_hub import ModelCard

    from convirt_hf import ConvirtModel
    from convirt_hf.model_card import PAPER_URL, write_timm_model_card

    for name in (repo_id, convirt_repo_id):
        if name is not None:
            check_repo_id(name)
    trained_dir = check_trained_folder(trained_dir)
    out_dir = Path(out_dir).expanduser()
    _prepare_destination(out_dir, trained_dir, overwrite, allowed=["config.json", "model.safetensors", "README.md"])
    arguments = _read_json(trained_dir / "training_args.json")
    model = ConvirtModel.from_pretrained(trained_dir, dtype=torch.float32).eval()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        model.export_image_encoder(partial)
        config_path = partial / "config.json"
        timm_config = _read_json(config_path)
        pretrained_cfg = timm_config.setdefault("pretrained_cfg", {})
        # The cfg starts from timm's ImageNet entry for the architecture: its paper, origin and license describe
        # those weights, not these.
        pretrained_cfg.pop("origin_url", None)
        pretrained_cfg["paper_ids"] = f"arXiv:{PAPER_URL.rsplit('/', 1)[-1]}"
        card_path = write_timm_model_card(partial, model.config, repo_id, convirt_repo_id=convirt_repo_id,
                                          arguments=arguments, license=license)
        pretrained_cfg["license"] = ModelCard.load(card_path).data.license
        config_path.write_text(json.dumps(timm_config, indent=2) + "\n")
        _replace(partial, out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.info("exported the image encoder of %s as a timm folder %s", trained_dir, out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------------------------------------
# Uploading


def folder_files(folder: Path) -> list[tuple[str, int]]:
    """`(relative path, size in bytes)` of every file under `folder`, sorted."""
    return sorted((path.relative_to(folder).as_posix(), path.stat().st_size)
                  for path in folder.rglob("*") if path.is_file())


def format_size(size: int) -> str:
    scaled: float = size
    for unit in ("B", "KB", "MB", "GB"):
        if scaled < 1024 or unit == "GB":
            return f"{scaled:.0f} {unit}" if unit == "B" else f"{scaled:.1f} {unit}"
        scaled /= 1024
    return f"{scaled} B"


def check_publish_folder(folder: str | os.PathLike) -> Path:
    """Raises unless `folder` is a built repo folder: a README.md card, a config, safetensors weights, no pickles."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"folder to upload {folder} does not exist")
    missing = [name for name in ("README.md", "config.json") if not (folder / name).is_file()]
    if not any(path.suffix == ".safetensors" for path in folder.iterdir()):
        missing.append("*.safetensors weights")
    if missing:
        raise ValueError(
            f"{folder} is not a folder built for the Hub (missing {', '.join(missing)}): build it with "
            "convirt_hf.hub.build_publish_folder or build_timm_folder (training/push.py does both)"
        )
    pickled = [name for name, _ in folder_files(folder) if Path(name).suffix in PICKLE_SUFFIXES]
    if pickled:
        raise ValueError(f"{folder} holds pickled files ({', '.join(pickled)}): only safetensors weights are uploaded")
    return folder


def check_space_folder(folder: str | os.PathLike) -> Path:
    """Raises unless `folder` is a built Space folder: app.py, requirements.txt and a README.md card."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"Space folder to upload {folder} does not exist")
    missing = [name for name in ("app.py", "requirements.txt", "README.md") if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder} is not a Space folder (missing {', '.join(missing)}): build it with "
                         "convirt_hf.demo.space.build_space_folder (training/push.py --space_repo_id does)")
    return folder


def _checked_upload_folder(folder: str | os.PathLike, repo_type: str) -> Path:
    """The folder to upload, checked as what its repo type holds: a model folder, or the demo's Space folder."""
    if repo_type not in ("model", "space"):
        raise ValueError(f"repo_type must be 'model' or 'space', got {repo_type!r}")
    if repo_type == "space":
        return check_space_folder(folder)
    return check_publish_folder(folder)


def push(folder: str | os.PathLike, repo_id: str, api=None, private: bool = False, revision: str | None = None,
         dry_run: bool = False, token: str | None = None, commit_message: str = "Upload ConVIRT model",
         repo_type: str = "model") -> dict:
    r"""
    Uploads a built folder to a Hub model repo (or the demo's Space repo) in one commit.

    Everything is checked first (the repo id, the revision, the folder, the token), then `create_repo` (exist_ok)
    runs once, `create_branch` once when `revision` names a branch other than main, and `upload_folder` once.

    Args:
        folder (`str` or `os.PathLike`): a folder from [`build_publish_folder`] or [`build_timm_folder`].
        repo_id (`str`): `namespace/name`.
        api (`huggingface_hub.HfApi`, *optional*): the client to use (default: a new `HfApi`); tests pass a fake.
        private (`bool`, *optional*, defaults to `False`): create the repo private (an existing repo keeps its
            visibility).
        revision (`str`, *optional*): a branch to upload to (created from main if absent); default main.
        dry_run (`bool`, *optional*, defaults to `False`): only list the files and sizes that would be uploaded;
            no token is needed and the api is not called.
        token (`str`, *optional*): a token; default the api's or the one `huggingface_hub` finds (`HF_TOKEN`,
            `hf auth login`). Never logged.
        commit_message (`str`, *optional*): the commit's message.
        repo_type (`str`, *optional*, defaults to `"model"`): `"space"` uploads a folder built by
            `convirt_hf.demo.space.build_space_folder` to a Gradio Space repo.

    Returns:
        `dict` with `repo_id`, `repo_type`, `revision`, `private`, `dry_run`, `folder`, `files` (`[path, bytes]`
        pairs), `commit_url` and `commit` (the commit's id; None for a dry run), and `changed` (False when the repo
        already held exactly these files: the Hub then makes no commit and `commit` is the one already there).

    Raises:
        `ValueError` for a bad repo id, revision or folder; [`MissingTokenError`] (a `ValueError`) when no token is
        available; [`~convirt_hf.hub_errors.PublishError`] when the Hub rejects the token, the token may not write
        there, or the Hub cannot be reached (one line, never the token).
    """
    check_repo_id(repo_id)
    check_revision(revision)
    folder = _checked_upload_folder(folder, repo_type)
    files = folder_files(folder)
    total = sum(size for _, size in files)
    branch = revision if revision not in (None, "main") else None
    plan = {"repo_id": repo_id, "repo_type": repo_type, "revision": revision or "main", "private": private,
            "dry_run": dry_run, "folder": str(folder), "files": [[name, size] for name, size in files],
            "commit_url": None}
    if dry_run:
        logger.info("dry run: would upload %d files (%s) from %s to %s (%s%s)", len(files), format_size(total), folder,
                    repo_id, f"branch {branch}" if branch else "main", ", private" if private else "")
        for name, size in files:  # the script prints this list; the log keeps it for library callers at debug level
            logger.debug("  %10s  %s", format_size(size), name)
        return plan

    resolve_token(api, token)  # raises before the api is built or called
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token, library_name="convirt-hf")
    # An explicit token goes to each call; otherwise the api resolves its own, as huggingface_hub does.
    auth = {"token": token} if token else {}
    # a Space repo is created with its SDK, which the Hub needs to build it
    space = {"space_sdk": "gradio"} if repo_type == "space" else {}
    with hub_errors(repo_id, token):
        api.create_repo(repo_id=repo_id, repo_type=repo_type, private=private, exist_ok=True, **space, **auth)
        if branch is not None:
            api.create_branch(repo_id=repo_id, branch=branch, repo_type=repo_type, exist_ok=True, **auth)
        head = api.repo_info(repo_id=repo_id, repo_type=repo_type, revision=branch, **auth).sha
        commit = api.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=str(folder), revision=branch,
                                   commit_message=commit_message, **auth)
    plan["commit_url"] = getattr(commit, "commit_url", None) or str(commit)
    plan["commit"] = getattr(commit, "oid", None)
    # the Hub skips a commit that would change nothing and answers with the commit already there
    plan["changed"] = plan["commit"] is None or plan["commit"] != head
    if plan["changed"]:
        logger.info("uploaded %d files (%s) to %s: %s", len(files), format_size(total), repo_id, plan["commit_url"])
    else:
        logger.info("nothing changed: %s already holds these %d files at commit %s", repo_id, len(files), head)
    return plan


def push_folder(folder: str | os.PathLike, repo_id: str, *, private: bool = False, revision: str | None = None,
                api=None, commit_message: str = "Upload ConVIRT model") -> str:
    """
    Publishes a trained folder (what `training/pretrain.py --push_to_hub` calls): builds the repo folder in a
    temporary directory with [`build_publish_folder`], then [`push`]es it. Returns the commit URL.
    """
    check_push_ready(repo_id, api, revision=revision)
    with tempfile.TemporaryDirectory(prefix="convirt-push-") as temporary:
        built = build_publish_folder(folder, Path(temporary) / "model", repo_id)
        result = push(built, repo_id, api=api, private=private, revision=revision, commit_message=commit_message)
    return result["commit_url"]
