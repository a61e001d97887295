"""Every argument of the evaluation and auxiliary scripts refuses its invalid values before any work, naming itself.

Each script has a table mapping every argument (dataclass field, or argparse destination) to invalid values and a
fragment of the expected message, which names the argument's flag. A case adds its values to the script's baseline
command line, which on its own reaches the work (`test_baseline_reaches_the_work`): so a refusal can only come from
the value under test. The first step of each script's real work (generating or loading a corpus, building an encoder,
starting the Accelerator, building a Hub folder, reading rows) is a tripwire, and the workspace every path points into
must be byte for byte the same afterwards: refusing writes nothing, and an existing output is left as it was.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from convirt_hf.cli import USER_ERRORS
from convirt_hf.data import preprocess
from convirt_hf.data.synthetic import TEXT_QUERIES
from convirt_hf.demo import cli as demo
from convirt_hf.hub import REMOTE_CODE_FILES
from convirt_hf.training import finetune, linear_probe, push, reproduce, retrieval

EXISTING_CONTENT = "an earlier run's output\n"


class WorkStarted(BaseException):
    """Raised by the first step of a script's work. A BaseException, so that no `except Exception` can hide it."""


@dataclass(frozen=True)
class Case:
    argument: str
    argv: tuple[str, ...]
    message: str
    # Values given through a --config preset: an empty list cannot be written on the command line.
    preset: dict | None = None
    # ("file" | "folder", path template): an earlier output that must exist beforehand and be left unchanged.
    existing: tuple[str, str] | None = None
    label: str = ""


def case(argument: str, *argv: str, message: str, preset: dict | None = None, existing=None,
         label: str | None = None) -> Case:
    return Case(argument, argv, message, preset, existing, label or " ".join(argv) or f"preset {preset}")


@dataclass
class Script:
    name: str
    main: Callable  # main(argv): raises a user error on refusal (preprocess: prints it, returns 2)
    arguments: dict[str, str]  # every argument the script takes -> its flag
    baseline: tuple[str, ...]
    exempt: dict[str, str] = field(default_factory=dict)  # argument -> why no value of it is invalid


def dataclass_arguments(cls) -> dict[str, str]:
    return {item.name: f"--{item.name}" for item in dataclasses.fields(cls) if item.init}


def argparse_arguments(parser) -> dict[str, str]:
    return {action.dest: max(action.option_strings, key=len) for action in parser._actions
            if action.option_strings and action.dest != "help"}


SCRIPTS = {
    "linear_probe": Script(
        "linear_probe", linear_probe.main, dataclass_arguments(linear_probe.LinearProbeArguments),
        ("--encoders", "{convirt}", "random:test_resnet", "--tasks", "category", "--fractions", "0.5", "1",
         "--seeds", "0", "--cache_dir", "{cache}", "--output", "{out}/probe.json"),
        exempt={"overwrite": "a flag: both values are valid"},
    ),
    "finetune": Script(
        "finetune", finetune.main, dataclass_arguments(finetune.FinetuneArguments),
        ("--encoder", "random:test_resnet", "--task", "category", "--cache_dir", "{cache}", "--output_dir",
         "{out}/finetune"),
        exempt={"overwrite_output_dir": "a flag: both values are valid"},
    ),
    "retrieval": Script(
        "retrieval", retrieval.main, dataclass_arguments(retrieval.RetrievalArguments),
        ("--models", "{convirt}", "--cache_dir", "{cache}", "--output", "{out}/retrieval.json"),
        exempt={"overwrite": "a flag: both values are valid",
                "zero_shot": "a flag: both values are valid (its options have cases of their own)"},
    ),
    "reproduce": Script(
        "reproduce", reproduce.main, dataclass_arguments(reproduce.ReproduceArguments),
        ("--output_dir", "{out}/reproduce", "--cache_dir", "{cache}", "--taus", "0.1", "--seeds", "0"),
        exempt={"overwrite": "a flag: both values are valid"},
    ),
    "push": Script(
        "push", push.main, dataclass_arguments(push.PushArguments),
        ("--model_dir", "{trained}", "--repo_id", "org/convirt-tiny", "--dry_run", "--build_dir", "{out}/build"),
        exempt={"private": "a flag: both values are valid", "dry_run": "a flag: both values are valid",
                "overwrite": "a flag: both values are valid"},
    ),
    "demo": Script(
        "demo", demo.main, dataclass_arguments(demo.DemoArguments),
        ("--model", "{trained}", "--gallery", "{gallery}", "--cache_dir", "{out}/demo-cache"),
        exempt={"share": "a flag: both values are valid"},
    ),
    "preprocess": Script(
        "preprocess", preprocess.main, argparse_arguments(preprocess.build_parser()),
        ("--source", "{manifest}", "--output", "{tmp}/shards", "-q"),
        exempt={"strict": "a flag: both values are valid", "overwrite": "a flag: both values are valid",
                "quiet": "a flag: both values are valid"},
    ),
}

NAN, INF = "nan", "inf"

CASES = {
    "linear_probe": [
        case("encoders", message="--encoders needs at least one encoder", preset={"encoders": []}),
        case("encoders", "--encoders", "{missing}/model.safetensors", message="--encoders: image encoder"),
        case("encoders", "--encoders", "{empty}", message="--encoders: ", label="a folder that holds no model"),
        case("encoders", "--encoders", "random:no_such_net", message="--encoders: random:no_such_net"),
        case("encoders", "--encoders", "no_such_net", message="--encoders: image encoder 'no_such_net'"),
        case("encoders", "--encoders", "outputs/convirt-demo", message="'outputs/convirt-demo' does not exist",
             label="the default, before make pretrain"),
        case("dataset", "--dataset", "{missing}", message="--dataset {missing}: no such folder"),
        case("dataset", "--dataset", "{empty}", message="--dataset {empty} is not a saved DatasetDict"),
        case("train_split", "--train_split", "nope", message="--train_split 'nope' is not a split"),
        case("train_split", "--dataset", "{dataset}", "--train_split", "cls_train",
             message="--train_split 'cls_train' is not a split of {dataset}"),
        case("validation_split", "--validation_split", "nope", message="--validation_split 'nope' is not a split"),
        case("test_split", "--test_split", "nope", message="--test_split 'nope' is not a split"),
        case("tasks", "--tasks", "ordinal:a,b", message="--tasks: task 'ordinal:a,b'"),
        case("tasks", "--tasks", "category", "category", message="--tasks names a task twice"),
        case("tasks", message="--tasks needs at least one task", preset={"tasks": []}),
        case("fractions", "--fractions", "0", message="--fractions must be in (0, 1], got 0.0"),
        case("fractions", "--fractions", "0.1", "1.5", message="--fractions must be in (0, 1], got 1.5"),
        case("fractions", "--fractions", NAN, message="--fractions must be in (0, 1], got nan"),
        case("fractions", message="--fractions needs at least one", preset={"fractions": []}),
        case("seeds", "--seeds", "0", "-1", message="--seeds must be >= 0, got -1"),
        case("seeds", message="--seeds needs at least one seed", preset={"seeds": []}),
        case("architecture", "--architecture", "no_such_net", message="--architecture 'no_such_net' is not a timm"),
        case("image_size", "--image_size", "0", message="--image_size must be > 0"),
        case("eval_mode", "--eval_mode", "stretch", message="--eval_mode must be one of"),
        case("head", "--head", "mlp", message="--head must be one of"),
        case("tversky_num_features", "--head", "tversky", "--tversky_num_features", "0",
             message="--tversky_num_features must be > 0"),
        case("tversky_steps", "--tversky_steps", "-3", message="--tversky_steps must be > 0"),
        case("batch_size", "--batch_size", "0", message="--batch_size must be > 0"),
        case("num_workers", "--num_workers", "-1", message="--num_workers must be >= 0"),
        case("cache_dir", "--cache_dir", "{file}", message="--cache_dir {file} is a file"),
        case("cache_dir", "--cache_dir", "{file}/cache", message="--cache_dir {file}/cache: {file} is a file"),
        case("synthetic_seed", "--synthetic_seed", "-1", message="--synthetic_seed must be >= 0"),
        case("synthetic_pretrain_size", "--synthetic_pretrain_size", "0",
             message="--synthetic_pretrain_size must be > 0"),
        case("output", message="--output {out}/probe.json exists: pass --overwrite",
             existing=("file", "{out}/probe.json"), label="an existing file without --overwrite"),
        case("output", "--output", "{empty}", "--overwrite", message="--output {empty} is a folder"),
        case("output", "--output", "{file}/probe.json", message="--output {file}/probe.json: {file} is a file"),
    ],
    "finetune": [
        case("encoder", "--encoder", "{missing}/weights.pt", message="--encoder: image encoder"),
        case("encoder", "--encoder", "{empty}", message="--encoder: ", label="a folder that holds no model"),
        case("encoder", "--encoder", "random:no_such_net", message="--encoder: random:no_such_net"),
        case("dataset", "--dataset", "{missing}", message="--dataset {missing}: no such folder"),
        case("dataset", "--dataset", "{empty}", message="--dataset {empty} is not a saved DatasetDict"),
        case("train_split", "--train_split", "nope", message="--train_split 'nope' is not a split"),
        case("validation_split", "--validation_split", "nope", message="--validation_split 'nope' is not a split"),
        case("test_split", "--dataset", "{dataset}", "--test_split", "holdout",
             message="--test_split 'holdout' is not a split of {dataset}"),
        case("task", "--task", "ordinal:a,b", message="--task: task 'ordinal:a,b'"),
        case("task", "--task", "binary:a,b", message="--task: task 'a': a binary task has one"),
        case("fraction", "--fraction", "0", message="--fraction must be in (0, 1]"),
        case("fraction", "--fraction", "1.5", message="--fraction must be in (0, 1]"),
        case("fraction", "--fraction", NAN, message="--fraction must be in (0, 1]"),
        case("seeds", "--seeds", "-3", message="--seeds must be >= 0, got -3"),
        case("seeds", message="--seeds needs at least one seed", preset={"seeds": []}),
        case("architecture", "--architecture", "no_such_net", message="--architecture 'no_such_net' is not a timm"),
        case("image_size", "--image_size", "-32", message="--image_size must be > 0"),
        case("augmentation", "--augmentation", "heavy", message="--augmentation must be none or one of"),
        case("per_device_batch_size", "--per_device_batch_size", "0", message="--per_device_batch_size must be > 0"),
        case("learning_rate", "--learning_rate", "0", message="--learning_rate must be > 0"),
        case("learning_rate", "--learning_rate", NAN, message="--learning_rate must be > 0 (a finite number)"),
        case("learning_rate", "--learning_rate", INF, message="--learning_rate must be > 0 (a finite number)"),
        case("head_learning_rate", "--head_learning_rate=-1e-3", message="--head_learning_rate must be > 0"),
        case("head_warmup_steps", "--head_warmup_steps", "-1", message="--head_warmup_steps must be >= 0"),
        case("weight_decay", "--weight_decay=-1e-6", message="--weight_decay must be >= 0"),
        case("weight_decay", "--weight_decay", NAN, message="--weight_decay must be >= 0 (a finite number)"),
        case("dropout", "--dropout", "1", message="--dropout must be in [0, 1)"),
        case("dropout", "--dropout", "-0.1", message="--dropout must be in [0, 1)"),
        case("dropout", "--dropout", NAN, message="--dropout must be in [0, 1)"),
        case("max_epochs", "--max_epochs", "0", message="--max_epochs must be > 0"),
        case("plateau_patience", "--plateau_patience", "-1", message="--plateau_patience must be >= 0"),
        case("early_stopping_patience", "--early_stopping_patience", "-1",
             message="--early_stopping_patience must be >= 0"),
        case("mixed_precision", "--mixed_precision", "fp8", message="--mixed_precision must be no, fp16 or bf16"),
        case("num_workers", "--num_workers", "-2", message="--num_workers must be >= 0"),
        case("cache_dir", "--cache_dir", "{file}", message="--cache_dir {file} is a file"),
        case("synthetic_seed", "--synthetic_seed", "-1", message="--synthetic_seed must be >= 0"),
        case("synthetic_pretrain_size", "--synthetic_pretrain_size", "-5",
             message="--synthetic_pretrain_size must be > 0"),
        case("output_dir", message="--output_dir {out}/finetune is not empty: pass --overwrite_output_dir",
             existing=("folder", "{out}/finetune"), label="a folder with results, without --overwrite_output_dir"),
        case("output_dir", "--output_dir", "{file}", "--overwrite_output_dir", message="--output_dir {file} is a file"),
    ],
    "retrieval": [
        case("models", message="--models needs at least one", preset={"models": []}),
        case("models", "--models", "{missing}/model.safetensors", message="--models: image encoder"),
        case("models", "--models", "{convirt}", "{empty}", message="--models: {empty} is neither a ConVIRT model "
             "folder nor a timm model folder"),
        case("models", "--models", "random:no_such_net", message="--models: random:no_such_net"),
        case("features", "--features", "pooled", message="--features must be one of"),
        case("features", "--models", "{convirt}", "random:resnet18", "--features", "projection",
             message="--features projection: random:resnet18 is a random encoder without a projection head"),
        case("architecture", "--architecture", "no_such_net", message="--architecture 'no_such_net' is not a timm"),
        case("image_size", "--image_size", "0", message="--image_size must be > 0"),
        case("retrieval_set", "--retrieval_set", "{missing}", message="--retrieval_set {missing}: no such folder"),
        case("retrieval_set", "--retrieval_set", "{dataset}",
             message="--retrieval_set {dataset} is not a retrieval set"),
        case("chexpert_csv", "--chexpert_csv", "{missing}.csv", "--retrieval_set_output", "{out}/set",
             message="--chexpert_csv {missing}.csv: no such file"),
        case("chexpert_csv", "--chexpert_csv", "{csv}", message="--chexpert_csv needs --retrieval_set_output"),
        case("chexpert_csv", "--chexpert_csv", "{csv}", "--retrieval_set_output", "{out}/set", "--retrieval_set",
             "{retrieval_set}", message="--chexpert_csv builds the retrieval set: do not pass --retrieval_set"),
        case("chexpert_root", "--chexpert_csv", "{csv}", "--retrieval_set_output", "{out}/set", "--chexpert_root",
             "{missing}", message="--chexpert_root {missing}: no such folder"),
        case("chexpert_root", "--chexpert_root", "{empty}", message="--chexpert_root only applies with --chexpert_csv"),
        case("retrieval_set_output", "--chexpert_csv", "{csv}", "--retrieval_set_output", "{out}/set",
             message="--retrieval_set_output {out}/set exists: pass --overwrite", existing=("folder", "{out}/set"),
             label="an earlier set without --overwrite"),
        case("retrieval_set_output", "--chexpert_csv", "{csv}", "--retrieval_set_output", "{file}", "--overwrite",
             message="--retrieval_set_output {file} is a file"),
        case("retrieval_set_output", "--retrieval_set_output", "{out}/set",
             message="--retrieval_set_output only applies with --chexpert_csv"),
        case("candidates_per_category", "--candidates_per_category", "0",
             message="--candidates_per_category must be > 0"),
        case("queries_per_category", "--queries_per_category", "-1", message="--queries_per_category must be > 0"),
        case("chexpert_seed", "--chexpert_seed", "-1", message="--chexpert_seed must be >= 0"),
        case("include_lateral", "--include_lateral", message="--include_lateral only applies with --chexpert_csv"),
        case("exclude_other_findings", "--exclude_other_findings",
             message="--exclude_other_findings only applies with --chexpert_csv"),
        case("text_queries", "--text_queries", "{missing}.json", message="--text_queries {missing}.json: no such file"),
        case("text_queries", "--text_queries", "{file}", message="--text_queries: text queries file {file} is not "
                                                                 "valid JSON"),
        case("text_queries", "--text_queries", "{empty_queries}",
             message="--text_queries: {empty_queries}: category 'edema' needs a non-empty list"),
        case("ks", "--ks", "5", "0", message="--ks must be positive integers"),
        case("ks", "--ks", "-10", message="--ks must be positive integers"),
        case("zero_shot_dataset", "--zero_shot_dataset", "{dataset}",
             message="--zero_shot_dataset only applies with --zero_shot"),
        case("zero_shot_dataset", "--zero_shot", "--zero_shot_dataset", "{missing}",
             message="--zero_shot_dataset {missing}: no such folder"),
        case("zero_shot_dataset", "--zero_shot", "--zero_shot_dataset", "{empty}",
             message="--zero_shot_dataset {empty} is not a saved DatasetDict"),
        case("zero_shot_split", "--zero_shot", "--zero_shot_split", "nope",
             message="--zero_shot_split 'nope' is not a split of the synthetic corpus"),
        case("zero_shot_split", "--zero_shot", "--zero_shot_dataset", "{dataset}",
             message="--zero_shot_split 'cls_test' is not a split of {dataset}",
             label="the default, absent from the set"),
        case("zero_shot_tasks", "--zero_shot", "--zero_shot_tasks", "ordinal:a", message="--zero_shot_tasks: task"),
        case("zero_shot_tasks", "--zero_shot", "--zero_shot_tasks", "binary:nodule",
             message="--zero_shot_tasks nodule: no prompts for ['nodule']"),
        case("zero_shot_tasks", "--zero_shot", message="--zero_shot_tasks needs at least one task",
             preset={"zero_shot_tasks": []}),
        case("prompts", "--prompts", "{prompts}", message="--prompts only applies with --zero_shot"),
        case("prompts", "--zero_shot", "--prompts", "{missing}.json", message="--prompts {missing}.json: no such file"),
        case("prompts", "--zero_shot", "--prompts", "{file}", message="--prompts: text queries file {file} is not "
                                                                      "valid JSON"),
        case("embedding_map", "--embedding_map", "{out}/map.jpg", message="--embedding_map must be a .png path"),
        case("embedding_map", "--embedding_map", "{out}/map.png", message="--embedding_map {out}/map.png exists",
             existing=("file", "{out}/map.png"), label="an existing map without --overwrite"),
        case("embedding_map", "--embedding_map", "{file}/map.png",
             message="--embedding_map {file}/map.png: {file} is a file"),
        case("embedding_map_methods", "--embedding_map_methods", "tsne", "pca",
             message="--embedding_map_methods must be among tsne, umap"),
        case("seed", "--seed", "-1", message="--seed must be >= 0"),
        case("batch_size", "--batch_size", "0", message="--batch_size must be > 0"),
        case("device", "--device", "gpu", message="--device 'gpu' is not a torch device"),
        case("device", "--device", "cuda:99", message="--device cuda:99: this machine has"),
        case("device", "--device", "meta", message="--device 'meta': expected cpu, cuda"),
        case("cache_dir", "--cache_dir", "{file}", message="--cache_dir {file} is a file"),
        case("synthetic_seed", "--synthetic_seed", "-7", message="--synthetic_seed must be >= 0"),
        case("synthetic_pretrain_size", "--synthetic_pretrain_size", "0",
             message="--synthetic_pretrain_size must be > 0"),
        case("output", message="--output {out}/retrieval.json exists: pass --overwrite",
             existing=("file", "{out}/retrieval.json"), label="an existing file without --overwrite"),
        case("output", "--output", "{empty}", "--overwrite", message="--output {empty} is a folder"),
    ],
    "reproduce": [
        case("output_dir", "--output_dir", "{file}", message="--output_dir {file} is a file"),
        case("output_dir", message="--output_dir {out}/reproduce holds the results of an earlier call (results.json)",
             existing=("file", "{out}/reproduce/results.json"), label="an earlier call's results, without --overwrite"),
        case("pretrained", "--pretrained", "{empty}", message="--pretrained {empty} is not a finished pretraining run"),
        case("pretrained", "--pretrained", "{finished_not_convirt}",
             message="--pretrained {finished_not_convirt} is not a ConVIRT model folder"),
        case("pretrained", "--pretrained", "{finished_other}",
             message="--pretrained {finished_other} was not trained as the tables' main run (preset demo, tau 0.1, "
                     "seed 42): "),
        case("taus", "--taus", "0.01", "1", message="--taus must include 0.1"),
        case("taus", "--taus", "0.1", "0", message="--taus must be > 0"),
        case("taus", "--taus", "0.1", NAN, message="--taus must be > 0 (a finite number)"),
        case("taus", "--taus", "0.1", "0.1", message="--taus lists a temperature twice"),
        case("pretrain_config", "--pretrain_config", "no_such_preset",
             message="--pretrain_config: --config 'no_such_preset': no such YAML file or preset"),
        case("pretrain_overrides", "--pretrain_overrides", "--max_steps '10", message="is not a valid shell string"),
        case("pretrain_overrides", "--pretrain_overrides", "--no_such_argument 1",
             message="training/pretrain.py has no argument --no_such_argument"),
        case("pretrain_overrides", "--pretrain_overrides", "--max_steps many", message="invalid int value: 'many'"),
        case("pretrain_overrides", "--pretrain_overrides", "--report_to none --output_dir elsewhere",
             message="--pretrain_overrides must not set --output_dir"),
        case("tasks", "--tasks", "ordinal:a,b", message="--tasks: task 'ordinal:a,b'"),
        case("tasks", "--tasks", "pneumonia", "binary:pneumonia", message="--tasks names a task twice"),
        case("tasks", message="--tasks needs at least one task", preset={"tasks": []}),
        case("fractions", "--fractions", "0", message="--fractions must be in (0, 1]"),
        case("fractions", message="--fractions needs at least one", preset={"fractions": []}),
        case("seeds", "--seeds", "-1", message="--seeds must be >= 0"),
        case("seeds", message="--seeds needs at least one seed", preset={"seeds": []}),
        case("pretrain_overrides", "--pretrain_overrides", "--projection linear",
             message="--pretrain_overrides must not set --projection"),
        case("ablation_task", "--ablation_task", "multiclass:one", message="--ablation_task: task"),
        case("pretrain_seeds", "--pretrain_seeds", "-1", message="--pretrain_seeds must be >= 0"),
        case("pretrain_seeds", "--pretrain_seeds", "42", "42", message="--pretrain_seeds lists a seed twice"),
        case("pretrain_seeds", message="--pretrain_seeds needs at least one seed", preset={"pretrain_seeds": []}),
        case("pretrain_overrides", "--pretrain_overrides", "--seed 3",
             message="--pretrain_overrides must not set --seed"),
        case("projections", "--projections", "mlp", "conv", message="--projections must be one of"),
        case("projections", "--projections", "mlp", "tversky", "mlp",
             message="--projections lists a projection twice"),
        case("probe_heads", "--probe_heads", "knn", message="--probe_heads must be one of"),
        case("probe_heads", "--probe_heads", "tversky", "tversky", message="--probe_heads lists a head twice"),
        case("imagenet", "--imagenet", "no_such_net", message="--imagenet: image encoder 'no_such_net'"),
        case("imagenet", "--imagenet", "{missing}/resnet.safetensors", message="--imagenet: image encoder"),
        case("markdown", "--markdown", "{empty}", message="--markdown {empty} is a folder"),
        case("markdown", "--markdown", "{out}/results.md", message="--markdown {out}/results.md exists",
             existing=("file", "{out}/results.md"), label="an existing file without --overwrite"),
        case("maps_dir", "--maps_dir", "{file}", message="--maps_dir {file} is a file"),
        case("maps_dir", "--maps_dir", "{out}/maps",
             message="--maps_dir {out}/maps holds the results of an earlier call (tsne-ConVIRT.png)",
             existing=("file", "{out}/maps/tsne-ConVIRT.png"), label="an earlier call's maps, without --overwrite"),
        case("cache_dir", "--cache_dir", "{file}", message="--cache_dir {file} is a file"),
        case("synthetic_seed", "--synthetic_seed", "-1", message="--synthetic_seed must be >= 0"),
        case("synthetic_pretrain_size", "--synthetic_pretrain_size", "0",
             message="--synthetic_pretrain_size must be > 0"),
        case("batch_size", "--batch_size", "0", message="--batch_size must be > 0"),
    ],
    "push": [
        case("model_dir", "--model_dir", "{missing}", message="--model_dir: model folder {missing} does not exist"),
        case("model_dir", "--model_dir", "{convirt}", message="--model_dir: {convirt} is not a trained ConVIRT folder"),
        case("repo_id", "--repo_id", "convirt-tiny", message="--repo_id: 'convirt-tiny' is not a valid Hub repo id"),
        case("repo_id", "--repo_id", "org/convirt--tiny", message="--repo_id: 'org/convirt--tiny' is not a valid"),
        case("timm_repo_id", "--timm_repo_id", "org/convirt tiny", message="--timm_repo_id: 'org/convirt tiny'"),
        case("timm_repo_id", "--timm_repo_id", "org/convirt-tiny", message="--timm_repo_id must differ from --repo_id"),
        case("evaluation", "--evaluation", "{missing}.json", message="--evaluation {missing}.json does not exist"),
        case("evaluation", "--evaluation", "{file}", message="--evaluation: evaluation file {file} is not valid JSON"),
        case("evaluation", "--evaluation", "{prompts}", message="--evaluation: {prompts} is not an evaluation results"),
        case("evaluation_model", "--evaluation_model", "nobody",
             message="--evaluation_model only applies with --evaluation"),
        case("evaluation_model", "--evaluation", "{evaluation}", "--evaluation_model", "nobody",
             message="--evaluation_model: {evaluation} has no rows for model 'nobody'"),
        case("license", "--license", "apache 2.0", message="--license 'apache 2.0' is not a Hub license identifier"),
        case("license", "--license", "", message="--license '' is not a Hub license identifier"),
        case("revision", "--revision", "bad..branch", message="--revision 'bad..branch' is not a valid branch name"),
        case("build_dir", message="--build_dir {out}/build holds an earlier build",
             existing=("folder", "{out}/build/model"),
             label="an earlier build without --overwrite"),
        case("build_dir", "--build_dir", "{file}", "--overwrite", message="--build_dir {file} is a file"),
        case("build_dir", "--build_dir", "{tmp}/runs", "--overwrite",
             message="--build_dir {tmp}/runs: its model folder would contain the model folder"),
        case("space_repo_id", "--space_repo_id", "org/convirt tiny demo",
             message="--space_repo_id: 'org/convirt tiny demo' is not a valid Hub repo id"),
        case("commit_message", "--commit_message", "", message="--commit_message must not be empty"),
        case("commit_message", "--commit_message", "   ", message="--commit_message must not be empty"),
    ],
    "demo": [
        case("model", message="--model: no model given and outputs/convirt-demo does not exist; make one with",
             preset={"model": None}, label="the default, before make pretrain"),
        case("model", "--model", "{missing}", message="--model {missing}: no such folder"),
        case("model", "--model", "{empty}", message="--model: {empty} is not a ConVIRT model folder: it has no"),
        case("model", "--model", "{bert}", message="--model: {bert} is not a ConVIRT model folder: its config.json "
                                                   "has model_type 'bert'"),
        case("model", "--model", "{convirt}", message="--model: {convirt} is not a complete ConVIRT model folder"),
        case("model", "--model", "org/convirt--tiny", message="--model: 'org/convirt--tiny' is neither a folder nor"),
        case("gallery", "--gallery", "{missing}", message="--gallery {missing}: no such folder"),
        case("gallery", "--gallery", "{file}", message="--gallery {file}: no such folder (it is a file)"),
        case("gallery", "--gallery", "{empty}", message="--gallery {empty} holds no images"),
        case("gallery_split", "--gallery_split", "test", message="--gallery_split only applies when --gallery is a "
                                                                 "saved corpus"),
        case("gallery_split", "--gallery", "{retrieval_set}", "--gallery_split", "nope",
             message="--gallery_split 'nope' is not a split of {retrieval_set}"),
        case("cache_dir", "--cache_dir", "{file}", message="--cache_dir {file} is a file"),
        case("host", "--host", "http://127.0.0.1", message="--host 'http://127.0.0.1' is not an address to listen"),
        case("host", "--host", "", message="--host '' is not an address to listen on"),
        case("port", "--port", "0", message="--port must be in 1..65535, got 0"),
        case("port", "--port", "70000", message="--port must be in 1..65535, got 70000"),
        case("top_k", "--top_k", "0", message="--top_k must be > 0"),
        case("top_k", "--top_k", "51", message="--top_k must be at most 50"),
        case("max_upload_mb", "--max_upload_mb", "0", message="--max_upload_mb must be > 0"),
        case("max_upload_mb", "--max_upload_mb", NAN, message="--max_upload_mb must be > 0 (a finite number)"),
        case("max_image_megapixels", "--max_image_megapixels=-1", message="--max_image_megapixels must be > 0"),
        case("batch_size", "--batch_size", "0", message="--batch_size must be > 0"),
        case("device", "--device", "gpu", message="--device 'gpu' is not a torch device"),
    ],
    "preprocess": [
        case("source", "--source", "{missing}.csv", message="--source {missing}.csv: no such file or folder"),
        case("source", "--source", "{file}", message="--source: {file}: cannot tell what kind"),
        case("kind", "--kind", "tarball", message="argument --kind: invalid choice"),
        case("output", message="--output {tmp}/shards already exists; pass --overwrite",
             existing=("folder", "{tmp}/shards"),
             label="an existing folder without --overwrite"),
        case("output", "--output", "{file}", "--overwrite", message="--output {file} is a file"),
        case("output", "--output", "{file}/shards", message="--output {file}/shards: {file} is a file"),
        case("size", "--size", "0", message="--size must be > 0"),
        case("split", "--split", "=test", message="--split '=test'"),
        case("split", "--split", "train", "train", message="--split names an output split twice"),
        case("holdout", "--holdout", "validation=0", message="--holdout validation=0: the fraction must be in (0, 1)"),
        case("holdout", "--holdout", "validation=1.5", message="the fraction must be in (0, 1)"),
        case("holdout", "--holdout", "validation=nan", message="the fraction must be in (0, 1)"),
        case("holdout", "--holdout", "train=0.1", message="--holdout train=0.1: 'train' is the rest"),
        case("holdout", "--holdout", "validation=0.1", "validation=0.2",
             message="--holdout names the split 'validation' twice"),
        case("holdout", "--holdout", "validation=0.5", "test=0.5", message="--holdout fractions sum to 1.0"),
        case("holdout", "--holdout", "validation", message="--holdout 'validation': expected NAME=FRACTION"),
        case("holdout", "--holdout", "val/1=0.1", message="--holdout 'val/1': a split name is"),
        case("holdout", "--holdout", "validation=0.1", "--split", "train",
             message="--holdout cannot be combined with --split"),
        case("seed", "--seed", "1", message="--seed only applies with --holdout"),
        case("seed", "--holdout", "validation=0.1", "--seed", "-1", message="--seed must be >= 0"),
        case("seed", "--seed", "one", message="argument --seed: invalid int value"),
        case("views", "--views", "PA", "", message="--views must be view names"),
        case("views", "--kind", "openi", "--source", "{empty}", "--views", "PA", message="--views: Open-i has no"),
        case("report_mode", "--report-mode", "everything", message="argument --report-mode: invalid choice"),
        case("min_tokens", "--min-tokens", "-1", message="--min-tokens must be >= 0"),
        case("num_proc", "--num-proc", "0", message="--num-proc must be > 0"),
        case("max_shard_size", "--max-shard-size", "lots", message="--max-shard-size 'lots' is not a size"),
        case("max_pixels", "--max-pixels", "-1", message="--max-pixels must be > 0"),
        case("max_logged_per_reason", "--max-logged-per-reason", "many", message="argument --max-logged-per-reason"),
        case("image_column", "--image-column", "picture", message="--image-column"),
        case("text_column", "--text-column", "report", message="--text-column"),
        case("label_columns", "--label-columns", "Edema", message="--label-columns"),
        case("label_names_column", "--label-names-column", "findings", message="--label-names-column"),
        case("id_column", "--id-column", "uid", message="--id-column"),
        case("patient_column", "--patient-column", "subject", message="--patient-column"),
        case("study_column", "--study-column", "exam", message="--study-column"),
        case("view_column", "--view-column", "position", message="--view-column"),
        case("view_column", "--kind", "openi", "--source", "{empty}", "--view-column", "view",
             message="view_column: not used by kind='openi'"),
        case("config_name", "--config-name", "default", message="--config-name only applies to --kind hub"),
        case("revision", "--revision", "main", message="--revision only applies to --kind hub"),
        case("data_dir", "--data-dir", "data", message="--data-dir only applies to --kind hub"),
        case("reports_root", "--reports-root", "{empty}", message="--reports-root only applies to --kind mimic-cxr"),
        case("reports_root", "--kind", "mimic-cxr", "--source", "{empty}", "--reports-root", "{missing}",
             message="--reports-root {missing}: no such folder"),
        case("image_root", "--image-root", "{empty}", message="--image-root only applies to --kind chexpert-plus"),
        case("labels", "--labels", "umls", message="--labels must be one of"),
        case("labels", "--labels", "negbio", message="--labels only applies to --kind mimic-cxr"),
        case("labels_file", "--kind", "chexpert-plus", "--source", "{empty}", "--labels-file", "{missing}.jsonl",
             message="--labels-file {missing}.jsonl: no such file"),
        case("uncertain", "--uncertain", "maybe", message="argument --uncertain: invalid choice"),
        case("uncertain", "--uncertain", "positive", message="--uncertain only applies to --kind"),
    ],
}

ALL_CASES = [pytest.param(script, invalid, id=f"{script} --{invalid.argument}: {invalid.label}")
             for script, cases in CASES.items() for invalid in cases]


# --- the workspace every path points into ----------------------------------------------------------------------------


def write_json(path: Path, value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


def build_workspace(root: Path) -> dict[str, str]:
    """The files and folders the command lines name, as small as validation allows (no model, no image data)."""
    paths = {"tmp": root, "missing": root / "missing", "cache": root / "cache", "out": root / "out",
             "empty": root / "empty", "file": root / "file.txt", "csv": root / "chexpert" / "train.csv"}
    paths["empty"].mkdir()
    paths["file"].write_text("not JSON, not a folder\n")
    paths["csv"].parent.mkdir()
    paths["csv"].write_text("Path,Sex,Age,Frontal/Lateral,AP/PA\n")
    paths["convirt"] = write_json(root / "convirt" / "config.json", {"model_type": "convirt"}).parent
    paths["dataset"] = write_json(root / "dataset" / "dataset_dict.json",
                                  {"splits": ["train", "validation", "test"]}).parent
    paths["retrieval_set"] = write_json(root / "retrieval-set" / "dataset_dict.json",
                                        {"splits": ["retrieval_candidates", "retrieval_queries"]}).parent
    write_json(paths["retrieval_set"] / "text_queries.json", TEXT_QUERIES)
    paths["prompts"] = write_json(root / "prompts.json", TEXT_QUERIES)
    paths["empty_queries"] = write_json(root / "empty-queries.json", {"edema": []})
    paths["finished_not_convirt"] = write_json(root / "finished" / "metrics.json", {"retrieval": {}}).parent
    # a finished ConVIRT run trained with other settings than the tables' main run (a 5-step run)
    paths["finished_other"] = write_json(root / "finished-other" / "metrics.json", {"steps": 5}).parent
    write_json(paths["finished_other"] / "config.json", {"model_type": "convirt", "projection": "mlp"})
    write_json(paths["finished_other"] / "training_args.json", {"signature": {"max_steps": 5}})
    paths["bert"] = write_json(root / "bert" / "config.json", {"model_type": "bert"}).parent

    # What training/pretrain.py writes and the Hub build checks: real safetensors, the rest as small as it can be.
    trained = root / "runs" / "model"  # named like a build's model/ folder, for the case that would replace it
    for name in ("processor_config.json", "tokenizer_config.json", "tokenizer.json", "training_args.json",
                 "metrics.json"):
        write_json(trained / name, {})
    write_json(trained / "config.json", {"model_type": "convirt"})
    for name in REMOTE_CODE_FILES:
        (trained / name).write_text("")
    save_file({"logit_scale": torch.zeros(1)}, str(trained / "model.safetensors"))
    paths["trained"] = trained
    summary = {"model": str(trained), "data": "synthetic", "task": "category", "protocol": "linear_probe",
               "fraction": 1.0, "metric": "accuracy", "headline": True, "mean": 0.5, "std": 0.0, "runs": 1}
    paths["evaluation"] = write_json(root / "evaluation.json", {"metadata": {}, "results": [], "summary": [summary]})

    from PIL import Image

    Image.new("L", (8, 8)).save(root / "image.png")
    paths["gallery"] = root / "gallery"
    paths["gallery"].mkdir()
    Image.new("L", (8, 8)).save(paths["gallery"] / "film.png")
    manifest = root / "corpus.csv"
    manifest.write_text("id,image,text,split,view,finding,patient,study\n"
                        "a,image.png,FINDINGS: The heart is enlarged. IMPRESSION: Cardiomegaly.,train,PA,edema,p1,s1\n")
    paths["manifest"] = manifest
    return {name: str(path) for name, path in paths.items()}


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root`, with a digest of each file's content: what must not change when a run is refused."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "/"
            for path in sorted(root.rglob("*"))}


@pytest.fixture()
def workspace(tmp_path, monkeypatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)  # a relative default output would land here, where the snapshot sees it
    return build_workspace(tmp_path)


@pytest.fixture(autouse=True)
def tripwires(monkeypatch):
    """The first step of each script's work raises WorkStarted (patched where the scripts look each one up)."""
    import convirt_hf.data.sources.pipeline
    import convirt_hf.data.synthetic
    import convirt_hf.evaluation.chexpert
    import convirt_hf.evaluation.corpora
    import convirt_hf.evaluation.zero_shot

    steps = [
        (convirt_hf.data.synthetic, "ensure_synthetic_corpus"),
        (convirt_hf.data.synthetic, "generate_synthetic_corpus"),
        (convirt_hf.evaluation.corpora, "corpus_folder"), (linear_probe, "corpus_folder"), (finetune, "corpus_folder"),
        (reproduce, "corpus_folder"), (linear_probe, "load_image_encoder"), (finetune, "load_image_encoder"),
        (reproduce, "load_image_encoder"), (finetune, "Accelerator"), (reproduce, "pretrained_folders"),
        (convirt_hf.evaluation.chexpert, "build_chexpert_retrieval_set"),
        (convirt_hf.evaluation.zero_shot, "load_retrieval_set"), (push, "publish"),
        (convirt_hf.data.sources.pipeline, "build_dataset"), (preprocess, "resize_dataset"), (demo, "serve"),
    ]
    for owner, name in steps:
        def started(*args, _step=f"{owner.__name__}.{name}", **kwargs):
            raise WorkStarted(_step)

        monkeypatch.setattr(owner, name, started)


def without_flags(argv: Sequence[str], names: Iterable[str]) -> list[str]:
    """`argv` without the given flags and their values (a preset value is only seen where no flag overrides it)."""
    flags, kept, dropping = {f"--{name}" for name in names}, [], False
    for item in argv:
        if item.startswith("--"):
            dropping = item in flags
        if not dropping:
            kept.append(item)
    return kept


def command_line(script: Script, case_: Case, paths: dict[str, str]) -> list[str]:
    baseline = without_flags(script.baseline, case_.preset or ())
    argv = [item.format(**paths) for item in (*baseline, *case_.argv)]
    if case_.preset is not None:
        preset = Path(paths["tmp"]) / "preset.yaml"
        preset.write_text(yaml.safe_dump(case_.preset))
        argv += ["--config", str(preset)]
    return argv


def run_refused(script: Script, argv: list[str], capsys) -> str:
    """Runs the script and returns its refusal's message; fails if it returned normally or reached its work."""
    try:
        returned = script.main(argv)
    except WorkStarted as step:
        pytest.fail(f"{script.name} {argv} was not refused before its work started ({step})")
    except SystemExit as exit_:  # argparse's own refusal (a bad choice or type): exit status 2, message on stderr
        assert exit_.code == 2, exit_.code
        return capsys.readouterr().err
    except USER_ERRORS as error:
        return str(error)
    # preprocess reports a refusal as exit status 2 with an "error: ..." line on stderr
    assert script.name == "preprocess" and returned == 2, f"{script.name} {argv} was not refused: {returned!r}"
    return capsys.readouterr().err


# --- the tests -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_every_argument_has_an_invalid_case_or_a_reason_to_have_none(name):
    script = SCRIPTS[name]
    covered = {invalid.argument for invalid in CASES[name]}
    missing = [argument for argument in script.arguments if argument not in covered and argument not in script.exempt]
    assert not missing, f"{name}: arguments with neither an invalid case nor an exemption: {missing}"
    stale = sorted((set(covered) | set(script.exempt)) - set(script.arguments))
    assert not stale, f"{name}: cases or exemptions for arguments the script does not have: {stale}"
    both = sorted(set(covered) & set(script.exempt))
    assert not both, f"{name}: arguments both exempted and given invalid cases: {both}"


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_baseline_reaches_the_work(name, workspace):
    """The command line every case starts from is valid: a case's refusal comes from its own values."""
    script = SCRIPTS[name]
    with pytest.raises(WorkStarted):
        script.main([item.format(**workspace) for item in script.baseline])


@pytest.mark.parametrize("script_name, invalid", ALL_CASES)
def test_invalid_value_is_refused_before_any_work_naming_the_argument(script_name, invalid, workspace, capsys):
    script = SCRIPTS[script_name]
    if invalid.existing is not None:
        what, template = invalid.existing
        existing = Path(template.format(**workspace))
        if what == "folder":
            existing.mkdir(parents=True)
            (existing / "results.json").write_text(EXISTING_CONTENT)
        else:
            existing.parent.mkdir(parents=True, exist_ok=True)
            existing.write_text(EXISTING_CONTENT)
    argv = command_line(script, invalid, workspace)
    before = snapshot(Path(workspace["tmp"]))

    message = run_refused(script, argv, capsys)

    flag = script.arguments[invalid.argument]
    assert flag in message, f"the refusal does not name {flag}: {message}"
    assert invalid.message.format(**workspace) in message
    assert snapshot(Path(workspace["tmp"])) == before, "a refused run changed the workspace"
    if invalid.existing is not None:
        assert (existing / "results.json" if what == "folder" else existing).read_text() == EXISTING_CONTENT
    assert not Path(workspace["cache"]).exists(), "a refused run touched the corpus cache"
