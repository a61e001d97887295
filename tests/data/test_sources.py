"""Generic sources (manifest, imagefolder, hub, disk) into the record shape; bad input skipped and counted exactly."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convirt_hf.data import sources
from convirt_hf.data.records import RECORD_COLUMNS, RECORD_FEATURES, make_record
from convirt_hf.data.reports import prepare_report
from convirt_hf.data.skips import BadInputError
from convirt_hf.data.sources import checks, detect_kind, generic, load_pairs, pipeline, registry, tables

GOOD_REPORT = "FINDINGS: The heart is enlarged. There is a small left pleural effusion.\nIMPRESSION: Cardiomegaly."


def noise(width=24, height=20, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def save(path: Path, image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(path)
    return path


def png(image) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --- a corpus with one row of every kind of bad input ----------------------------------------------------------


def bad_input_corpus(root: Path) -> tuple[Path, dict]:
    """
    A CSV manifest with good rows, every kind of bad row and every kind of repair; returns it with the exact counts
    expected (skips by reason with their ids, repairs by reason, ids kept).
    """
    images = root / "images"
    save(images / "good.png", noise())
    save(images / "good2.jpg", noise(seed=1))
    data = (images / "good.png").read_bytes()
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 40)
    (images / "truncated.png").write_bytes(data[: len(data) // 2])
    (images / "zero.png").write_bytes(b"")
    save(images / "huge.png", np.zeros((200, 300), dtype=np.uint8))  # over max_pixels=50_000 below
    save(images / "deep.png", np.tile(np.linspace(0, 4095, 32).astype(np.uint16), (8, 1)))
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 255
    save(images / "alpha.png", Image.fromarray(rgba, mode="RGBA"))
    palette = Image.new("P", (8, 8))
    palette.putpalette([0, 0, 0, 120, 120, 120] + [0] * 750)
    palette.putdata([1] * 64)
    save(images / "palette.png", palette)

    rows = [
        ("good", "images/good.png", GOOD_REPORT),
        ("good-jpg", "images/good2.jpg", "Lungs are clear. No effusion."),  # no headers: section text already
        ("corrupt", "images/corrupt.png", GOOD_REPORT),
        ("truncated", "images/truncated.png", GOOD_REPORT),
        ("zero", "images/zero.png", GOOD_REPORT),
        ("missing", "images/absent.png", GOOD_REPORT),
        ("huge", "images/huge.png", GOOD_REPORT),
        ("empty", "images/good.png", ""),
        ("blank", "images/good.png", "   \n\t "),
        ("short", "images/good.png", "IMPRESSION: Normal chest."),
        ("sectionless", "images/good.png", "INDICATION: Cough.\nCOMPARISON: None."),
        ("deep", "images/deep.png", GOOD_REPORT),
        ("alpha", "images/alpha.png", GOOD_REPORT),
        ("palette", "images/palette.png", GOOD_REPORT),
        ("cp1252", "images/good.png", "FINDINGS: Heart size normal \u2013 lungs clear.\nIMPRESSION: Normal chest."),
    ]
    manifest = root / "pairs.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "text", "patient"])
        for row_id, image, text in rows:
            writer.writerow([row_id, image, text, f"p-{row_id}"])
    # Make the last report cp1252 bytes (0x96 is an en dash there, invalid in UTF-8), as exported by old systems.
    raw = manifest.read_bytes().replace("\u2013".encode("utf-8"), b"\x96")
    manifest.write_bytes(raw)
    expected = {
        "skipped": {"corrupt": ["corrupt"], "truncated": ["truncated"], "zero_byte": ["zero"],
                    "missing_file": ["missing"], "too_large": ["huge"], "empty_report": ["empty", "blank"],
                    "short_report": ["short"], "no_findings_impression": ["sectionless"]},
        "repaired": {"16bit_to_8bit": 1, "alpha_flattened": 1, "palette_converted": 1, "report_cp1252": 1},
        "kept": ["good", "good-jpg", "deep", "alpha", "palette", "cp1252"],
    }
    return manifest, expected


def test_every_bad_input_is_skipped_and_counted_exactly(tmp_path):
    manifest, expected = bad_input_corpus(tmp_path)
    dataset, ledger = load_pairs(manifest, id_column="id", patient_column="patient", max_pixels=50_000)
    assert dataset["id"] == expected["kept"]
    assert {reason: ids for reason, ids in ledger.skipped_ids.items()} == expected["skipped"]
    assert ledger.skipped == Counter({reason: len(ids) for reason, ids in expected["skipped"].items()})
    assert ledger.repaired == Counter(expected["repaired"])
    assert ledger.summary(kept=len(dataset)).startswith(
        "[manifest:pairs.csv] read 15 reports with 15 images; kept 6 images; skipped 9 images (")

    rows = {row["id"]: row for row in dataset}
    assert rows["good"]["text"] == "The heart is enlarged. There is a small left pleural effusion. Cardiomegaly."
    assert (rows["good"]["text"], rows["good"]["sentences"]) == prepare_report(GOOD_REPORT)
    assert rows["good"]["patient_id"] == "p-good"
    # The cp1252 byte 0x96 came back as the en dash it was, not as a replacement character.
    assert rows["cp1252"]["text"] == "Heart size normal \u2013 lungs clear. Normal chest."
    # Repaired images are stored repaired: what training decodes is the checked 8-bit picture.
    deep = np.asarray(rows["deep"]["image"])
    assert rows["deep"]["image"].mode == "L" and deep.min() == 0 and deep.max() == 255
    assert np.all(np.abs(np.asarray(rows["alpha"]["image"]).astype(int) - 76) <= 1)  # pure red, opaque
    assert set(np.asarray(rows["palette"]["image"]).ravel().tolist()) == {120}
    # Ordinary images keep their file path (nothing copied).
    raw = dataset.cast_column("image", RECORD_FEATURES["image"].__class__(decode=False))
    stored = {row["id"]: row["image"] for row in raw}
    assert stored["good"]["path"] == str((tmp_path / "images" / "good.png").resolve())
    assert stored["good"]["bytes"] is None
    assert stored["deep"]["bytes"] is not None


@pytest.mark.parametrize(
    "bad_id, reason",
    [("corrupt", "corrupt"), ("truncated", "truncated"), ("zero", "zero_byte"), ("missing", "missing_file"),
     ("huge", "too_large"), ("empty", "empty_report"), ("blank", "empty_report"), ("short", "short_report"),
     ("sectionless", "no_findings_impression")],
)
def test_strict_mode_raises_on_each_kind_of_bad_row(tmp_path, bad_id, reason):
    manifest, _ = bad_input_corpus(tmp_path)
    rows = list(csv.DictReader(open(manifest, encoding="utf-8", errors="replace")))
    keep = [row for row in rows if row["id"] in ("good", bad_id)]
    strict_manifest = write_csv(tmp_path / "strict.csv", keep)
    with pytest.raises(BadInputError) as raised:
        load_pairs(strict_manifest, id_column="id", max_pixels=50_000, strict=True)
    assert raised.value.reason == reason and raised.value.row_id == bad_id
    # Repairs are not errors: strict mode keeps them.
    repaired = write_csv(tmp_path / "repaired.csv", [row for row in rows if row["id"] in ("good", "deep", "palette")])
    dataset, ledger = load_pairs(repaired, id_column="id", strict=True)
    assert len(dataset) == 3 and ledger.repaired == Counter({"16bit_to_8bit": 1, "palette_converted": 1})


def test_check_images_false_still_catches_missing_files_only(tmp_path):
    manifest, _ = bad_input_corpus(tmp_path)
    dataset, ledger = load_pairs(manifest, id_column="id", check_images=False)
    assert ledger.skipped_ids["missing_file"] == ["missing"]
    assert {"corrupt", "truncated", "zero", "huge"} <= set(dataset["id"])  # not opened
    assert "corrupt" not in ledger.skipped


def test_worker_processes_give_the_same_counts(tmp_path):
    manifest, expected = bad_input_corpus(tmp_path)
    dataset, ledger = load_pairs(manifest, id_column="id", max_pixels=50_000, num_proc=2)
    assert sorted(dataset["id"]) == sorted(expected["kept"])
    assert ledger.skipped == Counter({reason: len(ids) for reason, ids in expected["skipped"].items()})
    assert ledger.repaired == Counter(expected["repaired"])


# --- column handling --------------------------------------------------------------------------------------------


def test_wrong_column_names_fail_before_anything_loads(tmp_path, monkeypatch):
    manifest, _ = bad_input_corpus(tmp_path)

    def must_not_run(*args, **kwargs):
        raise AssertionError("rows were read before the columns were checked")

    monkeypatch.setattr(checks, "load_image", must_not_run)
    monkeypatch.setattr(tables, "iter_table_rows", must_not_run)
    monkeypatch.setattr(pipeline, "build_dataset", must_not_run)
    for kwargs, named in [({"text_column": "report"}, "text_column='report'"),
                          ({"image_column": "path"}, "image_column='path'"),
                          ({"label_columns": ["Edema", "text"]}, "label_columns='Edema'"),
                          ({"patient_column": "subject"}, "patient_column='subject'")]:
        with pytest.raises(ValueError) as raised:
            load_pairs(manifest, **kwargs)
        message = str(raised.value)
        assert named in message
        assert "id, image, text, patient" in message  # the columns that exist


def test_labels_from_binary_columns_and_from_a_names_column(tmp_path):
    save(tmp_path / "a.png", noise())
    rows = [{"image": "a.png", "text": GOOD_REPORT, "Edema": "1", "Pneumonia": "0.0", "Cardiomegaly": "1.0",
             "names": "Edema|Pleural Effusion", "view": "pa", "study": "s1"},
            {"image": "a.png", "text": GOOD_REPORT, "Edema": "-1", "Pneumonia": "", "Cardiomegaly": "0",
             "names": '["No Finding"]', "view": "LATERAL", "study": "s2"}]
    manifest = write_csv(tmp_path / "labels.csv", rows)
    dataset, _ = load_pairs(manifest, label_columns=["Edema", "Pneumonia", "Cardiomegaly"], view_column="view",
                            study_column="study")
    assert dataset["labels"] == [["edema", "cardiomegaly"], []]
    assert dataset["view"] == ["pa", "LATERAL"] and dataset["study_id"] == ["s1", "s2"]
    assert dataset["id"] == ["labels-0000000", "labels-0000001"]
    dataset, _ = load_pairs(manifest, label_names_column="names")
    assert dataset["labels"] == [["edema", "pleural effusion"], ["no finding"]]
    dataset, ledger = load_pairs(manifest, view_column="view", views=["PA", "AP"])
    assert dataset["view"] == ["pa"] and ledger.filtered == Counter({"view": 1}) and not ledger.skipped


# --- each generic kind ------------------------------------------------------------------------------------------


def test_manifest_formats_jsonl_parquet_and_split_column(tmp_path):
    save(tmp_path / "img" / "a.png", noise(seed=1))
    save(tmp_path / "img" / "b.png", noise(seed=2))
    rows = [{"image": "img/a.png", "text": GOOD_REPORT, "split": "train", "labels": ["Edema"]},
            {"image": str((tmp_path / "img" / "b.png").resolve()), "text": GOOD_REPORT, "split": "test", "labels": []}]
    jsonl = write_jsonl(tmp_path / "pairs.jsonl", rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    for manifest in (jsonl, tmp_path / "pairs.parquet"):
        assert detect_kind(manifest) == "manifest"
        dataset, ledger = load_pairs(manifest, label_names_column="labels")
        assert len(dataset) == 2 and not ledger.skipped
        assert dataset["labels"] == [["edema"], []]
        assert np.array_equal(np.asarray(dataset[1]["image"]), noise(seed=2))
        train, ledger = load_pairs(manifest, split="train")
        assert len(train) == 1 and ledger.filtered == Counter({"split": 1})
    with pytest.raises(ValueError, match="split"):
        load_pairs(write_jsonl(tmp_path / "nosplit.jsonl", [{"image": "img/a.png", "text": GOOD_REPORT}]),
                   split="train")


def test_imagefolder_with_metadata_jsonl_and_split_folders(tmp_path):
    root = tmp_path / "folder"
    for split, count in (("train", 3), ("test", 1)):
        rows = []
        for index in range(count):
            save(root / split / "images" / f"{index}.png", noise(seed=index))
            rows.append({"file_name": f"images/{index}.png", "text": GOOD_REPORT, "patient": f"p{index}"})
        write_jsonl(root / split / "metadata.jsonl", rows)
    assert detect_kind(root) == "imagefolder"
    dataset, _ = load_pairs(root, split="train", patient_column="patient")
    assert len(dataset) == 3 and dataset["patient_id"] == ["p0", "p1", "p2"]
    assert np.array_equal(np.asarray(dataset[2]["image"]), noise(seed=2))
    everything, _ = load_pairs(root)
    assert len(everything) == 4

    flat = tmp_path / "flat"
    save(flat / "x.png", noise())
    write_csv(flat / "metadata.csv", [{"file_name": "x.png", "text": GOOD_REPORT}])
    dataset, _ = load_pairs(flat, kind="imagefolder")
    assert len(dataset) == 1


def test_hub_kind_reads_a_local_dataset_folder_offline(tmp_path):
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    folder = tmp_path / "hub-like"
    folder.mkdir()
    table = Dataset.from_dict(
        {"image": [{"bytes": png(noise(seed=i)), "path": None} for i in range(3)],
         "report": [GOOD_REPORT, "IMPRESSION: ok.", GOOD_REPORT], "finding": ["edema", "", "pneumonia"]},
        features=Features({"image": ImageFeature(), "report": Value("string"), "finding": Value("string")}),
    )
    table.to_parquet(str(folder / "train.parquet"))
    assert detect_kind(folder) == "hub"
    dataset, ledger = load_pairs(folder, kind="hub", text_column="report", label_names_column="finding")
    assert len(dataset) == 2 and ledger.skipped == Counter({"short_report": 1})
    assert dataset["labels"] == [["edema"], ["pneumonia"]]
    assert np.array_equal(np.asarray(dataset[1]["image"]), noise(seed=2))
    with pytest.raises(ValueError, match="report, finding"):
        load_pairs(folder, kind="hub")  # no "text" column


def test_hub_id_detection_without_network():
    assert detect_kind("some-org/chest-xray-pairs") == "hub"
    with pytest.raises(FileNotFoundError):
        detect_kind("./no/such/folder")


def test_disk_record_dataset_is_returned_as_is(tmp_path):
    from datasets import Dataset, DatasetDict

    records = [make_record(f"r{i}", {"bytes": png(noise(seed=i)), "path": None}, "Heart normal. Lungs clear.",
                           ["Heart normal.", "Lungs clear."], ["no finding"], f"p{i}", f"s{i}", ("PA", "AP", None)[i])
               for i in range(3)]
    corpus = DatasetDict({"train": Dataset.from_list(records, features=RECORD_FEATURES),
                          "validation": Dataset.from_list(records[:1], features=RECORD_FEATURES)})
    corpus.save_to_disk(str(tmp_path / "corpus"))
    assert detect_kind(tmp_path / "corpus") == "disk"
    dataset, ledger = load_pairs(tmp_path / "corpus", split="train")
    assert dataset.column_names == list(RECORD_COLUMNS) and dataset["id"] == ["r0", "r1", "r2"]
    assert not ledger.skipped
    filtered, ledger = load_pairs(tmp_path / "corpus", split="train", views=["pa"])
    assert filtered["id"] == ["r0"] and ledger.filtered == Counter({"view": 2})
    assert sorted(p.name for p in (tmp_path / "corpus" / "train").iterdir() if p.name.startswith("cache")) == []
    default, _ = load_pairs(tmp_path / "corpus")  # several splits: "train" unless split= says otherwise
    assert len(default) == 3
    DatasetDict({"pretrain": corpus["train"], "validation": corpus["validation"]}).save_to_disk(str(tmp_path / "c2"))
    with pytest.raises(ValueError, match="pretrain, validation"):
        load_pairs(tmp_path / "c2")


def test_disk_dataset_with_other_columns_goes_through_the_checks(tmp_path):
    from datasets import Dataset

    save(tmp_path / "img.png", noise())
    Dataset.from_dict({"path": [str(tmp_path / "img.png"), str(tmp_path / "gone.png")],
                       "findings": [GOOD_REPORT, GOOD_REPORT]}).save_to_disk(str(tmp_path / "table"))
    dataset, ledger = load_pairs(tmp_path / "table", image_column="path", text_column="findings")
    assert len(dataset) == 1 and ledger.skipped == Counter({"missing_file": 1})


def test_label_only_source_keeps_rows_without_text(tmp_path):
    save(tmp_path / "a.png", noise())
    manifest = write_csv(tmp_path / "labels_only.csv", [{"image": "a.png", "finding": "pneumonia"}])
    dataset, ledger = load_pairs(manifest, text_column=None, label_names_column="finding")
    assert dataset["text"] == [""] and dataset["labels"] == [["pneumonia"]] and not ledger.skipped


def test_report_mode_whole_and_min_tokens(tmp_path):
    save(tmp_path / "a.png", noise())
    report = "INDICATION: Cough.\nFINDINGS: Lungs clear.\nIMPRESSION: Normal."
    manifest = write_csv(tmp_path / "m.csv", [{"image": "a.png", "text": report}])
    dataset, _ = load_pairs(manifest, report_mode="whole")
    assert dataset["text"] == [prepare_report(report, mode="whole")[0]] and "Cough." in dataset["text"][0]
    dataset, ledger = load_pairs(manifest, min_tokens=4)  # "Lungs clear. Normal." has 3 tokens
    assert len(dataset) == 0 and ledger.skipped == Counter({"short_report": 1})
    with pytest.raises(ValueError, match="report_mode"):
        load_pairs(manifest, report_mode="impression")


def test_auto_detection_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="kind"):
        detect_kind(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="kind"):
        detect_kind(tmp_path / "empty")
    with pytest.raises(ValueError, match="kind must be"):
        load_pairs(tmp_path / "notes.txt", kind="zip")


# --- text that is not UTF-8, in every column --------------------------------------------------------------------


def test_decode_bytes_keeps_valid_utf8_and_re_decodes_only_the_stray_bytes():
    mixed = "Größe normal ".encode() + b"\x96" + b" Erguss."  # UTF-8 with one cp1252 en dash
    assert sources.decode_bytes(mixed) == ("Größe normal \u2013 Erguss.", True)
    assert sources.decode_bytes("caf\u00e9 \u2013 ok".encode("cp1252")) == ("caf\u00e9 \u2013 ok", True)
    assert sources.decode_bytes(b"caf\xe9 \x81") == ("caf\u00e9 \x81", True)  # 0x81 is undefined in cp1252: latin-1
    assert sources.decode_bytes("\ufeffLungs clear".encode()) == ("Lungs clear", False)
    assert sources.decode_bytes("Lungs clear".encode("utf-16")) == ("Lungs clear", True)
    assert sources.decode_bytes(b"") == ("", False)
    # A string read with surrogateescape gets its bytes back, then the same decoding.
    escaped = mixed.decode("utf-8", errors="surrogateescape")
    assert sources.repair_text(escaped) == ("Größe normal \u2013 Erguss.", True)
    assert sources.repair_text("plain") == ("plain", False)
    assert sources.repair_text("lone \ud83d")[0] == "lone \ufffd"  # a surrogate that stands for no byte


def test_a_cell_with_utf8_and_one_stray_cp1252_byte_is_not_mojibake(tmp_path):
    save(tmp_path / "a.png", noise())
    manifest = write_csv(tmp_path / "mixed.csv", [{"image": "a.png", "text": "FINDINGS: Größe normal MARK Erguss."}])
    manifest.write_bytes(manifest.read_bytes().replace(b"MARK", b"\x96"))
    dataset, ledger = load_pairs(manifest)
    assert dataset["text"] == ["Größe normal \u2013 Erguss."]  # not "GrÃ¶ÃŸe"
    assert ledger.repaired == Counter({"report_cp1252": 1})


def test_non_utf8_bytes_outside_the_report_are_repaired_with_the_row_id_never_a_crash(tmp_path, caplog):
    save(tmp_path / "images" / "caf\u00e9.png", noise(seed=1))  # named in UTF-8; the manifest says it in cp1252
    raw_name = os.fsencode(tmp_path / "images") + b"/raw\xe9.png"  # a file whose very name is not UTF-8
    with open(raw_name, "wb") as handle:
        handle.write(png(noise(seed=2)))
    rows = [
        {"id": "r1-\u00e9", "image": "images/good.png", "text": GOOD_REPORT, "patient": "M\u00fcller", "view": "PA",
         "labels": "\u00e9panchement|edema"},
        {"id": "r2", "image": "images/caf\u00e9.png", "text": GOOD_REPORT, "patient": "p2", "view": "P\u00c1",
         "labels": ""},
        {"id": "r3", "image": "images/rawMARK.png", "text": GOOD_REPORT, "patient": "p3", "view": "AP",
         "labels": ""},
        {"id": "gone-\u00e9", "image": "images/absent-\u00e9.png", "text": GOOD_REPORT, "patient": "p4", "view": "PA",
         "labels": ""},
    ]
    save(tmp_path / "images" / "good.png", noise())
    manifest = write_csv(tmp_path / "meta.csv", rows)
    data = manifest.read_bytes().replace(b"MARK", b"\xe9")
    for text in ("\u00e9", "\u00fc", "\u00c1"):  # every accent as a single cp1252 byte, in every column
        data = data.replace(text.encode(), text.encode("cp1252"))
    manifest.write_bytes(data)
    with caplog.at_level("INFO", logger="convirt_hf"):
        dataset, ledger = load_pairs(manifest, id_column="id", patient_column="patient", view_column="view",
                                     label_names_column="labels")
    records = {row["id"]: row for row in dataset}
    assert sorted(records) == ["r1-\u00e9", "r2", "r3"]
    assert records["r1-\u00e9"]["patient_id"] == "M\u00fcller"
    assert records["r1-\u00e9"]["labels"] == ["\u00e9panchement", "edema"]
    assert records["r2"]["view"] == "P\u00c1"
    assert np.array_equal(np.asarray(records["r2"]["image"]), noise(seed=1))  # the re-decoded path was found
    assert np.array_equal(np.asarray(records["r3"]["image"]), noise(seed=2))  # raw-named file kept as bytes
    assert ledger.repaired == Counter({"metadata_cp1252": 2, "image_path_cp1252": 1, "image_path_embedded": 1})
    assert ledger.repaired_ids["metadata_cp1252"] == ["r1-\u00e9", "r2"]
    assert ledger.skipped_ids == {"missing_file": ["gone-\u00e9"]}  # skipped under its repaired id
    assert "skipped gone-\u00e9: missing_file" in caplog.text and "absent-\u00e9.png" in caplog.text


# --- strict mode, worker processes -------------------------------------------------------------------------------


def test_strict_mode_with_worker_processes_raises_bad_input_error(tmp_path):
    for index in range(4):
        save(tmp_path / f"{index}.png", noise(seed=index))
    rows = [{"id": f"ok-{index}", "image": f"{index}.png", "text": GOOD_REPORT} for index in range(4)]
    rows.insert(2, {"id": "bad-one", "image": "absent.png", "text": GOOD_REPORT})
    manifest = write_csv(tmp_path / "strict.csv", rows)
    with pytest.raises(BadInputError) as raised:
        load_pairs(manifest, id_column="id", strict=True, num_proc=2)
    assert (raised.value.row_id, raised.value.reason) == ("bad-one", "missing_file")
    assert "absent.png" in raised.value.detail
    dataset, ledger = load_pairs(manifest, id_column="id", num_proc=2)  # without strict: counted
    assert len(dataset) == 4 and ledger.skipped_ids == {"missing_file": ["bad-one"]}


def test_bad_input_error_survives_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(BadInputError("row-7", "corrupt", "x.png: bad")))
    assert (error.row_id, error.reason, error.detail) == ("row-7", "corrupt", "x.png: bad")
    assert str(error) == "row-7: corrupt (x.png: bad)"


# --- labels: binary columns, a names column, ClassLabel ---------------------------------------------------------


def test_a_single_binary_label_column_is_binary_and_a_names_column_is_explicit(tmp_path):
    save(tmp_path / "a.png", noise())
    rows = [{"image": "a.png", "text": GOOD_REPORT, "Edema": value, "names": "edema|effusion"}
            for value in ("1", "0", "", "-1", "1.0", "true")]
    manifest = write_csv(tmp_path / "binary.csv", rows)
    dataset, _ = load_pairs(manifest, label_columns="Edema")  # one column: still binary, never "0"/"1" labels
    assert dataset["labels"] == [["edema"], [], [], [], ["edema"], ["edema"]]
    dataset, _ = load_pairs(manifest, label_names_column="names")
    assert dataset["labels"][0] == ["edema", "effusion"]
    with pytest.raises(ValueError, match="label_columns='names' must hold binary values.*label_names_column='names'"):
        load_pairs(manifest, label_columns="names")  # names where 0/1 belong: fails before any row is read
    # A stray non-binary cell after the checked prefix skips its row, with the reason.
    late = rows * (sources.COLUMN_SCAN_ROWS // len(rows) + 1) + [{**rows[0], "Edema": "maybe"}]
    dataset, ledger = load_pairs(write_csv(tmp_path / "late.csv", late), label_columns=["Edema"])
    assert list(ledger.skipped) == ["bad_label"] and ledger.skipped_ids["bad_label"] == [f"late-{len(late) - 1:07d}"]


def test_class_label_columns_give_class_names(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Sequence, Value
    from datasets import Image as ImageFeature

    features = Features({"image": ImageFeature(), "text": Value("string"),
                         "finding": ClassLabel(names=["edema", "pneumonia"]),
                         "findings": Sequence(ClassLabel(names=["atelectasis", "cardiomegaly", "edema"])),
                         "Effusion": ClassLabel(names=["no", "yes"]), "view": ClassLabel(names=["PA", "AP"])})
    table = Dataset.from_dict(
        {"image": [{"bytes": png(noise(seed=i)), "path": None} for i in range(2)], "text": [GOOD_REPORT] * 2,
         "finding": [1, -1], "findings": [[0, 2], []], "Effusion": [1, 0], "view": [1, 0]}, features=features)
    table.save_to_disk(str(tmp_path / "disk"))
    hub = tmp_path / "hub"
    hub.mkdir()
    table.to_parquet(str(hub / "train.parquet"))  # the features (ClassLabel included) travel in the parquet schema
    for source, kind in ((tmp_path / "disk", "disk"), (hub, "hub")):
        dataset, _ = load_pairs(source, kind=kind, label_names_column="finding", view_column="view")
        assert dataset["labels"] == [["pneumonia"], []], kind  # -1 is ClassLabel's "no label"
        assert dataset["view"] == ["AP", "PA"], kind
        dataset, _ = load_pairs(source, kind=kind, label_names_column="findings", label_columns=["Effusion"])
        assert dataset["labels"] == [["effusion", "atelectasis", "edema"], []], kind


# --- options that would silently do nothing ----------------------------------------------------------------------


def test_views_without_a_view_column_fail_early(tmp_path, monkeypatch):
    manifest, _ = bad_input_corpus(tmp_path)
    monkeypatch.setattr(pipeline, "build_dataset", lambda *a, **k: pytest.fail("rows were read"))
    with pytest.raises(ValueError, match=r"views=\['PA'\] needs view_column="):
        load_pairs(manifest, views=["PA"])


def test_options_a_kind_does_not_use_are_refused(tmp_path):
    manifest, _ = bad_input_corpus(tmp_path)
    with pytest.raises(TypeError, match="'manifest' source: reports_root"):
        load_pairs(manifest, reports_root=tmp_path)
    with pytest.raises(TypeError, match="image_column, text_column: not used by kind='mimic-cxr'"):
        load_pairs(tmp_path, kind="mimic-cxr", image_column="path", text_column="report")
    with pytest.raises(TypeError, match="'openi' source: labels_file .it accepts image_root, mesh_labels"):
        load_pairs(tmp_path, kind="openi", labels_file="x.json")


# --- Hub datasets with several configurations (a local folder, offline) -------------------------------------------


def test_hub_dataset_config_name_data_dir_and_revision(tmp_path, monkeypatch):
    from datasets import Dataset

    folder = tmp_path / "multi"
    for config, seed in (("frontal", 1), ("lateral", 2)):
        (folder / config).mkdir(parents=True)
        Dataset.from_dict({"image": [{"bytes": png(noise(seed=seed)), "path": None}], "text": [GOOD_REPORT],
                           "config": [config]}).to_parquet(str(folder / config / "train.parquet"))
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: frontal\n  data_files:\n  - split: train\n    path: frontal/*.parquet\n"
        "- config_name: lateral\n  data_files:\n  - split: train\n    path: lateral/*.parquet\n---\n")
    dataset, _ = load_pairs(folder, kind="hub", config_name="lateral")
    assert np.array_equal(np.asarray(dataset[0]["image"]), noise(seed=2))
    with pytest.raises(ValueError, match="config_name="):
        load_pairs(folder, kind="hub")  # two configs, none chosen
    plain = tmp_path / "plain"
    (plain / "frontal").mkdir(parents=True)
    shutil.copy(folder / "frontal" / "train.parquet", plain / "frontal" / "train.parquet")
    (plain / "notes.txt").write_text("not data")
    dataset, _ = load_pairs(plain, kind="hub", data_dir="frontal")
    assert np.array_equal(np.asarray(dataset[0]["image"]), noise(seed=1))

    import datasets

    seen = []
    real_split_names, real_load = datasets.get_dataset_split_names, datasets.load_dataset
    monkeypatch.setattr(datasets, "get_dataset_split_names",
                        lambda path, **kw: seen.append(("splits", kw)) or real_split_names(path, **{
                            k: v for k, v in kw.items() if k != "revision"}))
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda path, *a, **kw: seen.append(("load", kw)) or real_load(path, *a, **{
                            k: v for k, v in kw.items() if k != "revision"}))
    load_pairs(folder, kind="hub", config_name="frontal", revision="v1.0")
    assert seen and all(kwargs.get("revision") == "v1.0" for _, kwargs in seen)


# --- paths, formats ----------------------------------------------------------------------------------------------


def test_a_mistyped_local_path_is_file_not_found_never_a_hub_lookup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(generic, "HubSource", lambda *a, **k: pytest.fail("treated as a Hub id"))
    for mistyped in ("data/pairs.csv", "pairs.jsonl", "./data", "../elsewhere/pairs", "~/no-such-corpus",
                     "a/b/c", "/absolutely/not/here"):
        with pytest.raises(FileNotFoundError, match="no such file or folder") as raised:
            load_pairs(mistyped)
        assert mistyped in str(raised.value)
        with pytest.raises(FileNotFoundError):
            load_pairs(mistyped, kind="hub")
    assert detect_kind("org/chest-pairs") == "hub" and detect_kind("chest-pairs") == "hub"


def test_jsonl_columns_are_the_union_of_the_first_rows(tmp_path):
    save(tmp_path / "a.png", noise())
    rows = [{"image": "a.png", "text": GOOD_REPORT}, {"image": "a.png", "text": GOOD_REPORT, "view": "PA"}]
    manifest = write_jsonl(tmp_path / "optional.jsonl", rows)
    dataset, _ = load_pairs(manifest, view_column="view")  # "view" is only in row 2
    assert dataset["view"] == [None, "PA"]
    assert sources.read_header(manifest) == ["image", "text", "view"]
    assert sources.read_header(manifest, scan_rows=1) == ["image", "text"]  # the bound is real


def test_tsv_csv_gz_and_json_array_manifests(tmp_path):
    save(tmp_path / "img" / "a.png", noise(seed=1))
    rows = [{"image": "img/a.png", "text": GOOD_REPORT, "finding": "edema"},
            {"image": "img/absent.png", "text": GOOD_REPORT, "finding": ""}]
    with open(tmp_path / "pairs.tsv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    write_csv(tmp_path / "plain.csv", rows)
    with open(tmp_path / "plain.csv", "rb") as source, gzip.open(tmp_path / "pairs.csv.gz", "wb") as target:
        target.write(source.read())
    (tmp_path / "pairs.json").write_text(json.dumps(rows, indent=1))
    for name in ("pairs.tsv", "pairs.csv.gz", "pairs.json"):
        assert detect_kind(tmp_path / name) == "manifest"
        dataset, ledger = load_pairs(tmp_path / name, label_names_column="finding")
        assert dataset["labels"] == [["edema"]], name
        assert np.array_equal(np.asarray(dataset[0]["image"]), noise(seed=1)), name
        assert ledger.skipped == Counter({"missing_file": 1}), name


def test_an_unreadable_json_line_is_a_counted_skip(tmp_path):
    save(tmp_path / "a.png", noise())
    manifest = tmp_path / "broken.jsonl"
    manifest.write_text(json.dumps({"image": "a.png", "text": GOOD_REPORT}) + "\n{not json\n" + "[1, 2]\n")
    dataset, ledger = load_pairs(manifest)
    assert len(dataset) == 1
    assert ledger.skipped_ids == {"unreadable_row": ["broken-0000001", "broken-0000002"]}


# --- logging: every bad row with its id, then one summary line ----------------------------------------------------


def test_each_skip_is_logged_with_its_id_and_a_summary_line_ends_the_load(tmp_path, caplog):
    manifest, expected = bad_input_corpus(tmp_path)
    with caplog.at_level("INFO", logger="convirt_hf"):
        dataset, ledger = load_pairs(manifest, id_column="id", max_pixels=50_000, num_proc=2)
    messages = [record.getMessage() for record in caplog.records]
    for reason, ids in expected["skipped"].items():
        for row_id in ids:
            assert sum(f"skipped {row_id}: {reason}" in m for m in messages) == 1, (row_id, reason)
    assert sum("repaired deep: 16bit_to_8bit" in m for m in messages) == 1
    summary = [m for m in messages if m.startswith(
        "[manifest:pairs.csv] read 15 reports with 15 images; kept 6 images (6 reports); skipped 9 images")]
    assert len(summary) == 1 and "repaired 4 images (" in summary[0] and "report_cp1252=1" in summary[0]
    assert messages.index(summary[0]) > max(i for i, m in enumerate(messages) if "skipped " in m and ": " in m
                                            and not m.startswith("[manifest:pairs.csv] read"))
    assert any("rows/s" in m for m in messages)  # the progress line: count and rate


def test_the_console_cap_is_configurable_and_every_id_is_still_recorded(tmp_path, caplog):
    save(tmp_path / "a.png", noise())
    rows = [{"id": f"gone-{index}", "image": f"gone-{index}.png", "text": GOOD_REPORT} for index in range(5)]
    manifest = write_csv(tmp_path / "gone.csv", rows + [{"id": "ok", "image": "a.png", "text": GOOD_REPORT}])
    with caplog.at_level("INFO", logger="convirt_hf"):
        dataset, ledger = load_pairs(manifest, id_column="id", max_logged_per_reason=2)
    logged = [r.getMessage() for r in caplog.records if "skipped gone-" in r.getMessage()]
    assert len(logged) == 2
    assert any("only the first 2 are logged" in r.getMessage() for r in caplog.records)
    assert ledger.skipped_ids == {"missing_file": [f"gone-{index}" for index in range(5)]}
    assert [row["id"] for row in ledger.rows()] == [f"gone-{index}" for index in range(5)]
    assert all(row["detail"].endswith(".png") for row in ledger.rows())
    caplog.clear()
    with caplog.at_level("INFO", logger="convirt_hf"):
        load_pairs(manifest, id_column="id", max_logged_per_reason=None)
    assert len([r for r in caplog.records if "skipped gone-" in r.getMessage()]) == 5


# --- a new kind of source, added through the registry -----------------------------------------------------------


@dataclass
class IndexSource(sources.PairSource):
    """A made-up layout: ``index.txt`` lists ``image<TAB>report file`` lines."""

    root: Path
    name: str = "index"

    def iter_candidates(self, shard, num_shards, ledger):
        for index, line in enumerate((self.root / "index.txt").read_text().splitlines()):
            if sources.in_shard(index, shard, num_shards):
                image, report = line.split("\t")
                yield sources.Candidate(id=f"index-{index}", image=str(self.root / image),
                                        report=(self.root / report).read_text())


def test_a_registered_kind_is_detected_read_and_checked_like_the_built_in_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the new kind goes with the test
    corpus = tmp_path / "corpus"
    save(corpus / "a.png", noise())
    (corpus / "a.txt").write_text(GOOD_REPORT)
    (corpus / "index.txt").write_text("a.png\ta.txt\nabsent.png\ta.txt\n")

    @sources.register_source("index", detect=lambda path, names: "index.txt" in names, looks_for="index.txt")
    def build_index(source, *, split, columns, report_mode):
        return IndexSource(Path(source))

    assert sources.source_kinds()[-1] == "index" and detect_kind(corpus) == "index"
    dataset, ledger = load_pairs(corpus, num_proc=2)
    assert dataset["id"] == ["index-0"] and ledger.skipped == Counter({"missing_file": 1})
    with pytest.raises(TypeError, match="'index' source: image_root .it takes no such options"):
        load_pairs(corpus, image_root=tmp_path)
    with pytest.raises(TypeError, match="image_column: not used by kind='index'"):
        load_pairs(corpus, image_column="path")
    with pytest.raises(ValueError, match="already registered"):
        sources.register_source("index")(build_index)
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match=r"ecgen-radiology/, index.txt, metadata.jsonl/csv and data files"):
        detect_kind(tmp_path / "other")
