"""Property-based tests (hypothesis) of the report parser, the sentence sampler and the text repair, at the level a
row's fate is decided: every report either gives a usable text or is counted once as unusable, never a crash.

tests/data/test_reports.py already checks that arbitrary text never crashes the parser functions; these properties
go through the row pipeline (`finish_candidate`, `load_pairs` on a manifest), through undecodable bytes, and check
that a well-formed section is always found whatever surrounds it.
"""

from __future__ import annotations

import io
import json
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from convirt_hf.data.pairs import PairViews, pair_text
from convirt_hf.data.reports import count_tokens, prepare_report, sample_sentence
from convirt_hf.data.sources import Candidate, PairLedger, PairOptions, decode_bytes, finish_candidate, repair_text

REPORT_REASONS = {"empty_report", "no_findings_impression", "short_report", "missing_report"}
_buffer = io.BytesIO()
Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(_buffer, format="PNG")
PNG = _buffer.getvalue()

HEADERISH = st.sampled_from(["FINDINGS:", "IMPRESSION:", "Impression", "INDICATION:", "HISTORY:", "FINAL REPORT",
                             "WET READ:", "CONCLUSION:", "\n", "\n\n", "\r\n", " ", ".", "1.", "-", "XXXX", "___",
                             "[**Name**]", "\u2028", "\x00", "\ud800", "no", "effusion"])
# arbitrary unicode (lone surrogates included: they are what surrogateescape makes of undecodable bytes), arbitrary
# bytes, and mixtures of header-like pieces and noise
REPORTS = st.one_of(
    st.none(),
    st.text(),
    st.binary(),
    st.lists(st.one_of(HEADERISH, st.text(max_size=6)), max_size=30).map("".join),
)


def row_outcome(report) -> tuple[dict | None, PairLedger]:
    ledger = PairLedger(source="property", max_logged_per_reason=0)
    candidate = Candidate(id="row-1", image={"bytes": PNG, "path": None}, report=report)
    record = finish_candidate(candidate, PairOptions(check_images=False), ledger)
    return record, ledger


@settings(max_examples=400, deadline=None)
@given(REPORTS)
def test_every_report_is_usable_or_counted_once_as_unusable(report):
    record, ledger = row_outcome(report)
    if record is None:
        assert ledger.total_skipped == 1 and set(ledger.skipped) <= REPORT_REASONS, ledger.as_dict()
        assert ledger.skipped_ids[next(iter(ledger.skipped))] == ["row-1"]
    else:
        assert ledger.total_skipped == 0
        assert record["text"] and count_tokens(record["text"]) >= 3
        assert record["sentences"] and all(isinstance(s, str) and s for s in record["sentences"])
        for value in (record["text"], *record["sentences"]):
            value.encode("utf-8")  # what Arrow stores: no lone surrogate survives
        # bytes that are valid UTF-8 (NULs and all) are read as they are; anything else is repaired, and says so
        needed_repair = (decode_bytes(report)[1] if isinstance(report, bytes)
                         else isinstance(report, str) and repair_text(report)[1])
        assert ledger.repaired.get("report_cp1252", 0) == int(needed_repair), (report, ledger.repaired)


WORDS = st.sampled_from(["heart", "lungs", "clear", "enlarged", "effusion", "pleural", "mild", "left", "base",
                         "opacity", "stable", "normal", "size", "small", "right"])
SENTENCES = st.lists(WORDS, min_size=3, max_size=8).map(lambda words: " ".join(words).capitalize() + ".")
NOISE = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(NOISE, st.sampled_from(["FINDINGS:", "Findings:", "IMPRESSION:", "FINDINGS", "Impression"]), SENTENCES, NOISE)
def test_a_section_at_a_line_start_is_always_found_whatever_surrounds_it(before, header, sentence, after):
    report = f"{before}\n{header}\n{sentence}\n\n{after}"
    text, sentences = prepare_report(report)
    assert sentence in text, (report, text)
    assert sentence in sentences, (report, sentences)


@settings(max_examples=300, deadline=None)
@given(st.binary())
def test_any_bytes_decode_to_storable_text(data):
    text, repaired = decode_bytes(data)
    text.encode("utf-8")
    try:
        expected = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError:
        assert repaired
    else:
        assert text == expected and not repaired  # valid UTF-8 is never "repaired"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1), max_size=12), st.text(), st.integers(0, 2**31), st.integers(0, 50))
def test_the_sampled_sentence_is_from_the_pool_and_reproducible(pool, text, seed, epoch):
    draws = [pair_text(pool, text, "sentence", np.random.default_rng([seed, epoch, 3])) for _ in range(2)]
    assert draws[0] == draws[1]  # the same (seed, epoch, row) always gives the same sentence
    assert draws[0] in pool if pool else draws[0] == text
    assert pair_text(pool, text, "report", np.random.default_rng(seed)) == text
    if pool:
        assert sample_sentence(pool, random.Random(seed)) in pool


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(REPORTS.filter(lambda value: value is not None), min_size=1, max_size=12))
def test_a_manifest_of_arbitrary_reports_accounts_for_every_row(reports):
    """Through load_pairs on a JSON lines manifest: kept + skipped = rows, and skips carry report reasons only."""
    from convirt_hf.data.sources import load_pairs

    reports = [value.decode("latin-1") if isinstance(value, bytes) else value for value in reports]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "x.png").write_bytes(PNG)
        with (root / "pairs.jsonl").open("w") as handle:
            for index, report in enumerate(reports):
                handle.write(json.dumps({"id": f"r{index}", "image": "x.png", "text": report}) + "\n")
        dataset, ledger = load_pairs(root / "pairs.jsonl", id_column="id", progress=False, max_logged_per_reason=0,
                                     cache_dir=root / "cache")
        kept_ids = set(dataset["id"])
        skipped_ids = {row_id for ids in ledger.skipped_ids.values() for row_id in ids}
        assert len(dataset) + ledger.total_skipped == len(reports)
        assert kept_ids.isdisjoint(skipped_ids) and kept_ids | skipped_ids == {f"r{i}" for i in range(len(reports))}
        assert set(ledger.skipped) <= REPORT_REASONS
        for row in dataset:
            assert row["text"] and row["sentences"]


class _Records:
    """A stand-in for a record dataset: PairViews only indexes rows."""

    def __init__(self, pools):
        self.rows = [{"image": np.zeros((8, 8), np.uint8), "text": " ".join(pool) or "x y z", "sentences": pool,
                      "id": f"r{i}"} for i, pool in enumerate(pools)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.text(min_size=1, max_size=10), max_size=5), min_size=1, max_size=6),
       st.integers(0, 1000), st.integers(0, 5))
def test_training_views_depend_only_on_seed_epoch_and_row(pools, seed, epoch):
    assume(any(pools))

    def transform(image, generator):
        return torch.rand(1, generator=generator)

    records = _Records(pools)
    first, second = PairViews(records, transform, seed), PairViews(records, transform, seed)
    for row in reversed(range(len(pools))):  # any order, any instance (worker): the same view
        index = epoch * len(pools) + row
        a, b = first[index], second[index]
        assert a["sentence"] == b["sentence"] and torch.equal(a["pixel_values"], b["pixel_values"])
        assert a["sentence"] in pools[row] if pools[row] else a["sentence"] == records[row]["text"]
