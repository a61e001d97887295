"""training/pretrain.py end to end with tiny settings: learning, 2 processes, crash and resume, NaN, output folder."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from convirt_hf.checkpointing import latest_checkpoint
from convirt_hf.training import pretrain

from helpers import read_log, run_clean_python, tiny_args

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "training" / "pretrain.py"


def run_script(args: list[str], launcher: list[str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    command = (launcher or [sys.executable]) + [str(SCRIPT)] + args
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def test_training_lowers_the_loss_and_writes_a_loadable_folder(tiny_corpus, tmp_path, hf_home):
    output_dir = tmp_path / "run"
    # Whole reports: with 64 pairs and batches of 8, sampled sentences repeat so often within a batch that the loss
    # cannot fall far below ln(8) in a test's budget; whole reports are unique, so learning shows within 120 steps.
    metrics = pretrain.main(tiny_args(tiny_corpus, output_dir, max_steps=120, eval_steps=60, save_steps=60,
                                      text_mode="report"))
    losses = [row["train/loss"] for row in read_log(output_dir) if "train/loss" in row]
    assert len(losses) == 120
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    # ln(8) = 2.08 is what collapsed (uninformative) embeddings score: ending well below it takes real learning
    assert last < math.log(8) - 0.2 and last < first - 0.3, losses
    assert metrics["steps"] == 120 and metrics["retrieval"]["image->image"]["mean"]["5"] is not None

    expected = {"config.json", "model.safetensors", "modeling_convirt.py", "configuration_convirt.py",
                "processing_convirt.py", "processor_config.json", "tokenizer.json", "README.md", "metrics.json",
                "training_args.json", "train_log.jsonl"}
    assert expected <= {path.name for path in output_dir.iterdir()}
    card = (output_dir / "README.md").read_text()
    assert "library_name: transformers" in card and "precision_at_5" in card and "not a medical device" in card
    saved_args = json.loads((output_dir / "training_args.json").read_text())
    assert saved_args["training"]["max_steps"] == 120

    # the folder serves the same logits without convirt_hf installed
    from transformers import AutoProcessor

    from convirt_hf import ConvirtModel

    model = ConvirtModel.from_pretrained(output_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(output_dir)
    from datasets import load_from_disk

    image = load_from_disk(str(tiny_corpus))["retrieval_queries"][0]["image"]
    inputs = processor(images=[image], text=["the heart is enlarged .", "no pleural effusion ."])
    with torch.no_grad():
        expected_logits = model(**inputs).logits_per_image
    torch.save(dict(inputs), tmp_path / "inputs.pt")
    result = run_clean_python(
        f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(output_dir)!r}, trust_remote_code=True, dtype=torch.float32).eval()
        inputs = torch.load({str(tmp_path / "inputs.pt")!r}, weights_only=True)
        with torch.no_grad():
            print(model(**inputs).logits_per_image.tolist())
        """,
        hf_home=tmp_path / "clean_home", cwd=tmp_path,
    )
    torch.testing.assert_close(torch.tensor(json.loads(result.stdout.strip().splitlines()[-1])), expected_logits,
                               rtol=1e-5, atol=1e-5)


def test_two_processes_first_step_equals_one_process_on_the_global_batch(tiny_corpus, tmp_path):
    # LayerNorm tower and no dropout: with BatchNorm each process normalises its own half of the batch, so the two
    # runs would differ by design, not by the loss.
    common = dict(image_model_name="test_convnext", text_dropout=0.0, max_steps=2, eval_steps=2, save_steps=2)
    run_script(tiny_args(tiny_corpus, tmp_path / "one", per_device_batch_size=16, **common))
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                str(29500 + random.randint(0, 2000))]
    # the same contrastive batch of 16 pairs, stated once whatever the processes: 8 each
    two = run_script(tiny_args(tiny_corpus, tmp_path / "two", global_batch_size=16, **common), launcher=launcher)
    assert "2 process(es)" in two.stderr + two.stdout
    one_log, two_log = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    first_one = next(row for row in one_log if row["step"] == 1 and "train/loss" in row)
    first_two = next(row for row in two_log if row["step"] == 1 and "train/loss" in row)
    assert first_two["train/loss"] == pytest.approx(first_one["train/loss"], rel=1e-5)
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["samples_seen"] == 2 * 16
    assert "--global_batch_size 16: 8 pairs per process" in two.stderr + two.stdout


def test_a_global_batch_that_does_not_split_evenly_is_refused():
    from convirt_hf.pretraining.api import per_device_share

    assert per_device_share(32, 4) == 8 and per_device_share(32, 1) == 32
    for batch, processes in ((15, 2), (32, 3), (4, 4)):
        with pytest.raises(ValueError, match=rf"--global_batch_size {batch} does not split into {processes} equal"):
            per_device_share(batch, processes)


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_gives_the_uninterrupted_weights(tiny_corpus, tmp_path):
    steps = 16
    args = dict(max_steps=steps, save_steps=3, eval_steps=8)
    run_script(tiny_args(tiny_corpus, tmp_path / "uninterrupted", **args))

    killed_dir = tmp_path / "killed"
    kill_after = random.Random(os.getpid()).randint(4, steps - 3)
    command = [sys.executable, str(SCRIPT)] + tiny_args(tiny_corpus, killed_dir, **args)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if any(row.get("step", 0) >= kill_after for row in read_log(killed_dir)):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"the run ended before step {kill_after} ({process.returncode})"
    checkpoint = latest_checkpoint(killed_dir / "checkpoints")
    assert checkpoint is not None and json.loads((checkpoint / "train_state.json").read_text())["step"] < steps

    run_script(tiny_args(tiny_corpus, killed_dir, resume="latest", **args))
    final = f"checkpoints/step_{steps:08d}/model.safetensors"
    expected, actual = load_file(tmp_path / "uninterrupted" / final), load_file(killed_dir / final)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), f"{name} differs after resuming (killed after {kill_after})"


@pytest.mark.parametrize("gpu_augmentation", [True, False])
def test_a_poisoned_batch_stops_with_a_message_and_a_saved_state(tiny_corpus, tmp_path, monkeypatch, gpu_augmentation):
    from convirt_hf.data.pairs import PairViews

    original = PairViews.__getitem__
    training_views = ("ConvirtTrainTransform", "DecodedImage")

    def poisoned(self, tagged_index):
        example = original(self, tagged_index)
        if self.image_transform.__class__.__name__ in training_views and tagged_index % self.num_rows == 5:
            example["pixel_values"] = torch.full_like(example["pixel_values"], float("nan"), dtype=torch.float32)
        return example

    monkeypatch.setattr(PairViews, "__getitem__", poisoned)
    output_dir = tmp_path / "nan"
    with pytest.raises(pretrain.NonFiniteTrainingError,
                       match=r"Non-finite pixel values in the batch of step \d+ .*synthetic-0-pretrain-000005"):
        pretrain.main(tiny_args(tiny_corpus, output_dir, max_steps=20, save_steps=50,
                                gpu_augmentation=gpu_augmentation))
    checkpoint = latest_checkpoint(output_dir / "checkpoints")
    assert checkpoint is not None
    state = json.loads((checkpoint / "train_state.json").read_text())
    weights = load_file(checkpoint / "model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())  # BatchNorm statistics included
    assert state["step"] < 20


def test_a_non_finite_loss_stops_and_saves_the_state_for_inspection(tiny_corpus, tmp_path, monkeypatch):
    from convirt_hf.losses import ConvirtLoss

    calls = {"count": 0}
    original = ConvirtLoss.forward

    def overflowing(self, image_embeds, text_embeds):
        calls["count"] += 1
        loss = original(self, image_embeds, text_embeds)
        return loss * float("inf") if calls["count"] == 7 else loss

    monkeypatch.setattr(ConvirtLoss, "forward", overflowing)
    output_dir = tmp_path / "inf"
    with pytest.raises(pretrain.NonFiniteTrainingError, match=r"loss became (inf|nan) at step 6 .*step_00000004"):
        pretrain.main(tiny_args(tiny_corpus, output_dir, max_steps=20, save_steps=4, eval_steps=50))
    assert (output_dir / "non_finite_state_step_00000006" / "model.safetensors").is_file()
    assert latest_checkpoint(output_dir / "checkpoints").name == "step_00000004"


def test_output_folder_rules(tiny_corpus, tmp_path):
    stranger = tmp_path / "not_a_run"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a previous run"):
        pretrain.main(tiny_args(tiny_corpus, stranger))
    assert (stranger / "notes.txt").read_text() == "keep me"

    output_dir = tmp_path / "run"
    pretrain.main(tiny_args(tiny_corpus, output_dir, max_steps=2, eval_steps=2, save_steps=2))
    with pytest.raises(ValueError, match="--resume latest.*--overwrite_output_dir"):
        pretrain.main(tiny_args(tiny_corpus, output_dir, max_steps=2))
    with pytest.raises(ValueError, match="different settings"):
        pretrain.main(tiny_args(tiny_corpus, output_dir, max_steps=4, per_device_batch_size=4, resume="latest"))
    pretrain.main(tiny_args(tiny_corpus, output_dir, max_steps=2, eval_steps=2, save_steps=2)
                  + ["--overwrite_output_dir"])


def test_a_preprocessed_corpus_trains_on_its_train_split_by_default(tiny_corpus, tmp_path):
    from datasets import DatasetDict, load_from_disk

    synthetic = load_from_disk(str(tiny_corpus))
    preprocessed = tmp_path / "shards"  # the split names convirt_hf.data.preprocess writes
    DatasetDict(train=synthetic["pretrain"], validation=synthetic["validation"]).save_to_disk(str(preprocessed))
    output_dir = tmp_path / "run"
    metrics = pretrain.main(tiny_args(preprocessed, output_dir, retrieval_set="none", max_steps=2, eval_steps=2,
                                      save_steps=2))
    assert metrics["steps"] == 2 and "retrieval" not in metrics
    assert json.loads((output_dir / "training_args.json").read_text())["data"]["train_split"] == "train"
    with pytest.raises(ValueError, match=r"--train_split 'pretrain' is not in .*\['train', 'validation'\]"):
        pretrain.main(tiny_args(preprocessed, tmp_path / "other", retrieval_set="none", train_split="pretrain"))


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("learning_rate", "-1", "--learning_rate must be > 0"),
        ("tau", "0", "--tau must be a finite number > 0"),
        ("loss_lambda", "1.5", "--loss_lambda must be in"),
        ("per_device_batch_size", "0", "--per_device_batch_size must be > 0"),
        ("projection", "transformer", "--projection must be one of"),
        ("mixed_precision", "fp8", "--mixed_precision must be one of"),
        ("dataset", "/does/not/exist", "--dataset '/does/not/exist' does not exist"),
        ("resume", "/no/checkpoint", "--resume must be 'latest' or an existing checkpoint folder"),
        ("augmentation", "heavy", "--augmentation must be one of"),
    ],
)
def test_invalid_arguments_fail_before_training(tiny_corpus, tmp_path, flag, value, message):
    args = tiny_args(tiny_corpus, tmp_path / "never")
    index = args.index(f"--{flag}") if f"--{flag}" in args else None
    if index is None:
        args += [f"--{flag}", value]
    else:
        args[index + 1] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        pretrain.main(args)
    assert not (tmp_path / "never").exists()


def test_presets_load_and_unknown_keys_are_named(tmp_path):
    from convirt_hf.cli import load_preset

    paper = load_preset("paper", (pretrain.ModelArguments, pretrain.DataArguments, pretrain.PretrainingArguments))
    assert paper["per_device_batch_size"] == 32 and paper["learning_rate"] == 1e-4
    assert paper["frozen_text_layers"] == "half"
    assert paper["augmentation"] == "paper" and paper["max_evaluations"] == 200
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rat: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['learning_rat'\]"):
        pretrain.main(["--config", str(bad)])


def test_tensorboard_receives_scalars(tiny_corpus, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output_dir = tmp_path / "tb"
    pretrain.main(tiny_args(tiny_corpus, output_dir, max_steps=4, eval_steps=4, save_steps=4, report_to="tensorboard"))
    event_files = list((output_dir / "runs").rglob("events.out.tfevents.*"))
    assert event_files
    events = EventAccumulator(str(event_files[0].parent))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/samples_per_second", "validation/loss"} <= tags
    assert any(tag.startswith("retrieval/image->image/") for tag in tags)


def test_the_demo_preset_is_what_the_script_does_without_arguments():
    from convirt_hf.cli import parse_arguments

    classes = (pretrain.ModelArguments, pretrain.DataArguments, pretrain.PretrainingArguments)
    *defaults, _ = parse_arguments(classes, [])
    *demo, preset = parse_arguments(classes, ["--config", "demo"])
    assert preset.name == "demo.yaml"
    assert [dataclasses.asdict(a) for a in defaults] == [dataclasses.asdict(a) for a in demo]


def test_the_automatic_validation_holdout_is_patient_level(tiny_corpus, tmp_path):
    """A corpus without a validation split, 2-4 images per patient: no patient on both sides, the ids written out."""
    from datasets import DatasetDict, load_from_disk

    from convirt_hf.pretraining import DataArguments
    from convirt_hf.pretraining.data import load_corpus

    rows = load_from_disk(str(tiny_corpus))["pretrain"]
    sizes = [2, 3, 4] * 20
    owners = [f"patient-{group}" for group, size in enumerate(sizes) for _ in range(size)][:len(rows)]
    shards = tmp_path / "shards"
    DatasetDict(train=rows.remove_columns("patient_id").add_column("patient_id", owners)).save_to_disk(str(shards))

    class MainProcess:  # what load_corpus asks of an Accelerator here
        is_main_process = True

    splits = {}
    for seed in (0, 0, 3, 42):
        data_args = DataArguments(dataset=str(shards), retrieval_set="none", validation_size=12)
        train, validation, _, held_out = load_corpus(data_args, MainProcess(), seed)
        assert not set(train["patient_id"]) & set(validation["patient_id"])
        assert sorted(set(validation["patient_id"])) == held_out and len(train) + len(validation) == len(rows)
        # about --validation_size, at most a tenth of the rows (6 here), within one patient's rows (at most 4)
        assert abs(len(validation) - 6) <= 4
        splits.setdefault(seed, []).append(held_out)
    assert splits[0][0] == splits[0][1] and splits[0][0] != splits[3][0]  # deterministic for a seed

    output_dir = tmp_path / "run"
    pretrain.main(tiny_args(shards, output_dir, retrieval_set="none", max_steps=2, eval_steps=2, save_steps=2,
                            validation_size=12, per_device_batch_size=2))
    written = (output_dir / "validation_patients.txt").read_text().split()
    assert written == splits[42][0]  # the run's own seed (42), one patient id per line
