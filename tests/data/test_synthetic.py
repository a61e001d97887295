"""The synthetic corpus: deterministic, labelled as configured, reports that match their images, visible findings."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from convirt_hf.data import synthetic
from convirt_hf.data.reports import extract_sections, split_sentences
from convirt_hf.data.synthetic import (
    CATEGORIES,
    CATEGORY_KEYWORDS,
    TEXT_QUERIES,
    SyntheticCorpusConfig,
    corpus_fingerprint,
    ensure_synthetic_corpus,
    generate_row,
    generate_synthetic_corpus,
    load_synthetic_corpus,
    sample_findings,
    write_report,
)

NEGATION = re.compile(r"\b(no|without|normal|not|within normal limits)\b", re.I)


def small_config(seed=0, **overrides):
    values = dict(seed=seed, image_size=64, num_pretrain=16, num_validation=8, num_cls_train=8, num_cls_val=8,
                  num_cls_test=8, retrieval_candidates_per_category=2, retrieval_queries_per_category=1)
    values.update(overrides)
    return SyntheticCorpusConfig(**values)


def mentions(text: str, category: str) -> bool:
    return any(keyword in text.lower() for keyword in CATEGORY_KEYWORDS[category])


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return generate_synthetic_corpus(tmp_path_factory.mktemp("synthetic") / "corpus", small_config())


def test_same_seed_same_corpus_other_seed_other_corpus(corpus_dir, tmp_path):
    again = generate_synthetic_corpus(tmp_path / "again", small_config())
    other = generate_synthetic_corpus(tmp_path / "other", small_config(seed=1))
    first = corpus_fingerprint(load_synthetic_corpus(corpus_dir))
    assert first == corpus_fingerprint(load_synthetic_corpus(again))
    assert first != corpus_fingerprint(load_synthetic_corpus(other))
    # rows do not depend on the order they are generated in
    assert generate_row(small_config(), "pretrain", 5) == generate_row(small_config(), "pretrain", 5)


def test_splits_and_label_counts_are_as_configured(corpus_dir):
    corpus = load_synthetic_corpus(corpus_dir)
    config = small_config()
    assert {split: len(corpus[split]) for split in corpus} == config.split_sizes()
    for split in ("retrieval_candidates", "retrieval_queries"):
        labels = corpus[split]["labels"]
        assert all(len(row) == 1 for row in labels), split
        per_category = config.retrieval_candidates_per_category if split == "retrieval_candidates" else \
            config.retrieval_queries_per_category
        assert {c: sum(row == [c] for row in labels) for c in CATEGORIES} == {c: per_category for c in CATEGORIES}
    # every category is the primary finding of an equal share of each other split
    balanced = load_synthetic_corpus(generate_synthetic_corpus(corpus_dir.parent / "balanced",
                                                               small_config(second_finding_probability=0.0)))
    for split in ("pretrain", "cls_train"):
        labels = balanced[split]["labels"]
        assert {c: sum(row == [c] for row in labels) for c in CATEGORIES} == {c: len(labels) // 8 for c in CATEGORIES}


def test_rows_follow_the_record_shape(corpus_dir):
    row = load_synthetic_corpus(corpus_dir)["pretrain"][3]
    assert row["id"].startswith("synthetic-0-pretrain-")
    assert row["image"].mode == "L" and row["image"].size == (64, 64)
    assert row["sentences"] and all(sentence in row["text"] for sentence in row["sentences"])
    assert row["patient_id"] and row["study_id"] and row["view"] in ("PA", "AP")


def test_text_queries_mention_their_category_and_no_other():
    assert set(TEXT_QUERIES) == set(CATEGORIES)
    for category, queries in TEXT_QUERIES.items():
        assert len(queries) == 5 and len(set(queries)) == 5
        for query in queries:
            if category != "no finding":
                assert mentions(query, category), (category, query)
            others = [other for other in CATEGORIES if other != category and mentions(query, other)]
            assert not others, (category, query, others)


def test_reports_describe_present_findings_and_never_assert_absent_ones():
    for index in range(200):
        rng = np.random.default_rng([7, index])
        findings = sample_findings(CATEGORIES[index % 8], rng, second_probability=0.5)
        report = write_report(findings, rng, device=index % 3 == 0)
        sections = extract_sections(report)
        assert set(sections) == {"findings", "impression"}, report
        present = {finding.name for finding in findings}
        sentences = split_sentences(sections["findings"]) + split_sentences(sections["impression"])
        for name in present:
            assert any(mentions(s, name) and not NEGATION.search(s) for s in sentences), (name, report)
        for sentence in sentences:
            for category in CATEGORIES[:-1]:
                if category not in present and mentions(sentence, category):
                    assert NEGATION.search(sentence), (category, sentence)
        if not present:
            assert any(mentions(s, "no finding") for s in split_sentences(sections["impression"])), report


def _images(split_rows):
    return np.stack([np.asarray(Image.open(io.BytesIO(r["image"]["bytes"]))) for r in split_rows]).astype(np.float32)


def test_findings_are_visible():
    config = small_config(image_size=96)
    rows = [generate_row(config, "retrieval_candidates", i) for i in range(8 * 12)]
    images = _images(rows)
    labels = np.array([CATEGORIES.index(r["labels"][0]) for r in rows])
    assert images.dtype == np.float32 and images.shape == (96, 96, 96) and images.max() <= 255

    # cardiomegaly: the heart widens the bright band across the lower middle of the chest
    band = images[:, 52:66, 20:76] > 120
    width = band.mean(axis=(1, 2))
    assert width[labels == 1].mean() > width[labels == 7].mean() + 0.08

    # a nearest-centroid classifier on 16x16 thumbnails separates the categories far better than chance
    thumbnails = images.reshape(len(images), 16, 6, 16, 6).mean(axis=(2, 4)).reshape(len(images), -1)
    thumbnails = (thumbnails - thumbnails.mean(1, keepdims=True)) / (thumbnails.std(1, keepdims=True) + 1e-6)
    train = (np.arange(len(labels)) // 8) % 2 == 0
    centroids = np.stack([thumbnails[train & (labels == k)].mean(0) for k in range(8)])
    predicted = ((thumbnails[~train, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == labels[~train]).mean() > 0.35  # chance is 0.125


def test_cache_is_reused_and_keyed_by_config(tmp_path, monkeypatch):
    first = ensure_synthetic_corpus(tmp_path, small_config())

    def no_generation(*args, **kwargs):
        raise AssertionError("the cached corpus should have been reused")

    with monkeypatch.context() as patch:
        patch.setattr(synthetic, "generate_synthetic_corpus", no_generation)
        assert ensure_synthetic_corpus(tmp_path, small_config()) == first
    other = ensure_synthetic_corpus(tmp_path, small_config(num_pretrain=24))
    assert other != first and len(load_synthetic_corpus(other)["pretrain"]) == 24


def test_interrupted_generation_leaves_no_corpus(tmp_path, monkeypatch):
    calls = {"count": 0}
    real_generate_row = synthetic.generate_row

    def failing_row(config, split, index):
        calls["count"] += 1
        if calls["count"] == 20:
            raise KeyboardInterrupt("simulated interruption")
        return real_generate_row(config, split, index)

    monkeypatch.setattr(synthetic, "generate_row", failing_row)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_corpus(tmp_path, small_config(seed=3))
    assert list(tmp_path.iterdir()) == []


def test_config_validation():
    with pytest.raises(ValueError, match="num_pretrain"):
        SyntheticCorpusConfig(num_pretrain=0)
    with pytest.raises(ValueError, match="second_finding_probability"):
        SyntheticCorpusConfig(second_finding_probability=2.0)


def test_sample_grid_and_cli(tmp_path, capsys):
    synthetic.main(["--grid", str(tmp_path / "grid.png"), "--output", str(tmp_path / "cli"), "--num-pretrain", "8",
                    "--num-validation", "8", "--num-cls-train", "0", "--num-cls-val", "0", "--num-cls-test", "0",
                    "--retrieval-candidates-per-category", "1", "--retrieval-queries-per-category", "1",
                    "--image-size", "32"])
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (4 * 256, 2 * (256 + 22))
    assert "pretrain=8" in capsys.readouterr().out
    assert set(load_synthetic_corpus(tmp_path / "cli")) == {"pretrain", "validation", "retrieval_candidates",
                                                            "retrieval_queries"}
    with pytest.raises(SystemExit):
        synthetic.main(["--output", str(tmp_path / "cli")])  # exists: refuses
