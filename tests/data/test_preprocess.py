"""Preprocessing: resized 8-bit shards, exact counts, no partial output, no overwrite by accident, bounded memory."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convirt_hf.data import preprocess as preprocess_module
from convirt_hf.data.preprocess import REPAIRED_ROWS_FILE, SKIPPED_ROWS_FILE, SUMMARY_FILE, main, preprocess_corpus
from convirt_hf.data.records import RECORD_COLUMNS, RECORD_FEATURES, make_record
from convirt_hf.data.reports import prepare_report
from convirt_hf.data.skips import BadInputError
from convirt_hf.data.sources import load_pairs

REPO_ROOT = Path(__file__).resolve().parents[2]
REPORT = "FINDINGS: The heart is enlarged. There is a small left pleural effusion.\nIMPRESSION: Cardiomegaly."


def noise(width, height, seed=0, dtype=np.uint8, high=256) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, (height, width)).astype(dtype)


def mixed_corpus(root: Path) -> Path:
    """Images of every size and mode the output must normalise, one bad image and one bad report."""
    images = root / "images"
    images.mkdir(parents=True)
    Image.fromarray(noise(300, 200, 1)).save(images / "wide.png")  # -> 64 x 43
    Image.fromarray(noise(90, 120, 2)).convert("RGB").save(images / "tall.jpg", quality=95)  # RGB -> L, 48 x 64
    Image.fromarray(noise(40, 30, 3)).save(images / "small.png")  # smaller than 64: kept as is
    gradient = np.tile(np.linspace(0, 4095, 128).astype(np.uint16), (64, 1))  # 12-bit values in 16 bits
    Image.fromarray(gradient).save(images / "deep.png")  # -> 8-bit, 64 x 32
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    rows = [("wide", "images/wide.png", REPORT, "train"), ("tall", "images/tall.jpg", REPORT, "train"),
            ("small", "images/small.png", REPORT, "test"), ("deep", "images/deep.png", REPORT, "train"),
            ("broken", "images/broken.png", REPORT, "train"), ("short", "images/small.png", "Normal.", "test")]
    manifest = root / "corpus.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "text", "split", "finding"])
        for row_id, image, text, split in rows:
            writer.writerow([row_id, image, text, split, "edema"])
    return manifest


def test_preprocess_resizes_to_8bit_png_and_writes_a_summary(tmp_path):
    from datasets import Dataset, load_from_disk

    manifest = mixed_corpus(tmp_path / "raw")
    output = preprocess_corpus(manifest, tmp_path / "out", size=64, id_column="id", label_names_column="finding")
    assert output == tmp_path / "out"
    dataset = load_from_disk(str(output))
    assert isinstance(dataset, Dataset) and dataset.column_names == list(RECORD_COLUMNS)
    assert dataset.features == RECORD_FEATURES
    rows = {row["id"]: row for row in dataset}
    assert sorted(rows) == ["deep", "small", "tall", "wide"]
    expected_sizes = {"wide": (64, 43), "tall": (48, 64), "small": (40, 30), "deep": (64, 32)}
    for row_id, row in rows.items():
        assert row["image"].format == "PNG" and row["image"].mode == "L", row_id
        assert row["image"].size == expected_sizes[row_id], row_id
        assert row["text"] == prepare_report(REPORT)[0] and "Cardiomegaly." in row["text"]
        assert row["labels"] == ["edema"]
    assert np.array_equal(np.asarray(rows["small"]["image"]), noise(40, 30, 3))  # not resampled
    deep = np.asarray(rows["deep"]["image"])
    assert deep.min() <= 3 and deep.max() >= 252  # windowed to the full range (>> 8 would end at 15)
    assert np.all(np.diff(deep[16].astype(int)) >= 0)
    stored = dataset.cast_column("image", RECORD_FEATURES["image"].__class__(decode=False))
    assert all(row["image"]["bytes"] and row["image"]["path"] is None for row in stored)  # self-contained

    summary = json.loads((output / SUMMARY_FILE).read_text())
    assert summary["kept"] == 4 and summary["rows"] == {"all": 4} and summary["size"] == 64
    assert summary["source"] == str(manifest)
    # Every skipped and repaired row, with its id, is in the output (the console shows only the first of each reason).
    skipped = [json.loads(line) for line in (output / SKIPPED_ROWS_FILE).read_text().splitlines()]
    assert [(row["id"], row["reason"]) for row in skipped] == [("broken", "corrupt"), ("short", "short_report")]
    assert "broken.png" in skipped[0]["detail"]
    repaired = [json.loads(line) for line in (output / REPAIRED_ROWS_FILE).read_text().splitlines()]
    assert [(row["id"], row["reason"]) for row in repaired] == [("deep", "16bit_to_8bit")]
    assert summary["skipped_rows_file"] == SKIPPED_ROWS_FILE
    assert summary["skipped"] == {"corrupt": 1, "short_report": 1}
    assert summary["repaired"] == {"16bit_to_8bit": 1}
    assert summary["summary"].startswith(
        "[manifest:corpus.csv] read 6 reports with 6 images; kept 4 images (4 reports); skipped 2 images")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temporary folders left


def test_several_splits_give_a_dataset_dict_and_datasets_are_accepted(tmp_path):
    from datasets import DatasetDict, load_from_disk

    manifest = mixed_corpus(tmp_path / "raw")
    output = preprocess_corpus(manifest, tmp_path / "by-split", size=32, split=["train", "validation=test"],
                               id_column="id")  # "validation=test": the source's "test" rows, named "validation"
    corpus = load_from_disk(str(output))
    assert isinstance(corpus, DatasetDict) and set(corpus) == {"train", "validation"}
    assert sorted(corpus["train"]["id"]) == ["deep", "tall", "wide"] and corpus["validation"]["id"] == ["small"]
    summary = json.loads((output / SUMMARY_FILE).read_text())
    assert summary["rows"] == {"train": 3, "validation": 1}
    assert summary["filtered"] == {"split": 6}  # each split read filters the other's rows
    # A record DatasetDict in memory (e.g. from load_pairs) goes through the same resize.
    again = preprocess_corpus(corpus, tmp_path / "again", size=16)
    resized = load_from_disk(str(again))
    assert set(resized) == {"train", "validation"} and max(resized["train"][0]["image"].size) == 16


def test_output_folder_is_never_overwritten_by_accident(tmp_path):
    manifest = mixed_corpus(tmp_path / "raw")
    existing = tmp_path / "out"
    existing.mkdir()
    (existing / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="overwrite"):
        preprocess_corpus(manifest, existing, size=32)
    assert (existing / "keep.txt").read_text() == "precious"
    preprocess_corpus(manifest, existing, size=32, overwrite=True)
    assert not (existing / "keep.txt").exists() and (existing / SUMMARY_FILE).is_file()


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_interrupted_run_leaves_no_partial_output(tmp_path, monkeypatch, overwrite):
    manifest = mixed_corpus(tmp_path / "raw")
    output = tmp_path / "out"
    if overwrite:
        output.mkdir()
        (output / "old.txt").write_text("previous result")
    calls = {"count": 0}
    real_resize = preprocess_module.resize_long_side

    def failing_resize(image, size):
        calls["count"] += 1
        if calls["count"] == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C in the middle of the corpus
        return real_resize(image, size)

    monkeypatch.setattr(preprocess_module, "resize_long_side", failing_resize)
    with pytest.raises(KeyboardInterrupt):
        preprocess_corpus(manifest, output, size=32, overwrite=overwrite)
    assert calls["count"] == 3
    if overwrite:
        assert sorted(p.name for p in output.iterdir()) == ["old.txt"]  # the previous result is intact
    else:
        assert not output.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []  # no temp or cache folders


def test_strict_mode_writes_nothing(tmp_path):
    manifest = mixed_corpus(tmp_path / "raw")
    with pytest.raises(BadInputError) as raised:
        preprocess_corpus(manifest, tmp_path / "out", size=32, id_column="id", strict=True)
    assert (raised.value.row_id, raised.value.reason) in {("broken", "corrupt"), ("short", "short_report")}
    assert not (tmp_path / "out").exists()


def test_a_preprocessed_folder_loads_back_as_is(tmp_path):
    manifest = mixed_corpus(tmp_path / "raw")
    output = preprocess_corpus(manifest, tmp_path / "out", size=32, id_column="id")
    dataset, ledger = load_pairs(output)  # kind "disk", already records: not re-read
    assert sorted(dataset["id"]) == ["deep", "small", "tall", "wide"] and not ledger.skipped


def test_command_line(tmp_path, capsys):
    manifest = mixed_corpus(tmp_path / "raw")
    output = tmp_path / "cli-out"
    code = main(["--source", str(manifest), "--kind", "manifest", "--output", str(output), "--size", "32",
                 "--id-column", "id", "--label-names-column", "finding", "-q"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "kept 4 images (4 reports); skipped 2 images" in printed and str(output) in printed
    summary = json.loads((output / SUMMARY_FILE).read_text())
    assert summary["skipped"] == {"corrupt": 1, "short_report": 1}
    code = main(["--source", str(manifest), "--output", str(output), "-q"])
    assert code == 2 and "already exists" in capsys.readouterr().err
    code = main(["--source", str(manifest), "--output", str(tmp_path / "splits"), "--size", "32", "--split", "train",
                 "--split", "validation=test", "-q"])  # repeated --split, OUTPUT=SOURCE renaming
    assert code == 0
    from datasets import load_from_disk

    assert set(load_from_disk(str(tmp_path / "splits"))) == {"train", "validation"}
    capsys.readouterr()
    code = main(["--source", str(manifest), "--output", str(tmp_path / "x"), "--text-column", "report", "-q"])
    assert code == 2 and "text_column='report'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_preprocess_records_with_paths_from_a_dataset(tmp_path):
    from datasets import Dataset, load_from_disk

    Image.fromarray(noise(100, 50, 7)).save(tmp_path / "a.png")
    records = [make_record("a", str(tmp_path / "a.png"), "Lungs clear.", ["Lungs clear."]),
               make_record("gone", str(tmp_path / "gone.png"), "Lungs clear.", ["Lungs clear."])]
    dataset = Dataset.from_list(records, features=RECORD_FEATURES)
    output = preprocess_corpus(dataset, tmp_path / "out", size=50)
    result = load_from_disk(str(output))
    assert result["id"] == ["a"] and result[0]["image"].size == (50, 25)
    assert json.loads((output / SUMMARY_FILE).read_text())["skipped"] == {"missing_file": 1}
    with pytest.raises(TypeError, match="views"):
        preprocess_corpus(dataset, tmp_path / "out2", views=["PA"])


def test_a_record_without_an_image_is_a_counted_skip(tmp_path):
    from datasets import Dataset, load_from_disk

    Image.fromarray(noise(40, 20, 1)).save(tmp_path / "a.png")
    records = [make_record("a", str(tmp_path / "a.png"), "Lungs clear.", ["Lungs clear."]),
               make_record("no-image", None, "Lungs clear.", ["Lungs clear."])]
    dataset = Dataset.from_list(records, features=RECORD_FEATURES)
    output = preprocess_corpus(dataset, tmp_path / "out", size=16, progress=False)
    assert load_from_disk(str(output))["id"] == ["a"]
    skipped = [json.loads(line) for line in (output / SKIPPED_ROWS_FILE).read_text().splitlines()]
    assert [(row["id"], row["reason"]) for row in skipped] == [("no-image", "missing_file")]
    with pytest.raises(BadInputError) as raised:
        preprocess_corpus(dataset, tmp_path / "strict", size=16, strict=True, progress=False)
    assert (raised.value.row_id, raised.value.reason) == ("no-image", "missing_file")


def test_worker_processes_give_the_same_output(tmp_path):
    from datasets import load_from_disk

    manifest = mixed_corpus(tmp_path / "raw")
    one = load_from_disk(str(preprocess_corpus(manifest, tmp_path / "one", size=32, id_column="id", progress=False)))
    two = load_from_disk(str(preprocess_corpus(manifest, tmp_path / "two", size=32, id_column="id", num_proc=2,
                                               progress=False)))
    rows_one, rows_two = ({row["id"]: row for row in dataset} for dataset in (one, two))
    assert sorted(rows_two) == sorted(rows_one) == ["deep", "small", "tall", "wide"]
    for row_id, row in rows_one.items():
        assert np.array_equal(np.asarray(row["image"]), np.asarray(rows_two[row_id]["image"])), row_id
    summaries = [json.loads((tmp_path / name / SUMMARY_FILE).read_text()) for name in ("one", "two")]
    assert summaries[0]["skipped"] == summaries[1]["skipped"] == {"corrupt": 1, "short_report": 1}
    assert summaries[0]["repaired"] == summaries[1]["repaired"] == {"16bit_to_8bit": 1}
    skipped = sorted((tmp_path / "two" / SKIPPED_ROWS_FILE).read_text().splitlines())
    assert [json.loads(line)["id"] for line in skipped] == ["broken", "short"]


def test_strict_mode_with_worker_processes_on_the_command_line(tmp_path, capsys):
    manifest = mixed_corpus(tmp_path / "raw")
    rows = list(csv.DictReader(open(manifest)))
    only_broken = tmp_path / "raw" / "one_bad.csv"
    with open(only_broken, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(row for row in rows if row["id"] != "short")  # one bad row: the broken image
    code = main(["--source", str(only_broken), "--output", str(tmp_path / "out"), "--size", "32", "--id-column", "id",
                 "--strict", "--num-proc", "2", "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "broken: corrupt" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_progress_is_reported_per_stage_and_silenced_by_quiet(tmp_path, capsys, caplog):
    manifest = mixed_corpus(tmp_path / "raw")
    with caplog.at_level("INFO", logger="convirt_hf"):
        assert main(["--source", str(manifest), "--output", str(tmp_path / "loud"), "--size", "32",
                     "--split", "train", "--split", "validation=test"]) == 0
    err = capsys.readouterr().err
    for label in ("reading manifest:corpus.csv [train]", "reading manifest:corpus.csv [test]",
                  "resizing 'train' to 32 px", "resizing 'validation' to 32 px"):
        assert label in err, label
    assert "resizing 'train' to 32 px: 100%" in err and "4/4" in err  # the total is known: a real bar
    assert "Generating train split" not in err  # datasets' own, unlabelled bar is gone
    rates = [r.getMessage() for r in caplog.records if "rows/s" in r.getMessage()]
    assert len(rates) == 4 and any(m.startswith("resizing 'train' to 32 px: 4 rows in") for m in rates)

    assert main(["--source", str(manifest), "--output", str(tmp_path / "quiet"), "--size", "32", "-q"]) == 0
    err = capsys.readouterr().err
    assert "reading" not in err and "resizing" not in err and "Saving the dataset" not in err


def test_command_line_label_options_and_log_cap(tmp_path, capsys, caplog):
    from datasets import load_from_disk

    manifest = mixed_corpus(tmp_path / "raw")
    rows = list(csv.DictReader(open(manifest)))
    for index, row in enumerate(rows):
        row["Edema"] = "1" if index % 2 == 0 else "0"
    binary = tmp_path / "raw" / "binary.csv"
    with open(binary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with caplog.at_level("INFO", logger="convirt_hf"):
        assert main(["--source", str(binary), "--output", str(tmp_path / "out"), "--size", "16", "--id-column", "id",
                     "--label-columns", "Edema", "--max-logged-per-reason", "0", "-q"]) == 0
    labels = {row["id"]: row["labels"] for row in load_from_disk(str(tmp_path / "out"))}
    assert labels == {"wide": ["edema"], "tall": [], "small": ["edema"], "deep": []}  # binary, not "0"/"1"
    assert not [r for r in caplog.records if "skipped broken" in r.getMessage()]  # capped at 0 on the console ...
    assert "broken" in (tmp_path / "out" / SKIPPED_ROWS_FILE).read_text()  # ... but listed in the output
    out = capsys.readouterr().out
    assert str(tmp_path / "out" / SKIPPED_ROWS_FILE) in out
    assert main(["--source", str(binary), "--output", str(tmp_path / "x"), "--label-columns", "finding", "-q"]) == 2
    assert "--label-names-column finding" in capsys.readouterr().err
    assert main(["--source", str(binary), "--output", str(tmp_path / "x"), "--views", "PA", "-q"]) == 2
    assert "view_column=" in capsys.readouterr().err


def test_preprocessed_output_is_what_training_reads(tmp_path):
    """training/pretrain.py: load_from_disk, then `--train_split` of a DatasetDict (any name for a lone Dataset)."""
    from datasets import Dataset, DatasetDict, load_from_disk

    manifest = mixed_corpus(tmp_path / "raw")
    assert main(["--source", str(manifest), "--output", str(tmp_path / "shards"), "--size", "32",
                 "--split", "train", "validation=test", "-q"]) == 0  # as in docs/data.md
    corpus = load_from_disk(str(tmp_path / "shards"))
    assert isinstance(corpus, DatasetDict) and set(corpus) == {"train", "validation"}
    assert corpus["train"].features == RECORD_FEATURES and len(corpus["train"]) == 3
    assert main(["--source", str(manifest), "--output", str(tmp_path / "single"), "--size", "32", "-q"]) == 0
    assert isinstance(load_from_disk(str(tmp_path / "single")), Dataset)


# --- bounded memory ---------------------------------------------------------------------------------------------

MEASURE = textwrap.dedent(
    """
    import json, sys, threading, time, types
    from pathlib import Path

    repo, corpus, work = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    # The measured code needs only convirt_hf.data: skip convirt_hf/__init__.py (transformers, torch), which would
    # add seconds of start-up and hundreds of MB to the baseline without changing what is measured.
    package = types.ModuleType("convirt_hf")
    package.__path__ = [str(repo / "convirt_hf")]
    sys.modules["convirt_hf"] = package
    from convirt_hf.data.preprocess import preprocess_corpus
    from convirt_hf.data.sources import load_pairs


    def anonymous_rss_kb():  # heap memory only: memory-mapped Arrow files are page cache, not what we bound
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1])


    class Peak:
        def __enter__(self):
            self.base = self.peak = anonymous_rss_kb()
            self.running = True
            self.thread = threading.Thread(target=self.sample, daemon=True)
            self.thread.start()
            return self

        def sample(self):
            while self.running:
                self.peak = max(self.peak, anonymous_rss_kb())
                time.sleep(0.002)

        def __exit__(self, *exc):
            self.running = False
            self.thread.join()
            self.peak = max(self.peak, anonymous_rss_kb())


    warmup = corpus.parent / "warmup.csv"  # first calls load lazy modules; measure steady state only
    load_pairs(warmup, cache_dir=work / "cache0", writer_batch_size=50)
    preprocess_corpus(warmup, work / "out0", size=64, writer_batch_size=50)
    with Peak() as reading:
        dataset, ledger = load_pairs(corpus, cache_dir=work / "cache1", writer_batch_size=50)
        rows = len(dataset)
        del dataset
    with Peak() as preprocessing:
        preprocess_corpus(corpus, work / "out1", size=64, writer_batch_size=50)
    print(json.dumps({"rows": rows, "load_pairs_kb": reading.peak - reading.base,
                      "preprocess_kb": preprocessing.peak - preprocessing.base}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc (Linux) to read RssAnon")
def test_memory_does_not_grow_with_the_corpus(tmp_path):
    """
    load_pairs (with a full decode of every image) and preprocess_corpus over N and 4N images: the peak heap growth
    may not differ by more than half of what holding the extra 3N decoded images would take. Run in subprocesses so
    each measurement starts from a clean heap.
    """
    small, large, side = 1000, 4000, 64
    images = tmp_path / "corpus" / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(large):  # noise: PNG cannot compress it, so the encoded corpus is as big as the decoded one
        Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).save(images / f"{index}.png",
                                                                               compress_level=0)
    for name, count in (("warmup.csv", 20), ("small.csv", small), ("large.csv", large)):
        with open(tmp_path / "corpus" / name, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "text"])
            writer.writerows([f"images/{index}.png", REPORT] for index in range(count))
    script = tmp_path / "measure.py"
    script.write_text(MEASURE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": ""}
    runs = {  # both at once: 2 cores, and the peaks are per process
        name: subprocess.Popen(
            [sys.executable, str(script), str(REPO_ROOT), str(tmp_path / "corpus" / f"{name}.csv"),
             str(tmp_path / f"work-{name}")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for name in ("small", "large")
    }
    results = {}
    for name, process in runs.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
        results[name] = json.loads(out.strip().splitlines()[-1])
    assert results["small"]["rows"] == small and results["large"]["rows"] == large
    extra_decoded_kb = (large - small) * side * side / 1024  # 12 MB: what keeping the extra images would cost
    for measure in ("load_pairs_kb", "preprocess_kb"):
        growth = results["large"][measure] - results["small"][measure]
        assert growth < extra_decoded_kb / 2, (measure, results)
