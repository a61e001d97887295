"""The paper's claims in miniature: with the demo settings, ConVIRT's features beat random initialisation at 1% of the
labels, and its zero-shot text->image retrieval beats chance at least twice over.

This is the project's one long test (a full demo pretraining, about four minutes on 2 CPU cores): the claims are
about the demo run users get from `make pretrain`, so it trains exactly that, with only the tau ablation left out and
the projection ablation reduced to the main model's own kind (no further pretraining). The probe-head ablation runs
at 1% of the labels (a few seconds of Tversky-head fits).
"""

from __future__ import annotations

import pytest

from convirt_hf.training import reproduce


@pytest.mark.slow
def test_convirt_beats_random_init_at_one_percent_and_retrieves_text_far_above_chance(tmp_path):
    tasks = ["findings", "category", "pneumonia"]
    report = reproduce.main([
        "--output_dir", str(tmp_path / "reproduce"), "--cache_dir", str(tmp_path / "cache"), "--taus", "0.1",
        "--pretrain_overrides", "--report_to none", "--tasks", *tasks, "--fractions", "0.01",
        "--seeds", "0", "1", "2", "--pretrain_seeds", "42", "--ablation_task", "pneumonia", "--projections", "mlp",
        "--probe_heads", "linear", "tversky",
    ])
    headline = {(row["model"], row["task"]): row["mean"] for row in report["summary"] if row["headline"]}
    for task in tasks:
        convirt, random_init = headline[("ConVIRT", task)], headline[("random init", task)]
        assert convirt > random_init + 0.05, (task, convirt, random_init)

    chance = report["metadata"]["chance_rate"]
    assert chance == pytest.approx(1 / 8)
    convirt_retrieval = report["retrieval"]["ConVIRT"]
    assert convirt_retrieval["text->image"]["mean"][10] >= 2 * chance, convirt_retrieval["text->image"]["mean"]
    assert convirt_retrieval["image->image"]["mean"][10] >= 2 * chance, convirt_retrieval["image->image"]["mean"]
    # image->image ranks by the image tower's features: ConVIRT's learned ones beat a random tower's of the same shape,
    # which has no text tower to retrieve with
    random_retrieval = report["retrieval"]["random init"]
    assert convirt_retrieval["image->image"]["mean"][10] > random_retrieval["image->image"]["mean"][10] + 0.05
    assert "text->image" not in random_retrieval

    # the projection ablation's mlp row is the main model: its numbers are the tau ablation's tau = 0.1 row
    assert report["metadata"]["main_model"] == report["metadata"]["pretrained"]["0.1/None/42"]
    by_kind = {row["kind"]: row["mean"] for row in report["projection_ablation"]}
    assert by_kind == {row["kind"]: row["mean"] for row in report["ablation"]}
    # the head ablation: ConVIRT's probe with both heads, every task; Table 1a keeps the linear head only
    heads = {(row["head"], row["task"]) for row in report["head_summary"] if row["headline"]}
    assert heads == {(head, task) for head in ("linear", "tversky") for task in tasks}
    assert all(row.get("head", "linear") == "linear" for row in report["summary"])
    tversky = {row["task"]: row["mean"] for row in report["head_summary"]
               if row["headline"] and row["head"] == "tversky"}
    for task in tasks:  # a Tversky head on ConVIRT's features learns the task too
        assert tversky[task] > headline[("random init", task)], (task, tversky[task])

    markdown = (tmp_path / "reproduce" / "results.md").read_text()
    for heading in ("## Linear probe", "## Zero-shot retrieval", "## Temperature ablation", "## Projection ablation",
                    "## Probe-head ablation", "## Image features"):
        assert heading in markdown
    assert "| ConVIRT | " in markdown and "| random init | " in markdown
    assert "| mlp (main model) | " in markdown and "| ConVIRT (tversky head) | " in markdown
    assert (tmp_path / "reproduce" / "tsne-ConVIRT.png").stat().st_size > 10_000
    assert (tmp_path / "reproduce" / "results.json").is_file()
