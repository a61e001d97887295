"""MIMIC-CXR-JPG, CheXpert-Plus and Open-i read from tiny fixtures in their public layouts (images made here)."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from convirt_hf.data.chexpert_plus import compose_report
from convirt_hf.data.records import RECORD_COLUMNS
from convirt_hf.data.reports import prepare_report
from convirt_hf.data.skips import BadInputError
from convirt_hf.data.sources import detect_kind, load_pairs

from helpers import FIXTURES, openi_tree, write_image


def gzip_file(path: Path) -> None:
    with open(path, "rb") as source, gzip.open(f"{path}.gz", "wb") as target:
        shutil.copyfileobj(source, target)
    path.unlink()


# --- MIMIC-CXR-JPG ----------------------------------------------------------------------------------------------

PA, LATERAL, AP, NO_SECTIONS, NO_REPORT, NO_IMAGE, NO_VIEW = (
    "0a1b2c3d-11111111-22222222-33333333-44444444",
    "5e6f7a8b-55555555-66666666-77777777-88888888",
    "9c0d1e2f-99999999-aaaaaaaa-bbbbbbbb-cccccccc",
    "d3e4f5a6-dddddddd-eeeeeeee-ffffffff-00000000",
    "b7c8d9e0-12121212-34343434-56565656-78787878",
    "f1a2b3c4-abababab-cdcdcdcd-efefefef-01010101",
    "a9b8c7d6-13131313-24242424-35353535-46464646",
)


def mimic_tree(tmp_path: Path, *, gz: bool = True, reports_inside: bool = False) -> Path:
    """The fixture as released: tables gzipped, JPGs under files/ (all but NO_IMAGE), reports beside or inside."""
    root = tmp_path / "mimic-cxr-jpg" / "2.1.0"
    shutil.copytree(FIXTURES / "mimic_cxr", root)
    with open(root / "mimic-cxr-2.0.0-metadata.csv", newline="") as handle:
        for index, row in enumerate(csv.DictReader(handle)):
            if row["dicom_id"] != NO_IMAGE:
                subject = row["subject_id"]
                folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{row['study_id']}"
                write_image(folder / f"{row['dicom_id']}.jpg", seed=index, fmt="JPEG")
    if gz:
        for table in root.glob("mimic-cxr-2.0.0-*.csv"):
            gzip_file(table)
    if reports_inside:  # reports unpacked into the image tree: files/p10/p10000032/s50414267.txt
        shutil.copytree(root / "mimic-cxr-reports" / "files", root / "files", dirs_exist_ok=True)
        shutil.rmtree(root / "mimic-cxr-reports")
    return root


def test_mimic_cxr_reads_the_public_layout(tmp_path):
    root = mimic_tree(tmp_path)
    assert detect_kind(root) == "mimic-cxr"
    dataset, ledger = load_pairs(root, reports_root=root / "mimic-cxr-reports")
    assert dataset.column_names == list(RECORD_COLUMNS)
    assert dataset["id"] == [PA, LATERAL, AP, NO_VIEW]
    assert ledger.skipped_ids == {"no_findings_impression": [NO_SECTIONS], "missing_report": [NO_REPORT],
                                  "missing_file": [NO_IMAGE]}
    rows = {row["id"]: row for row in dataset}
    pa = rows[PA]
    # FINDINGS + IMPRESSION only: nothing from INDICATION/TECHNIQUE/COMPARISON, line wrapping undone.
    assert pa["text"] == ("The heart is moderately enlarged. There is a small right pleural effusion with adjacent "
                          "opacity, likely atelectasis. No pneumothorax. The pulmonary vasculature is not engorged. "
                          "Cardiomegaly and small right pleural effusion.")
    report = (root / "mimic-cxr-reports" / "files" / "p10" / "p10000032" / "s50414267.txt").read_text()
    assert (pa["text"], pa["sentences"]) == prepare_report(report)
    assert (pa["patient_id"], pa["study_id"], pa["view"]) == ("10000032", "50414267", "PA")
    assert rows[LATERAL]["text"] == pa["text"] and rows[LATERAL]["view"] == "LATERAL"  # one report per study
    assert rows[AP]["study_id"] == "53189527" and rows[AP]["text"].startswith("Lungs are clear.")
    assert rows[NO_VIEW]["view"] is None
    # Labels: 1.0 positive; 0.0, -1.0 (uncertain, default policy) and blank are not.
    assert pa["labels"] == ["cardiomegaly"]
    assert rows[AP]["labels"] == ["no finding"]
    assert rows[NO_VIEW]["labels"] == ["pneumothorax", "support devices"]
    expected = np.random.default_rng(0).integers(0, 256, (20, 16), dtype=np.uint8)
    assert np.abs(np.asarray(pa["image"]).astype(int) - expected).mean() < 20  # the right JPG, lossy


def test_mimic_cxr_view_split_and_uncertain_label_policy(tmp_path):
    root = mimic_tree(tmp_path, gz=False, reports_inside=True)  # plain .csv tables, reports inside files/
    frontal, ledger = load_pairs(root, views=("PA", "AP"))
    assert frontal["id"] == [PA, AP]
    assert ledger.filtered == Counter({"view": 2})  # LATERAL and the row without a view: filtered, not errors
    assert ledger.skipped == Counter({"no_findings_impression": 1, "missing_report": 1, "missing_file": 1})

    train, ledger = load_pairs(root, split="train", views=["pa"])
    assert train["id"] == [PA]
    assert ledger.filtered == Counter({"split": 3, "view": 1})
    assert ledger.skipped == Counter({"no_findings_impression": 1, "missing_report": 1})
    validate, _ = load_pairs(root, split="validation")  # alias of the release's "validate"
    assert validate["id"] == [AP]
    test, ledger = load_pairs(root, split="test")
    assert test["id"] == [NO_VIEW] and ledger.skipped_ids == {"missing_file": [NO_IMAGE]}

    uncertain, _ = load_pairs(root, split="train", views=["PA"], uncertain="positive")
    assert uncertain["labels"] == [["cardiomegaly", "pleural effusion"]]
    unlabeled, _ = load_pairs(root, split="train", views=["PA"], labels=None)
    assert unlabeled["labels"] == [[]]


def test_mimic_cxr_strict_mode_and_config_errors(tmp_path):
    root = mimic_tree(tmp_path)
    with pytest.raises(BadInputError) as raised:
        load_pairs(root, reports_root=root / "mimic-cxr-reports", strict=True)
    assert (raised.value.row_id, raised.value.reason) == (NO_SECTIONS, "no_findings_impression")
    found, _ = load_pairs(root)  # <root>/mimic-cxr-reports/files is found without being named
    assert len(found) == 4
    reports = shutil.move(root / "mimic-cxr-reports", tmp_path / "reports-elsewhere")
    with pytest.raises(FileNotFoundError, match="reports"):
        load_pairs(root)  # reports are neither under root nor given
    with pytest.raises(ValueError, match="split must be one of"):
        load_pairs(root, reports_root=reports, split="dev")
    with pytest.raises(ValueError, match="uncertain"):
        load_pairs(root, reports_root=reports, uncertain="maybe")
    # A metadata table with other column names fails before any row is read, listing the columns it has.
    with gzip.open(root / "mimic-cxr-2.0.0-metadata.csv.gz", "wt") as handle:
        handle.write("dicom,subject,study,view\nx,1,2,PA\n")
    with pytest.raises(ValueError, match="dicom_id.*The columns that exist are: dicom, subject, study, view"):
        load_pairs(root, reports_root=reports)


# --- CheXpert-Plus ----------------------------------------------------------------------------------------------


def chexpert_tree(tmp_path: Path, *, layout: str = "PNG") -> Path:
    """The report CSV beside PNG/ (or a chunk folder) holding .png files for the CSV's .jpg paths."""
    root = tmp_path / "chexpert-plus"
    shutil.copytree(FIXTURES / "chexpert_plus", root)
    base = root / "PNG" if layout == "PNG" else root / "png_chexpert_plus_chunk_0" / "PNG"
    with open(root / "df_chexpert_plus_240401.csv", newline="") as handle:
        for index, row in enumerate(csv.DictReader(handle)):
            if "patient00005" not in row["path_to_image"]:  # its image is missing
                write_image(base / row["path_to_image"].replace(".jpg", ".png"), seed=index, fmt="PNG")
    return root


def test_chexpert_plus_reads_the_public_layout(tmp_path):
    root = chexpert_tree(tmp_path)
    assert detect_kind(root) == "chexpert-plus"
    assert detect_kind(root / "df_chexpert_plus_240401.csv") == "chexpert-plus"
    dataset, ledger = load_pairs(root, labels_file=root / "chexbert_labels" / "findings_fixed.json")
    assert dataset["id"] == ["train/patient00001/study1/view1_frontal", "train/patient00001/study1/view2_lateral",
                             "train/patient00002/study1/view1_frontal", "train/patient00004/study1/view1_frontal",
                             "valid/patient64541/study1/view1_frontal"]
    assert ledger.skipped_ids == {"no_findings_impression": ["train/patient00003/study2/view1_frontal"],
                                  "missing_file": ["train/patient00005/study1/view1_frontal"]}
    rows = {row["id"]: row for row in dataset}
    first = rows["train/patient00001/study1/view1_frontal"]
    assert first["text"] == ("The lungs are clear. The cardiomediastinal silhouette is within normal limits. "
                             "No pleural effusion or pneumothorax. No acute cardiopulmonary abnormality.")  # no HISTORY
    assert (first["patient_id"], first["study_id"], first["view"]) == ("patient00001", "patient00001/study1", "PA")
    assert rows["train/patient00001/study1/view2_lateral"]["view"] == "LATERAL"
    # Only an impression, as numbered all-caps items; SUMMARY and the attestation are not kept.
    second = rows["train/patient00002/study1/view1_frontal"]
    impression = ("1.ENDOTRACHEAL TUBE TIP 4 CM ABOVE THE CARINA.\n\n"
                  "2.INCREASED BILATERAL PERIHILAR OPACITIES, LIKELY PULMONARY EDEMA.")
    assert (second["text"], second["sentences"]) == prepare_report(compose_report("", impression))
    assert "ENDOTRACHEAL" in second["text"] and "SUMMARY" not in second["text"] and "ABNORMAL" not in second["text"]
    # Empty section columns: the full report is sectioned instead.
    assert rows["train/patient00004/study1/view1_frontal"]["text"] == (
        "Mild enlargement of the cardiac silhouette. Small left pleural effusion. "
        "Cardiomegaly with small left effusion.")
    assert first["labels"] == ["no finding"] and second["labels"] == ["edema"]
    assert rows["valid/patient64541/study1/view1_frontal"]["labels"] == ["pneumothorax"]
    assert np.array_equal(np.asarray(first["image"]),
                          np.random.default_rng(0).integers(0, 256, (20, 16), dtype=np.uint8))  # the PNG, joined


def test_chexpert_plus_split_views_whole_mode_and_chunked_images(tmp_path):
    root = chexpert_tree(tmp_path, layout="chunks")
    valid, ledger = load_pairs(root / "df_chexpert_plus_240401.csv", split="valid")
    assert valid["id"] == ["valid/patient64541/study1/view1_frontal"] and ledger.filtered == Counter({"split": 6})
    frontal, ledger = load_pairs(root, split="train", views=["PA"])
    assert frontal["id"] == ["train/patient00001/study1/view1_frontal", "train/patient00004/study1/view1_frontal"]
    whole, _ = load_pairs(root, split="valid", report_mode="whole")
    assert whole["text"][0].startswith("NARRATIVE: Chest 1 View, 9-9-2009")  # the whole report
    uncertain, _ = load_pairs(root, split="train", labels_file=root / "chexbert_labels" / "findings_fixed.json",
                              uncertain="positive", views=["AP"])
    assert uncertain["labels"] == [["edema", "pleural effusion"]]
    with pytest.raises(ValueError, match="split must be one of"):
        load_pairs(root, split="test")


def test_chexpert_plus_prefers_an_existing_jpg(tmp_path):
    root = chexpert_tree(tmp_path)
    jpg = root / "PNG" / "valid" / "patient64541" / "study1" / "view1_frontal.jpg"
    write_image(jpg, seed=99, fmt="JPEG")
    dataset, _ = load_pairs(root, split="valid")
    expected = np.random.default_rng(99).integers(0, 256, (20, 16), dtype=np.uint8)
    assert np.abs(np.asarray(dataset[0]["image"]).astype(int) - expected).mean() < 20


def test_chexpert_plus_wrong_csv_fails_before_reading(tmp_path):
    root = tmp_path / "cp"
    root.mkdir()
    (root / "df_chexpert_plus_240401.csv").write_text("Path,Sex,Age\ntrain/patient1/study1/view1_frontal.jpg,F,40\n")
    with pytest.raises(ValueError, match="path_to_image.*The columns that exist are: Path, Sex, Age"):
        load_pairs(root)


# --- Open-i -----------------------------------------------------------------------------------------------------

def test_openi_reads_the_public_layout(tmp_path):
    root = openi_tree(tmp_path)
    assert detect_kind(root) == "openi"
    dataset, ledger = load_pairs(root)
    assert dataset["id"] == ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001", "CXR2_IM-0652-1001", "CXR3_IM-1384-1001"]
    assert ledger.skipped_ids == {"missing_file": ["CXR2_IM-0652-2001"],
                                  "no_findings_impression": ["CXR4_IM-2050-1001"]}
    # 5.xml lists no image: a report without images, not a filter the user asked for
    assert ledger.unpaired == Counter({"report_without_image": 1}) and not ledger.filtered
    rows = {row["id"]: row for row in dataset}
    first = rows["CXR1_1_IM-0001-3001"]
    findings = ("The cardiomediastinal silhouette is within normal limits for size and contour. The lungs are clear. "
                "No pneumothorax or pleural effusion.")
    expected = prepare_report(f"FINDINGS: {findings}\nIMPRESSION: Normal chest x-XXXX.")
    assert (first["text"], first["sentences"]) == expected
    assert first["text"].startswith(findings) and "chest pain" not in first["text"]  # INDICATION left out
    assert rows["CXR1_1_IM-0001-4001"]["text"] == first["text"]  # one row per image, same report
    assert (first["patient_id"], first["study_id"], first["view"]) == ("CXR1", "CXR1", None)
    assert first["labels"] == ["no finding"]
    assert rows["CXR2_IM-0652-1001"]["labels"] == ["cardiomegaly", "pulmonary artery"]  # qualifiers dropped
    assert rows["CXR3_IM-1384-1001"]["text"].startswith("Heart size normal.")  # impression only
    assert rows["CXR3_IM-1384-1001"]["labels"] == ["pulmonary atelectasis", "pneumonia"]
    assert np.array_equal(np.asarray(rows["CXR2_IM-0652-1001"]["image"]),
                          np.random.default_rng(2).integers(0, 256, (20, 16), dtype=np.uint8))
    without_mesh, _ = load_pairs(root, mesh_labels=False)
    assert all(labels == [] for labels in without_mesh["labels"])


def test_openi_repairs_cp1252_xml_and_counts_unreadable_xml(tmp_path):
    root = openi_tree(tmp_path)
    text = (root / "ecgen-radiology" / "1.xml").read_text(encoding="utf-8")
    text = text.replace('"CXR1', '"CXR6').replace("Normal chest x-XXXX.", "Normal chest \u2013 no acute disease.")
    (root / "ecgen-radiology" / "6.xml").write_bytes(text.encode("cp1252"))  # declared utf-8, is not
    (root / "ecgen-radiology" / "7.xml").write_text("<eCitation><uId id='CXR7'/><MedlineCitation>")  # cut short
    for image_id in ("CXR6_1_IM-0001-3001", "CXR6_1_IM-0001-4001"):
        write_image(root / "NLMCXR_png" / f"{image_id}.png", seed=6, fmt="PNG")
    dataset, ledger = load_pairs(root)
    rows = {row["id"]: row for row in dataset}
    assert rows["CXR6_1_IM-0001-3001"]["text"].endswith("Normal chest \u2013 no acute disease.")
    assert ledger.repaired == Counter({"report_cp1252": 2})  # one per kept image row
    assert ledger.skipped_ids["unreadable_report"] == ["openi-7"]
    with pytest.raises(ValueError, match="view"):
        load_pairs(root, views=["PA"])


# --- adapters through the preprocessing command, end to end ------------------------------------------------------


def test_mimic_cxr_preprocessed_end_to_end_as_the_docs_show(tmp_path, capsys):
    from datasets import DatasetDict, load_from_disk

    from convirt_hf.data.preprocess import SKIPPED_ROWS_FILE, SUMMARY_FILE, main
    from convirt_hf.data.records import RECORD_FEATURES

    root = mimic_tree(tmp_path)
    output = tmp_path / "mimic-256"
    code = main(["--source", str(root), "--kind", "mimic-cxr", "--reports-root", str(root / "mimic-cxr-reports"),
                 "--split", "train", "validation=validate", "--views", "PA", "AP", "--output", str(output),
                 "--size", "8", "--num-proc", "2", "-q"])
    assert code == 0, capsys.readouterr().err
    corpus = load_from_disk(str(output))
    assert isinstance(corpus, DatasetDict) and set(corpus) == {"train", "validation"}  # --train_split train
    assert corpus["train"]["id"] == [PA] and corpus["validation"]["id"] == [AP]
    assert corpus["train"].features == RECORD_FEATURES
    pa = corpus["train"][0]
    assert pa["image"].mode == "L" and max(pa["image"].size) == 8 and pa["image"].format == "PNG"
    assert (pa["patient_id"], pa["study_id"], pa["view"], pa["labels"]) == ("10000032", "50414267", "PA",
                                                                             ["cardiomegaly"])
    assert pa["text"].startswith("The heart is moderately enlarged.")
    summary = json.loads((output / SUMMARY_FILE).read_text())
    assert summary["rows"] == {"train": 1, "validation": 1}
    assert summary["skipped"] == {"missing_report": 1, "no_findings_impression": 1}
    assert summary["filtered"]["view"] == 1 and summary["filtered"]["split"] > 0
    skipped = {json.loads(line)["id"] for line in (output / SKIPPED_ROWS_FILE).read_text().splitlines()}
    assert skipped == {NO_REPORT, NO_SECTIONS}
    # Columns are fixed by the release: a generic column option is refused, not ignored.
    assert main(["--source", str(root), "--kind", "mimic-cxr", "--image-column", "path", "--output",
                 str(tmp_path / "x"), "-q"]) == 2
    assert "image_column: not used by kind='mimic-cxr'" in capsys.readouterr().err


def test_mimic_cxr_metadata_that_is_not_utf8_is_repaired(tmp_path):
    root = mimic_tree(tmp_path, gz=False)
    table = root / "mimic-cxr-2.0.0-metadata.csv"
    lines = table.read_bytes().split(b"\n")
    lines = [line.replace(b",,", b",LL\xe9,", 1) if line.startswith(NO_VIEW.encode()) else line for line in lines]
    table.write_bytes(b"\n".join(lines))
    dataset, ledger = load_pairs(root, split="test")
    assert dataset["id"] == [NO_VIEW] and dataset["view"] == ["LL\u00e9"]
    assert ledger.repaired == Counter({"metadata_cp1252": 1})


def test_openi_preprocess_summary_counts_images_and_reports_and_says_so(tmp_path, capsys):
    from convirt_hf.data.preprocess import SUMMARY_FILE, main

    root = openi_tree(tmp_path)
    reports = root / "ecgen-radiology"
    # an empty report with two images: two images skipped, but one report
    empty = (reports / "1.xml").read_text(encoding="utf-8").replace('"CXR1', '"CXR8')
    for text in ("None.", "XXXX-year-old male, chest pain.", "Normal chest x-XXXX."):
        empty = empty.replace(f">{text}<", "><")
    empty = empty.split('<AbstractText Label="FINDINGS">')[0] + '<AbstractText Label="FINDINGS"/>' + \
        empty.split("No pneumothorax or pleural effusion.</AbstractText>")[1]
    (reports / "8.xml").write_text(empty, encoding="utf-8")
    for image_id in ("CXR8_1_IM-0001-3001", "CXR8_1_IM-0001-4001"):
        write_image(root / "NLMCXR_png" / f"{image_id}.png", seed=8, fmt="PNG")
    (reports / "7.xml").write_text("<eCitation><uId id='CXR7'/><MedlineCitation>")  # its images are unknown

    assert main(["--source", str(root), "--output", str(tmp_path / "out"), "--size", "8", "-q"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    assert "images" in summary["units"]["images"] and "report" in summary["units"]["reports"]
    # 1.xml: 2 kept; 2.xml: 1 kept, 1 missing; 3.xml: 1 kept; 4.xml: 1 without findings; 8.xml: 2 empty
    assert summary["images"] == {"read": 8, "kept": 4, "skipped": 4, "filtered": 0}
    assert summary["kept"] == 4 and summary["rows"] == {"all": 4}
    assert summary["skipped"] == {"empty_report": 2, "missing_file": 1, "no_findings_impression": 1}  # images
    assert summary["skipped_reports"] == {"empty_report": 1, "no_findings_impression": 1, "unreadable_report": 1}
    # 5.xml lists no image: a report without images, not something the user filtered out
    assert summary["reports"] == {"read": 7, "kept": 3, "without_images": 1}
    assert summary["filtered"] == {}
    line = summary["summary"]
    assert line.startswith("[openi:openi] read 7 reports with 8 images; kept 4 images (3 reports); skipped 4 images")
    assert "empty_report=2 images/1 report" in line and "missing_file=1" in line
    assert "unreadable_report=0 images/1 report" in line and "1 report without images" in line
    assert "by request" not in line and "filtered" not in line
    assert line in printed
