"""Every argument of training/pretrain.py, given an invalid value, fails before training with a message naming it.

The table below holds at least one invalid value per argument. `test_every_argument_has_an_invalid_case` enumerates
the dataclasses' fields, so an argument added without a case here (or a reason in EXEMPT) fails the suite. Each case
runs `pretrain.main` in-process and checks that nothing was written: no output folder, no synthetic corpus in the
cache, no checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from faultkit import tiny_args
from training import pretrain

# Arguments for which no value is invalid, each with the reason; none so far: every argument has a case below.
EXEMPT: dict[str, str] = {}

# argparse names the flag with its dashed alias: "argument --max_steps/--max-steps: invalid int value: 'x'"
ARGPARSE = r"argument --{}(/--[\w-]+)?: "

# `{dataset}`, `{tmp}`, `{file}`, `{stranger}`, `{bert}`, `{not_a_model}`, `{half_checkpoint}` are filled in per test.
# Each case: (argument, extra flags, a regex the error message must match). The regexes all start with the flag.
CASES = [
    # --- model ---
    ("image_tower", ["--image_tower", "{tmp}/missing.safetensors", "--text_tower", "{bert}"],
     r"--image_tower '.*missing\.safetensors' does not exist"),
    ("image_tower", ["--image_tower", "resnet18.no_such_tag", "--text_tower", "{bert}"],
     r"--image_tower 'resnet18\.no_such_tag': timm has no such pretrained tag"),
    ("image_tower", ["--image_tower", "{not_a_model}", "--text_tower", "{bert}"],
     r"--image_tower '.*' is a folder without config\.json"),
    ("image_tower", ["--image_tower", "resnet18"], r"--image_tower needs --text_tower"),
    ("image_model_name", ["--image_model_name", "resnet_does_not_exist"],
     r"--image_model_name 'resnet_does_not_exist' is not a timm architecture"),
    ("text_tower", ["--text_tower", "{tmp}/no_bert"], r"--text_tower '.*no_bert' does not exist"),
    ("text_tower", ["--text_tower", "{not_a_model}"], r"--text_tower '.*' is a folder without config\.json"),
    ("text_tower", ["--text_tower", "{vision_model}"], r"--text_tower '.*' is a 'vit' model, not a BERT"),
    ("text_tower", ["--text_tower", "package:no_such_tower_package/model"],
     r"--text_tower: text tower 'package:no_such_tower_package/model': the Python package .* is not installed\. "
     r"`pip install no-such-tower-package`"),
    ("text_layers", ["--text_layers", "0"], r"--text_layers must be > 0"),
    ("text_layers", ["--text_tower", "{bert}", "--text_layers", "4"],
     r"--text_layers shapes the from-scratch text tower \(--text_tower scratch\); --text_tower '.*bert' is a "
     r"pretrained tower"),
    *[(flag, ["--text_tower", "{bert}", f"--{flag}", value],
       rf"--{flag} shapes the from-scratch text tower \(--text_tower scratch\); --text_tower '.*bert' is a pretrained")
      for flag, value in (("text_hidden_size", "64"), ("text_vocab_size", "500"), ("text_dropout", "0.2"))],
    ("text_hidden_size", ["--text_hidden_size", "0"], r"--text_hidden_size must be > 0"),
    ("text_hidden_size", ["--text_hidden_size", "200"], r"--text_hidden_size must be a multiple of its 3 attention"),
    ("text_vocab_size", ["--text_vocab_size", "-5"], r"--text_vocab_size must be > 0"),
    ("text_dropout", ["--text_dropout", "1.0"], r"--text_dropout must be in \[0, 1\)"),
    ("text_dropout", ["--text_dropout", "nan"], r"--text_dropout must be in \[0, 1\)"),
    ("projection", ["--projection", "transformer"], r"--projection must be one of"),
    ("projection_dim", ["--projection_dim", "0"], r"--projection_dim must be a positive integer"),
    ("tversky_num_features", ["--projection", "tversky", "--tversky_num_features", "0"],
     r"--tversky_num_features must be a positive integer"),
    ("tversky_alpha", ["--tversky_alpha", "-0.5"], r"--tversky_alpha must be a finite number >= 0"),
    ("tversky_beta", ["--tversky_beta", "nan"], r"--tversky_beta must be a finite number >= 0, got nan"),
    ("tversky_difference", ["--tversky_difference", "xor"], r"--tversky_difference must be one of"),
    ("tau", ["--tau", "0"], r"--tau must be a finite number > 0"),
    ("tau", ["--tau", "nan"], r"--tau must be a finite number > 0, got nan"),
    ("loss_lambda", ["--loss_lambda", "1.5"], r"--loss_lambda must be in \[0, 1\]"),
    ("loss_lambda", ["--loss_lambda", "nan"], r"--loss_lambda must be in \[0, 1\]"),
    ("text_pooling", ["--text_pooling", "first"], r"--text_pooling must be one of"),
    ("freeze_text_embeddings", ["--freeze_text_embeddings", "maybe"],
     ARGPARSE.format("freeze_text_embeddings") + "Truthy value expected"),
    ("frozen_text_layers", ["--frozen_text_layers", "-1"],
     r"--frozen_text_layers must be a layer count, a fraction in \[0, 1\] or one of \['all', 'half', 'none'\]"),
    ("frozen_text_layers", ["--frozen_text_layers", "most"], r"--frozen_text_layers must be a layer count"),
    ("frozen_text_layers", ["--frozen_text_layers", "3"], r"--frozen_text_layers \(3\) cannot exceed --text_layers"),
    ("frozen_text_layers", ["--text_tower", "{bert}", "--frozen_text_layers", "6"],
     r"--frozen_text_layers must be between 0 and the text tower's 2 layers"),
    # the paper preset's count on a tower as deep as it: nothing would train, so it must be said ("all")
    ("frozen_text_layers", ["--text_tower", "{bert}", "--frozen_text_layers", "2"],
     r"--frozen_text_layers=2 freezes all 2 layers of the text tower, leaving none to train\. Use \"half\""),
    # --- data ---
    ("dataset", ["--dataset", "{tmp}/nowhere"], r"--dataset '.*nowhere' does not exist"),
    ("dataset", ["--dataset", "{not_a_model}"], r"--dataset '.*' is not a dataset folder written by datasets"),
    ("train_split", ["--train_split", "nope"], r"--train_split 'nope' is not in .*\(splits: \["),
    ("validation_split", ["--train_split", "pretrain", "--validation_split", "pretrain"],
     r"--validation_split 'pretrain' is the training split"),
    ("validation_size", ["--validation_size", "0"], r"--validation_size must be > 0"),
    ("retrieval_set", ["--retrieval_set", "{tmp}/no_set"], r"--retrieval_set '.*no_set' is not a retrieval set"),
    ("cache_dir", ["--cache_dir", "{file}"], r"--cache_dir '.*' exists and is not a folder"),
    ("synthetic_pretrain_size", ["--dataset", "", "--synthetic_pretrain_size", "0"],
     r"--synthetic_pretrain_size must be > 0"),
    ("synthetic_seed", ["--dataset", "", "--synthetic_seed", "-1"], r"--synthetic_seed must be >= 0"),
    ("image_size", ["--image_size", "0"], r"--image_size must be a positive integer"),
    ("eval_resize", ["--eval_resize", "0"], r"--eval_resize must be > 0"),
    ("eval_resize", ["--eval_resize", "16"], r"--eval_resize \(16\) must be >= --image_size \(32\)"),
    ("max_length", ["--max_length", "0"], r"--max_length must be > 0"),
    ("max_length", ["--text_tower", "{bert}", "--max_length", "1000"],
     r"--max_length \(1000\) exceeds the 64 positions of --text_tower"),
    ("text_mode", ["--text_mode", "paragraph"], r"--text_mode must be one of"),
    ("augmentation", ["--augmentation", "heavy"], r"--augmentation must be one of"),
    ("num_workers", ["--num_workers", "-1"], r"--num_workers must be >= 0"),
    ("image_cache_mb", ["--image_cache_mb", "-1"], r"--image_cache_mb must be >= 0"),
    ("max_train_samples", ["--max_train_samples", "0"], r"--max_train_samples must be > 0"),
    # --- training ---
    ("output_dir", ["--output_dir", "{file}"], r"--output_dir '.*' exists and is a file"),
    ("output_dir", ["--output_dir", "{stranger}"], r"--output_dir .* exists and is not a previous run's folder"),
    ("overwrite_output_dir", ["--overwrite_output_dir", "--resume", "latest"],
     r"--overwrite_output_dir and --resume contradict"),
    ("overwrite_output_dir", ["--overwrite_output_dir", "perhaps"],
     ARGPARSE.format("overwrite_output_dir") + "Truthy value expected"),
    ("resume", ["--resume", "{tmp}/no_checkpoint"], r"--resume must be 'latest' or an existing checkpoint folder"),
    ("resume", ["--resume", "{half_checkpoint}"], r"--resume '.*' is not a complete checkpoint"),
    ("resume", ["--resume", "latest"], r"--resume latest: .* holds no previous run"),
    ("seed", ["--seed", "-1"], r"--seed must be in \[0, 2\*\*32\)"),
    ("seed", ["--seed", str(2**32)], r"--seed must be in \[0, 2\*\*32\)"),
    ("per_device_batch_size", ["--per_device_batch_size", "0"], r"--per_device_batch_size must be > 0"),
    ("per_device_batch_size", ["--per_device_batch_size", "1"], r"--per_device_batch_size must be >= 2"),
    ("per_device_batch_size", ["--per_device_batch_size", "eight"],
     ARGPARSE.format("per_device_batch_size") + "invalid int value"),
    ("global_batch_size", ["--global_batch_size", "0"], r"--global_batch_size must be > 0"),
    ("global_batch_size", ["--global_batch_size", "1"], r"--global_batch_size must be >= 2"),
    ("learning_rate", ["--learning_rate", "-1"], r"--learning_rate must be > 0"),
    ("learning_rate", ["--learning_rate", "inf"], r"--learning_rate must be > 0 \(a finite number\)"),
    ("weight_decay", ["--weight_decay", "-0.001"], r"--weight_decay must be >= 0"),
    ("optimizer", ["--optimizer", "sgd"], r"--optimizer must be one of"),
    ("lr_scheduler", ["--lr_scheduler", "linear"], r"--lr_scheduler must be one of"),
    ("warmup_steps", ["--warmup_steps", "-1"], r"--warmup_steps must be >= 0"),
    ("plateau_patience", ["--plateau_patience", "-1"], r"--plateau_patience must be >= 0"),
    ("max_steps", ["--max_steps", "0"], r"--max_steps must be > 0"),
    ("eval_steps", ["--eval_steps", "0"], r"--eval_steps must be > 0"),
    ("max_evaluations", ["--max_evaluations", "0"], r"--max_evaluations must be > 0"),
    ("early_stopping_patience", ["--early_stopping_patience", "0"], r"--early_stopping_patience must be > 0"),
    ("save_steps", ["--save_steps", "0"], r"--save_steps must be > 0"),
    ("save_total_limit", ["--save_total_limit", "0"], r"--save_total_limit must be > 0"),
    ("logging_steps", ["--logging_steps", "0"], r"--logging_steps must be > 0"),
    ("mixed_precision", ["--mixed_precision", "fp8"], r"--mixed_precision must be one of"),
    *([("mixed_precision", ["--mixed_precision", "fp16"], r"--mixed_precision fp16 needs a CUDA GPU")]
      if not torch.cuda.is_available() else []),  # where a GPU is visible, fp16 is a valid choice
    ("gradient_accumulation_steps", ["--gradient_accumulation_steps", "0"], r"--gradient_accumulation_steps must be"),
    ("gradient_checkpointing", ["--gradient_checkpointing", "sometimes"],
     ARGPARSE.format("gradient_checkpointing") + "Truthy value expected"),
    ("channels_last", ["--channels_last", "2"], ARGPARSE.format("channels_last") + "Truthy value expected"),
    ("gpu_augmentation", ["--gpu_augmentation", "often"],
     ARGPARSE.format("gpu_augmentation") + "Truthy value expected"),
    ("torch_compile", ["--torch_compile", "fast"], ARGPARSE.format("torch_compile") + "Truthy value expected"),
    ("report_to", ["--report_to", "wandb"], r"--report_to must be one of"),
    ("push_to_hub", ["--push_to_hub", "not a repo id"],
     r"--push_to_hub 'not a repo id': .* is not a valid Hub repo id"),
    ("push_to_hub", ["--push_to_hub", "someone/convirt"], r"--push_to_hub 'someone/convirt': No Hugging Face token"),
    ("hub_private", ["--hub_private", "yes please"], ARGPARSE.format("hub_private") + "Truthy value expected"),
    ("ddp_timeout", ["--ddp_timeout", "0"], r"--ddp_timeout must be > 0"),
    ("config", ["--config", "no_such_preset"], r"--config 'no_such_preset': no such YAML file or preset"),
]

ARGUMENT_CLASSES = (pretrain.ModelArguments, pretrain.DataArguments, pretrain.PretrainingArguments)


def test_every_argument_has_an_invalid_case():
    arguments = {field.name for cls in ARGUMENT_CLASSES for field in dataclasses.fields(cls)} | {"config"}
    covered = {name for name, _, _ in CASES} | set(EXEMPT)
    assert not arguments - covered, f"arguments without an invalid-value case: {sorted(arguments - covered)}"
    assert not {name for name, _, _ in CASES} - arguments, "cases for arguments that no longer exist"


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    """The folders the cases point at: a tiny BERT config, a vision config, a non-model folder, a torn checkpoint."""
    from transformers import BertConfig, ViTConfig

    root = tmp_path_factory.mktemp("argument-fixtures")
    BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100,
               max_position_embeddings=64).save_pretrained(root / "bert")
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        root / "vit")
    (root / "not_a_model").mkdir()
    (root / "not_a_model" / "readme.txt").write_text("holiday photos")
    (root / "a_file").write_text("not a folder")
    (root / "stranger").mkdir()
    (root / "stranger" / "notes.txt").write_text("keep me")
    (root / "half_checkpoint").mkdir()
    (root / "half_checkpoint" / "model.safetensors").write_bytes(b"")
    return {"bert": root / "bert", "vision_model": root / "vit", "not_a_model": root / "not_a_model",
            "file": root / "a_file", "stranger": root / "stranger", "half_checkpoint": root / "half_checkpoint"}


def case_id(case) -> str:
    name, flags, _ = case
    shown = [flag for flag in flags if not flag.startswith("{")]
    return f"{name}:{'_'.join(shown[1:] if shown[:1] == [f'--{name}'] else shown)[:40]}"


def set_flag(argv: list[str], flag: str, value: str | None) -> list[str]:
    """`argv` with `flag` set to `value` (a bare switch when None), replacing an earlier value; "" drops the flag."""
    if flag in argv:
        index = argv.index(flag)
        del argv[index:index + 2]
    if value == "":
        return argv
    return argv + ([flag] if value is None else [flag, value])


@pytest.mark.parametrize("case", CASES, ids=[case_id(case) for case in CASES])
def test_an_invalid_value_fails_before_training_and_names_the_argument(case, paths, tiny_corpus, tmp_path, capsys,
                                                                      monkeypatch):
    name, flags, message = case
    monkeypatch.delenv("HF_TOKEN", raising=False)  # HF_HOME is a fresh folder (tests/conftest.py): no token at all
    output_dir, cache_dir = tmp_path / "never", tmp_path / "cache"
    fill = {**{key: str(value) for key, value in paths.items()}, "tmp": str(tmp_path), "dataset": str(tiny_corpus)}
    argv = tiny_args(tiny_corpus, output_dir, cache_dir=cache_dir, retrieval_set="none")
    values = [flag.format(**fill) for flag in flags]
    index = 0
    while index < len(values):  # flags followed by a value (or by nothing: a bare switch)
        flag = values[index]
        has_value = index + 1 < len(values) and not values[index + 1].startswith("--")
        argv = set_flag(argv, flag, values[index + 1] if has_value else None)
        index += 2 if has_value else 1
    if "--text_tower" in values and values[values.index("--text_tower") + 1] != "scratch":
        for scratch_flag in ("--text_layers", "--text_hidden_size", "--text_vocab_size"):  # a pretrained tower's own
            if scratch_flag not in values:
                argv = set_flag(argv, scratch_flag, "")
    before = {path: path.read_text() for path in (paths["stranger"] / "notes.txt", paths["file"])}

    with pytest.raises((ValueError, ImportError, SystemExit)) as raised:  # what run_cli reports as one line
        pretrain.main(argv)
    text = str(raised.value) if raised.type is not SystemExit else capsys.readouterr().err
    if raised.type is SystemExit:
        assert raised.value.code == 2, text  # argparse's usage error, printed with the argument's name
    assert re.search(message, text), f"expected /{message}/ in: {text}"
    opens_with_flag = text.lstrip().startswith("--") or "error: argument --" in text
    assert opens_with_flag, f"the message must open with the flag: {text}"

    assert not output_dir.exists(), "the output folder was created before the arguments were checked"
    assert not cache_dir.exists(), "the synthetic corpus was generated before the arguments were checked"
    assert {path: path.read_text() for path in before} == before  # nothing it points at was touched
    assert not (paths["stranger"] / "checkpoints").exists()


def test_an_existing_run_is_replaced_only_when_asked(tiny_corpus, tmp_path):
    output_dir = tmp_path / "run"
    argv = tiny_args(tiny_corpus, output_dir, retrieval_set="none", max_steps=2, eval_steps=2, save_steps=2)
    pretrain.main(argv)
    weights = (output_dir / "model.safetensors").read_bytes()
    metrics = json.loads((output_dir / "metrics.json").read_text())
    with pytest.raises(ValueError, match=r"--output_dir .* holds a previous run: pass --resume latest .* "
                                         r"--overwrite_output_dir"):
        pretrain.main(set_flag(list(argv), "--learning_rate", "0.5"))
    assert (output_dir / "model.safetensors").read_bytes() == weights  # untouched
    assert json.loads((output_dir / "metrics.json").read_text()) == metrics
    pretrain.main(set_flag(set_flag(list(argv), "--learning_rate", "0.5"), "--overwrite_output_dir", None))
    assert (output_dir / "model.safetensors").read_bytes() != weights
    assert json.loads((output_dir / "training_args.json").read_text())["training"]["learning_rate"] == 0.5
