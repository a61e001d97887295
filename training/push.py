#!/usr/bin/env python
"""Publish a trained ConVIRT folder to the Hugging Face Hub: the full model repo and, optionally, the image encoder
as a timm model repo.

    hf auth login                                            # or export HF_TOKEN=...
    python training/push.py --model_dir outputs/convirt-demo --repo_id my-org/convirt-demo \\
        --timm_repo_id my-org/convirt-demo-resnet18 \\
        --evaluation outputs/linear_probe.json outputs/retrieval.json --dry_run
    python training/push.py --model_dir outputs/convirt-demo --repo_id my-org/convirt-demo \\
        --timm_repo_id my-org/convirt-demo-resnet18 --evaluation outputs/linear_probe.json outputs/retrieval.json
    python training/push.py --model_dir outputs/convirt-demo --repo_id my-org/convirt-demo \\
        --space_repo_id my-org/convirt-demo     # also a Gradio Space with the demo page (docs/demo.md)

Each repo is built as a folder first (`convirt_hf.hub.build_publish_folder`, `build_timm_folder`): safetensors
weights, config with the auto_map, remote code, processor and tokenizer files, and a README.md model card with the
evaluation results; then it is uploaded with one `create_repo` and one `upload_folder` call. `--space_repo_id` also
builds a Space folder (`convirt_hf.demo.space.build_space_folder`: app.py, requirements.txt, card, a small gallery)
that loads the model by its Hub id, and uploads it the same way as a Gradio Space. `--dry_run` builds the
folders (into --build_dir, default `<model_dir>-hub`) and prints what would be uploaded without contacting the Hub.
Without --build_dir a real push builds in a temporary folder that is removed afterwards. The token is checked before
anything is built and is never printed.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from convirt_hf.cli import argument_errors, check_folder_path, configure_logging, parse_arguments, run_cli
from convirt_hf.demo.space import build_space_folder
from convirt_hf.hub import (
    build_publish_folder,
    build_timm_folder,
    check_repo_id,
    check_revision,
    check_trained_folder,
    format_size,
    push,
    resolve_token,
)
from convirt_hf.hub_errors import PublishError
from convirt_hf.model_card import read_evaluation_file, select_model

logger = logging.getLogger("convirt_hf.push")

# The shape of the Hub's license identifiers (apache-2.0, cc-by-nc-4.0, openrail++, other): a value of any other shape
# is none of them, and the Hub would refuse the card's metadata only once the upload is under way.
LICENSE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")


@dataclass
class PushArguments:
    model_dir: str = field(metadata={"help": "a trained folder written by training/pretrain.py"})
    repo_id: str = field(metadata={"help": "the model repo, namespace/name"})
    timm_repo_id: str | None = field(
        default=None, metadata={"help": "also publish the image encoder as a timm model in this repo"})
    space_repo_id: str | None = field(
        default=None, metadata={"help": "also publish the demo page as a Gradio Space in this repo (docs/demo.md)"})
    evaluation: list[str] = field(
        default_factory=list,
        metadata={"help": "evaluation results JSON files (training/linear_probe.py, finetune.py, retrieval.py, "
                  "reproduce.py) for the card's table and model-index"},
    )
    evaluation_model: str | None = field(
        default=None, metadata={"help": "the model's name in the evaluation files, when it is not --model_dir's path"})
    license: str | None = field(
        default=None,
        metadata={"help": "the card's license (default: apache-2.0 for the synthetic corpus, else other)"})
    private: bool = field(default=False, metadata={"help": "create the repos private (existing repos keep theirs)"})
    revision: str | None = field(default=None, metadata={"help": "upload to this branch (created if absent)"})
    dry_run: bool = field(default=False, metadata={"help": "build the folders and list what would be uploaded"})
    build_dir: str | None = field(
        default=None, metadata={"help": "where to build: <build_dir>/model, /timm and /space (default: "
                                "<model_dir>-hub for a dry run, a temporary folder otherwise)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an earlier build in --build_dir"})
    commit_message: str = "Upload ConVIRT model"

    def __post_init__(self):
        # Every check that can fail runs here, before the token is looked up or anything is built or sent.
        with argument_errors("model_dir"):
            check_trained_folder(self.model_dir)
        with argument_errors("repo_id"):
            check_repo_id(self.repo_id)
        if self.timm_repo_id is not None:
            with argument_errors("timm_repo_id"):
                check_repo_id(self.timm_repo_id)
            if self.timm_repo_id == self.repo_id:
                raise ValueError("--timm_repo_id must differ from --repo_id: a timm encoder needs a repo of its own")
        if self.space_repo_id is not None:  # a Space may share its model's name: Spaces are another repo type
            with argument_errors("space_repo_id"):
                check_repo_id(self.space_repo_id)
        check_revision(self.revision)
        if self.license is not None and not LICENSE_PATTERN.match(self.license):
            raise ValueError(f"--license {self.license!r} is not a Hub license identifier (e.g. apache-2.0, mit, "
                             "cc-by-4.0 or other; see https://huggingface.co/docs/hub/repositories-licenses)")
        if not self.commit_message.strip():
            raise ValueError("--commit_message must not be empty")
        for path in self.evaluation:
            if not Path(path).expanduser().is_file():
                raise FileNotFoundError(f"--evaluation {path} does not exist")
        with argument_errors("evaluation"):
            evaluations = [read_evaluation_file(path) for path in self.evaluation]
        if self.evaluation_model is not None and not self.evaluation:
            raise ValueError("--evaluation_model only applies with --evaluation")
        for evaluation in evaluations:  # the card must be able to tell the model's rows from its baselines'
            with argument_errors("evaluation_model" if self.evaluation_model is not None else "evaluation"):
                select_model(evaluation, self.model_dir, self.evaluation_model)
        self._check_build_dir()

    def _check_build_dir(self) -> None:
        """An earlier build is only replaced with --overwrite, and a build never replaces the model folder."""
        if self.build_dir is None and not self.dry_run:
            return  # a temporary folder
        build_root = Path(self.build_dir).expanduser() if self.build_dir is not None else default_build_dir(self)
        name = "build_dir" if self.build_dir is not None else "build_dir (default <model_dir>-hub)"
        check_folder_path("build_dir", build_root)
        model_dir = Path(self.model_dir).expanduser().resolve()
        parts = ["model"] + ["timm"] * (self.timm_repo_id is not None) + ["space"] * (self.space_repo_id is not None)
        for part in parts:
            folder = build_root / part
            # a rebuild replaces the folder as a whole: it must never be, or hold, the model folder itself
            if folder.resolve() == model_dir or folder.resolve() in model_dir.parents:
                raise ValueError(f"--{name} {build_root}: its {part} folder would contain the model folder "
                                 f"{self.model_dir}; choose another")
            if folder.is_dir() and any(folder.iterdir()) and not self.overwrite:
                raise FileExistsError(f"--{name} {build_root} holds an earlier build ({folder}): pass --overwrite to "
                                      "rebuild it")


def default_build_dir(args: PushArguments) -> Path:
    """Where a dry run builds without --build_dir: beside the model folder, so that it is easy to find."""
    return Path(f"{Path(args.model_dir).expanduser().resolve()}-hub")


def print_plan(result: dict) -> None:
    total = sum(size for _, size in result["files"])
    kind = "the Space " if result.get("repo_type") == "space" else ""
    where = f"{kind}{result['repo_id']} ({result['revision']}{', private' if result['private'] else ''})"
    if not result["dry_run"] and not result.get("changed", True):
        print(f"\nNothing changed: {where} already holds these {len(result['files'])} files "
              f"({format_size(total)}) at commit {result.get('commit')} ({result['commit_url']}); nothing was "
              "uploaded.")
        return
    print(f"\n{'Would upload' if result['dry_run'] else 'Uploaded'} {len(result['files'])} files "
          f"({format_size(total)}) from {result['folder']} to {where}:")
    for name, size in result["files"]:
        print(f"  {format_size(size):>10}  {name}")
    if result["commit_url"]:
        print(f"  commit: {result['commit_url']}")


def publish(args: PushArguments, build_root: Path, api=None) -> dict:
    model_folder = build_publish_folder(
        args.model_dir, build_root / "model", args.repo_id, args.evaluation, overwrite=args.overwrite,
        evaluation_model=args.evaluation_model, timm_repo_id=args.timm_repo_id, license=args.license,
    )
    timm_folder = None
    if args.timm_repo_id is not None:
        timm_folder = build_timm_folder(args.model_dir, build_root / "timm", args.timm_repo_id,
                                        convirt_repo_id=args.repo_id, overwrite=args.overwrite, license=args.license)
    common = {"api": api, "private": args.private, "revision": args.revision, "dry_run": args.dry_run,
              "commit_message": args.commit_message}
    space_folder = None
    if args.space_repo_id is not None:
        space_folder = build_space_folder(build_root / "space", args.repo_id, overwrite=args.overwrite,
                                          license=args.license)
    results = {"model": push(model_folder, args.repo_id, **common), "timm": None, "space": None}
    print_plan(results["model"])
    if timm_folder is not None:
        results["timm"] = push(timm_folder, args.timm_repo_id, **common)
        print_plan(results["timm"])
    if space_folder is not None:  # after the model: the Space loads it by its Hub id
        results["space"] = push(space_folder, args.space_repo_id, repo_type="space", **common)
        print_plan(results["space"])
    return results


def main(argv: list[str] | None = None, api=None) -> dict:
    """Runs the CLI on `argv`; `api` replaces `huggingface_hub.HfApi()` (tests pass a fake). Returns the push plans."""
    (args, _preset) = parse_arguments((PushArguments,), argv, description=__doc__)
    configure_logging()
    # The arguments were checked as they were parsed; the token is the last thing that can fail before the build.
    if not args.dry_run:
        resolve_token(api)
    if args.build_dir is not None:
        build_root = Path(args.build_dir).expanduser()
        results = publish(args, build_root, api)
    elif args.dry_run:
        build_root = default_build_dir(args)
        results = publish(args, build_root, api)
    else:
        with tempfile.TemporaryDirectory(prefix="convirt-push-") as temporary:
            build_root = None
            results = publish(args, Path(temporary), api)
    if args.dry_run:
        print(f"\nDry run: nothing was uploaded. The folders are in {build_root}; run again without --dry_run "
              "(and with --overwrite if you pass this --build_dir) to publish them.")
    return {**results, "build_dir": None if build_root is None else str(build_root)}


def cli() -> None:
    run_cli(main, "convirt_hf.push", (PublishError,))


if __name__ == "__main__":
    cli()
