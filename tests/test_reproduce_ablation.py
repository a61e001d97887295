"""The reproduce command's projection and probe-head ablations, without pretraining: which runs it trains (and with
what), which it reuses, and how the tables read. The full command runs in tests/test_reproduce.py."""

from __future__ import annotations

import json

import pytest

from convirt_hf.training import pretrain, reproduce


def arguments(tmp_path, *argv: str) -> reproduce.ReproduceArguments:
    (args, _preset) = reproduce.parse_arguments(
        (reproduce.ReproduceArguments,),
        ["--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"), *argv])
    return args


@pytest.fixture()
def pretrain_calls(monkeypatch):
    """pretrain.main replaced by a recorder that leaves a finished run (metrics.json) where it was told to."""
    calls = []

    def fake_main(argv):
        calls.append(list(argv))
        folder = reproduce.Path(argv[argv.index("--output_dir") + 1])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.json").write_text(json.dumps({"train_runtime_seconds": 60.0}))
        return {}

    monkeypatch.setattr(pretrain, "main", fake_main)
    return calls


def test_defaults_ablate_every_projection_and_head(tmp_path):
    args = arguments(tmp_path)
    assert args.projections == ["mlp", "linear", "tversky"]
    assert args.probe_heads == ["linear", "tversky"]
    assert args.main_projection == "mlp"  # the demo preset's


def test_projection_runs_are_pretrained_once_each_and_the_main_kind_is_the_tau_run(tmp_path, pretrain_calls):
    args = arguments(tmp_path, "--taus", "0.1", "--pretrain_overrides", "--max_steps 5")
    main_folder = reproduce.pretrained_folder(args, 0.1)
    folders = {kind: reproduce.pretrained_folder(args, 0.1, kind) for kind in args.projections}

    assert folders["mlp"] == main_folder == tmp_path / "out" / "convirt-tau0.1"
    assert folders["linear"] == tmp_path / "out" / "convirt-projection-linear"
    assert folders["tversky"] == tmp_path / "out" / "convirt-projection-tversky"
    assert len(pretrain_calls) == 3  # tau 0.1 (= mlp), linear, tversky
    main_argv, *projection_argvs = pretrain_calls
    assert "--projection" not in main_argv
    for kind, argv in zip(("linear", "tversky"), projection_argvs):
        assert argv[argv.index("--projection") + 1] == kind
        assert argv[argv.index("--tau") + 1] == "0.1"
        assert argv[argv.index("--output_dir") + 1] == str(folders[kind])
        assert argv[-2:] == ["--max_steps", "5"]  # the overrides reach every run

    # a second call reuses every finished run
    assert reproduce.pretrained_folder(args, 0.1, "tversky") == folders["tversky"]
    assert len(pretrain_calls) == 3
    assert reproduce._train_runtime_seconds(folders["linear"]) == 60.0


def test_pretrained_main_model_stands_for_its_own_projection(tmp_path, pretrain_calls):
    finished = tmp_path / "tversky-run"
    finished.mkdir()
    (finished / "metrics.json").write_text("{}")
    (finished / "config.json").write_text(json.dumps({"model_type": "convirt", "projection": "tversky"}))
    args = arguments(tmp_path, "--pretrained", str(finished), "--taus", "0.1")
    assert args.main_projection == "tversky"

    assert reproduce.pretrained_folder(args, 0.1, "tversky") == finished
    assert reproduce.pretrained_folder(args, 0.1) == finished
    assert pretrain_calls == []
    # the preset's kind is now a run of its own
    assert reproduce.pretrained_folder(args, 0.1, "mlp") == tmp_path / "out" / "convirt-projection-mlp"
    assert pretrain_calls[0][pretrain_calls[0].index("--projection") + 1] == "mlp"


def test_projection_table_reads_the_ablation_rows():
    rows = [{"kind": "probe", "projection": "mlp", "mean": 0.656, "std": 0.056},
            {"kind": "image->image", "projection": "mlp", "mean": 0.349, "std": 0.0},
            {"kind": "text->image", "projection": "mlp", "mean": 0.302, "std": 0.0},
            {"kind": "probe", "projection": "tversky", "mean": None}]
    table = reproduce.ablation_table(rows, ["mlp", "tversky"], "pneumonia", "auc", by="projection",
                                     labels={"mlp": "mlp (main model)"})
    assert table.splitlines() == [
        "| projection | linear probe 1% (pneumonia auc) | image->image P@10 | text->image P@10 |",
        "|---|---|---|---|",
        "| mlp (main model) | 65.6 ± 5.6 | 34.9 | 30.2 |",
        "| tversky | n/a | n/a | n/a |",
    ]
    tau_rows = [{**row, "tau": 0.1} for row in rows[:3]]
    assert reproduce.ablation_table(tau_rows, [0.1], "pneumonia", "auc", labels={0.1: "0.1 (paper default)"}
                                    ).splitlines()[2] == "| 0.1 (paper default) | 65.6 ± 5.6 | 34.9 | 30.2 |"
