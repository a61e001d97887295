"""Bad data at scale, through the path users take: a manifest -> `python -m convirt_hf.data.preprocess` -> pretraining.

400 pairs, 5% of the images bad (corrupt, truncated, zero-byte, missing, 16-bit, RGBA, over the pixel limit) and 5%
of the reports bad (empty, whitespace, cp1252 bytes, 100-200 kB long). Preprocessing must skip or repair exactly
what was planted, counted per reason and listed per id; training then completes, reads only kept rows, and every
text it tokenises is capped at --max_length tokens.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from faultkit import tiny_args

ROWS = 400
MAX_PIXELS = 40_000  # the good images are 40-64 px a side; "enormous" ones are 256 x 256 = 65 536 pixels
BAD_IMAGES = {"corrupt": 3, "truncated": 3, "zero_byte": 3, "missing_file": 3, "16bit": 3, "rgba": 3, "too_large": 2}
BAD_REPORTS = {"empty": 5, "whitespace": 5, "cp1252": 5, "long": 5}
FINDINGS = ["The heart is enlarged", "There is a small left pleural effusion", "The lungs are clear",
            "No pneumothorax is seen", "Mild pulmonary edema is present", "There is a right lower lobe opacity",
            "The osseous structures are intact", "Atelectasis at the left base"]


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def good_report(rng: np.random.Generator, index: int) -> str:
    picks = rng.choice(len(FINDINGS), size=3, replace=False)
    findings = ". ".join(FINDINGS[i] for i in picks)
    return f"INDICATION: Cough, case {index}.\nFINDINGS: {findings}.\nIMPRESSION: {FINDINGS[picks[0]]}, case {index}."


def long_report(index: int, size: int) -> str:
    sentence = f"The cardiac silhouette is stable in case {index} and the lungs are clear. "
    return "FINDINGS: " + sentence * (size // len(sentence) + 1)


def build_corpus(root: Path) -> tuple[Path, dict[str, str]]:
    """Writes the images and pairs.csv; returns the manifest and {row id: what was planted} (good rows: "good")."""
    rng = np.random.default_rng(0)
    images = root / "images"
    images.mkdir(parents=True)
    kinds = ["good"] * ROWS
    plan = [kind for kind, count in BAD_IMAGES.items() for _ in range(count)]
    plan += [f"report_{kind}" for kind, count in BAD_REPORTS.items() for _ in range(count)]
    for slot, kind in zip(rng.choice(ROWS, size=len(plan), replace=False), plan):
        kinds[int(slot)] = kind
    planted, rows = {}, []
    for index, kind in enumerate(kinds):
        row_id = f"row{index:04d}-{kind}"
        planted[row_id] = kind
        side = int(rng.integers(40, 65))
        pixels = rng.integers(0, 256, (side, side), dtype=np.uint8)
        path = images / f"{row_id}.png"
        report: str | bytes = good_report(rng, index)
        if kind == "corrupt":
            path.write_bytes(b"this is not an image at all " * 20)
        elif kind == "truncated":
            data = png_bytes(pixels)
            path.write_bytes(data[: len(data) // 2])
        elif kind == "zero_byte":
            path.write_bytes(b"")
        elif kind == "missing_file":
            pass  # listed, never written
        elif kind == "16bit":
            path.write_bytes(png_bytes(pixels.astype(np.uint16) * 16))  # 12-bit data in 16 bits
        elif kind == "rgba":
            rgba = np.dstack([pixels, pixels, pixels, np.full_like(pixels, 200)])
            path.write_bytes(png_bytes(rgba))
        elif kind == "too_large":
            path.write_bytes(png_bytes(rng.integers(0, 256, (256, 256), dtype=np.uint8)))
        else:
            path.write_bytes(png_bytes(pixels))
        if kind == "report_empty":
            report = ""
        elif kind == "report_whitespace":
            report = " \t\n   \r\n "
        elif kind == "report_cp1252":
            report = f"FINDINGS: The patient\u2019s heart is \u201cnormal\u201d in size, case {index}.".encode("cp1252")
        elif kind == "report_long":
            report = long_report(index, 100_000 + 25_000 * (index % 5))  # 100-200 kB: past csv's 128 kB field limit
        rows.append((row_id, f"images/{row_id}.png", report))
    manifest = root / "pairs.csv"
    with manifest.open("wb") as handle:  # bytes: the cp1252 reports must reach the file undecoded
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerow(["id", "image", "text"])
        handle.write(text.getvalue().encode())
        for row_id, image, report in rows:
            text = io.StringIO()
            marker = "\x00CP1252\x00"
            cell = marker if isinstance(report, bytes) else report
            csv.writer(text, lineterminator="\n").writerow([row_id, image, cell])
            line = text.getvalue().encode("utf-8")
            if isinstance(report, bytes):
                line = line.replace(marker.encode(), report)
            handle.write(line)
    return manifest, planted


EXPECTED_SKIPPED = {"corrupt": 3, "truncated": 3, "zero_byte": 3, "missing_file": 3, "too_large": 2, "empty_report": 10}
EXPECTED_REPAIRED = {"16bit_to_8bit": 3, "alpha_flattened": 3, "report_cp1252": 5}
SKIP_REASON = {"corrupt": "corrupt", "truncated": "truncated", "zero_byte": "zero_byte", "missing_file": "missing_file",
               "too_large": "too_large", "report_empty": "empty_report", "report_whitespace": "empty_report"}
REPAIR_REASON = {"16bit": "16bit_to_8bit", "rgba": "alpha_flattened", "report_cp1252": "report_cp1252"}


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    from convirt_hf.data import preprocess

    root = tmp_path_factory.mktemp("bad-corpus")
    manifest, planted = build_corpus(root / "raw")
    shards = root / "shards"
    code = preprocess.main(["--source", str(manifest), "--output", str(shards), "--id-column", "id", "--size", "48",
                            "--max-pixels", str(MAX_PIXELS), "-q"])
    assert code == 0
    return shards, planted


def test_preprocessing_skips_and_repairs_exactly_what_was_planted(preprocessed):
    shards, planted = preprocessed
    summary = json.loads((shards / "preprocess_summary.json").read_text())
    assert summary["skipped"] == EXPECTED_SKIPPED
    assert summary["repaired"] == EXPECTED_REPAIRED
    assert summary["kept"] == ROWS - sum(EXPECTED_SKIPPED.values()) == 376

    skipped = [json.loads(line) for line in (shards / "skipped_rows.jsonl").read_text().splitlines()]
    repaired = [json.loads(line) for line in (shards / "repaired_rows.jsonl").read_text().splitlines()]
    assert sorted((row["id"], row["reason"]) for row in skipped) == sorted(
        (row_id, SKIP_REASON[kind]) for row_id, kind in planted.items() if kind in SKIP_REASON)
    assert sorted((row["id"], row["reason"]) for row in repaired) == sorted(
        (row_id, REPAIR_REASON[kind]) for row_id, kind in planted.items() if kind in REPAIR_REASON)
    assert all(row["detail"] or row["reason"] == "empty_report" for row in skipped)  # says why, per row

    from datasets import load_from_disk

    dataset = load_from_disk(str(shards))
    kept_kinds = Counter(planted[row_id] for row_id in dataset["id"])
    # every good row, and every repaired or merely long one, is kept
    assert kept_kinds == Counter({"good": ROWS - 40, "16bit": 3, "rgba": 3, "report_cp1252": 5, "report_long": 5})
    for row in dataset:
        image = row["image"]
        assert image.mode == "L" and max(image.size) <= 48, (row["id"], image.mode, image.size)
        assert row["text"] and row["sentences"]
        if planted[row["id"]] == "report_cp1252":
            assert "patient\u2019s heart is \u201cnormal\u201d" in row["text"]  # decoded as cp1252, not dropped
        if planted[row["id"]] == "report_long":
            assert len(row["text"]) >= 100_000


def test_training_on_the_shards_reads_no_bad_row_and_caps_long_texts(preprocessed, tmp_path, monkeypatch):
    from datasets import load_from_disk

    from convirt_hf.data.collate import ConvirtCollator
    from convirt_hf.data.pairs import PairViews
    from convirt_hf.training import pretrain

    shards, planted = preprocessed
    read, longest = [], {"tokens": 0, "characters": 0}
    original_item, original_collate = PairViews.__getitem__, ConvirtCollator.__call__

    def recording_item(self, tagged_index):
        example = original_item(self, tagged_index)
        pixels = example["pixel_values"]  # training rows come decoded (views are made on the device), validation's
        raw = pixels.dtype == torch.uint8 and pixels.shape[0] == 1 and max(pixels.shape[1:]) <= 48  # as views
        assert raw or (pixels.shape == (3, 32, 32) and torch.isfinite(pixels).all()), (pixels.dtype, pixels.shape)
        read.append(example["id"])
        longest["characters"] = max(longest["characters"], len(example["sentence"]))
        return example

    def recording_collate(self, examples):
        batch = original_collate(self, examples)
        longest["tokens"] = max(longest["tokens"], batch["input_ids"].shape[1])
        return batch

    monkeypatch.setattr(PairViews, "__getitem__", recording_item)
    monkeypatch.setattr(ConvirtCollator, "__call__", recording_collate)
    kept = len(load_from_disk(str(shards)))
    train_rows = kept - min(5000, kept // 10)  # what training holds out for validation without a validation split
    steps = train_rows // 8  # one whole epoch
    metrics = pretrain.main(tiny_args(shards, tmp_path / "run", retrieval_set="none", text_mode="report",
                                      max_steps=steps, eval_steps=steps, save_steps=steps, max_length=32))
    assert metrics["steps"] == steps and math.isfinite(metrics["best_validation_loss"])

    skipped = {row_id for row_id, kind in planted.items() if kind in SKIP_REASON}
    assert read and not set(read) & skipped
    assert {planted[row_id] for row_id in read} <= {"good", "16bit", "rgba", "report_cp1252", "report_long"}
    assert "report_long" in {planted[row_id] for row_id in read}
    assert longest["characters"] >= 100_000  # a whole long report went to the tokenizer ...
    assert longest["tokens"] == 32  # ... and came out as --max_length tokens
