"""The paper's claims in miniature: with the demo settings, ConVIRT's features beat random initialisation at 1% of the
labels, and its zero-shot text->image retrieval beats chance at least twice over.

This is the project's one long test (a full demo pretraining, about six minutes on 2 CPU cores): the claims are
about the demo run users get from `make pretrain`, so it trains exactly that, with only the tau ablation left out.
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
        "--seeds", "0", "1", "2", "--ablation_task", "pneumonia",
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
    # the random model of the same shape retrieves at about chance: the gain is learned, not built in
    random_retrieval = report["retrieval"]["random init"]
    assert random_retrieval["text->image"]["mean"][10] < 1.6 * chance

    markdown = (tmp_path / "reproduce" / "results.md").read_text()
    for heading in ("## Linear probe", "## Zero-shot retrieval", "## Temperature ablation", "## Image embeddings"):
        assert heading in markdown
    assert "| ConVIRT | " in markdown and "| random init | " in markdown
    assert (tmp_path / "reproduce" / "tsne-ConVIRT.png").stat().st_size > 10_000
    assert (tmp_path / "reproduce" / "results.json").is_file()
