"""The reproduce command's runs and tables, without pretraining: which runs it trains (and with what), which it reuses
and when it refuses to, and how the ablation tables read. The full command runs in tests/test_reproduce.py."""

from __future__ import annotations

import json

import pytest

from convirt_hf.cli import load_preset
from convirt_hf.pretraining import DataArguments, ModelArguments, PretrainingArguments
from convirt_hf.pretraining import api as pretraining_api
from convirt_hf.pretraining.plans import recorded_signature
from convirt_hf.training import reproduce


def arguments(tmp_path, *argv: str) -> reproduce.ReproduceArguments:
    (args, _preset) = reproduce.parse_arguments(
        (reproduce.ReproduceArguments,),
        ["--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"), *argv])
    return args


def finish(folder, signature: dict, projection: str = "mlp") -> None:
    """A finished run as pretrain leaves it, as far as reproduce reads it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"train_runtime_seconds": 60.0}))
    (folder / "config.json").write_text(json.dumps({"model_type": "convirt", "projection": projection}))
    (folder / "training_args.json").write_text(json.dumps({"signature": signature}))


@pytest.fixture()
def pretrain_calls(monkeypatch):
    """pretrain replaced by a recorder that leaves a finished run with the signature it was asked for."""
    from convirt_hf.pretraining.signature import training_signature

    calls = []

    def fake_pretrain(model_args, data_args, training_args, preset=None):
        calls.append((model_args, data_args, training_args))
        from pathlib import Path

        finish(Path(training_args.output_dir), training_signature(model_args, data_args, training_args),
               model_args.projection)
        return {}

    monkeypatch.setattr(pretraining_api, "pretrain", fake_pretrain)
    return calls


def test_defaults_ablate_every_projection_and_head_over_three_pretraining_seeds(tmp_path):
    args = arguments(tmp_path)
    assert args.projections == ["mlp", "linear", "tversky"]
    assert args.probe_heads == ["linear", "tversky"]
    assert args.main_projection == "mlp"  # the demo preset's
    assert args.pretrain_seeds == [42, 1, 2] and args.seeds == [0, 1, 2, 3, 4]
    # 3 temperatures and 2 more projections, each for 3 seeds
    assert len(args.runs) == 3 * 3 + 2 * 3


def test_every_run_is_pretrained_once_with_its_own_settings(tmp_path, pretrain_calls):
    args = arguments(tmp_path, "--taus", "0.1", "--pretrain_seeds", "42", "7", "--pretrain_overrides",
                     "--max_steps 5")
    folders = reproduce.pretrained_folders(args)
    assert folders[(0.1, None, 42)] == tmp_path / "out" / "convirt-tau0.1-seed42"
    assert folders[(0.1, "tversky", 7)] == tmp_path / "out" / "convirt-projection-tversky-seed7"
    assert len(pretrain_calls) == 2 * 3  # tau 0.1 (= mlp), linear, tversky; two seeds each
    for model_args, _, training_args in pretrain_calls:
        assert training_args.max_steps == 5 and model_args.tau == 0.1  # the overrides reach every run
    projections = sorted((m.projection, t.seed) for m, _, t in pretrain_calls)
    assert projections == [(kind, seed) for kind in ("linear", "mlp", "tversky") for seed in (7, 42)]

    # a second call reuses every finished run
    assert reproduce.pretrained_folders(arguments(tmp_path, "--taus", "0.1", "--pretrain_seeds", "42", "7",
                                                  "--pretrain_overrides", "--max_steps 5")) == folders
    assert len(pretrain_calls) == 6


def test_a_finished_run_with_other_settings_is_refused_or_retrained_with_overwrite(tmp_path, pretrain_calls):
    argv = ("--taus", "0.1", "--pretrain_seeds", "42", "--projections", "mlp")
    reproduce.pretrained_folders(arguments(tmp_path, *argv, "--pretrain_overrides", "--max_steps 5"))
    folder = tmp_path / "out" / "convirt-tau0.1-seed42"
    assert recorded_signature(folder)["max_steps"] == 5
    # the same folder, now asked for the preset's own number of steps: not the run the table needs
    preset_steps = load_preset("demo", (ModelArguments, DataArguments, PretrainingArguments))
    with pytest.raises(ValueError, match=r"holds convirt-tau0.1-seed42, a finished run trained with other settings "
                                         rf"\(max_steps: recorded 5, needed {preset_steps['max_steps']}\): pass "
                                         "--overwrite"):
        arguments(tmp_path, *argv)
    retrained = arguments(tmp_path, *argv, "--overwrite")
    reproduce.pretrained_folders(retrained)
    assert len(pretrain_calls) == 2 and pretrain_calls[-1][2].overwrite_output_dir
    assert recorded_signature(folder)["max_steps"] == preset_steps["max_steps"]


def test_pretrained_main_model_must_be_the_main_run_and_stands_for_its_projection(tmp_path, pretrain_calls):
    planned = arguments(tmp_path, "--taus", "0.1", "--pretrain_seeds", "42").runs[(0.1, None, 42)]
    finished = tmp_path / "tversky-run"
    finish(finished, {**planned.signature(), "projection": "tversky"}, projection="tversky")
    with pytest.raises(ValueError, match=r"--pretrained .* was not trained as the tables' main run .*projection: "
                                         r"recorded 'tversky', needed 'mlp'"):
        arguments(tmp_path, "--pretrained", str(finished), "--taus", "0.1", "--pretrain_seeds", "42")

    demo = tmp_path / "convirt-demo"  # what `make pretrain` writes: the demo preset, seed 42, tau 0.1
    finish(demo, planned.signature())
    args = arguments(tmp_path, "--pretrained", str(demo), "--taus", "0.1", "--pretrain_seeds", "42")
    folders = reproduce.pretrained_folders(args)
    assert folders[(0.1, None, 42)] == demo
    assert {model.projection for model, _, _ in pretrain_calls} == {"linear", "tversky"}


def test_ablation_rows_are_spreads_over_pretraining_runs():
    from convirt_hf.evaluation.tasks import parse_task

    task = parse_task("pneumonia")

    def run(probe_values, i2i, t2i):
        rows = [{"model": "m", "task": "pneumonia", "fraction": 0.01, "metric": "auc", "value": value, "seed": seed,
                 "protocol": "linear", "data": "synthetic"} for seed, value in enumerate(probe_values)]
        return rows, {"image->image": {"mean": {10: i2i}}, "text->image": {"mean": {10: t2i}}}

    rows = reproduce.ablation_rows("tau", 0.1, [run([0.6, 0.8], 0.3, 0.5), run([0.9, 0.9], 0.5, 0.7)], task, 0.01)
    by_kind = {row["kind"]: row for row in rows}
    assert by_kind["probe"]["mean"] == pytest.approx(0.8) and by_kind["probe"]["std"] == pytest.approx(0.1)
    assert by_kind["image->image"]["mean"] == pytest.approx(0.4) and by_kind["image->image"]["runs"] == 2
    table = reproduce.ablation_table(rows, [0.1], "pneumonia", "auc", labels={0.1: "0.1 (paper default)"})
    assert table.splitlines() == [
        "| tau | runs | linear probe 1% (pneumonia auc) | image->image P@10 | text->image P@10 |",
        "|---|---|---|---|---|",
        "| 0.1 (paper default) | 2 | 80.0 ± 10.0 | 40.0 ± 10.0 | 60.0 ± 10.0 |",
    ]
