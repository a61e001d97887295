"""Publishing: built repo folders, model cards, the timm encoder, and uploads through a fake HfApi (all offline)."""

from __future__ import annotations

import json
import logging
import re
import shutil
import socket
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

from convirt_hf import hub
from convirt_hf.evaluation.linear_probe import summarise_runs
from convirt_hf.evaluation.reporting import write_results
from convirt_hf.training import pretrain
from convirt_hf.training import push as push_cli
from convirt_hf.training.retrieval import retrieval_rows

from helpers import FakeHfApi, run_clean_python, tiny_args

REPO = "org/convirt-tiny"
TIMM_REPO = "org/convirt-tiny-resnet"
PLANTED_TOKEN = "hf_plantedFakeToken0123456789abcdefXYZ"
MODEL_FILES = {"README.md", "config.json", "model.safetensors", "configuration_convirt.py", "modeling_convirt.py",
               "processing_convirt.py", "processor_config.json", "tokenizer.json", "tokenizer_config.json"}
TIMM_FILES = {"README.md", "config.json", "model.safetensors"}
CARD_SECTIONS = {"Model description", "Intended use", "Out-of-scope use", "Training data and preprocessing",
                 "Training hyper-parameters", "Evaluation", "How to use", "Limitations and biases", "Citation"}
REQUIRED_TAGS = {"convirt", "contrastive-learning", "medical-imaging", "chest-x-ray", "custom_code"}


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def trained_dir(tiny_corpus, tmp_path_factory) -> Path:
    """A real (tiny) training/pretrain.py output folder, with retrieval metrics in metrics.json."""
    output_dir = tmp_path_factory.mktemp("run") / "convirt-tiny"
    pretrain.main(tiny_args(tiny_corpus, output_dir, projection_dim=16, max_steps=3, eval_steps=3, save_steps=3))
    return output_dir


@pytest.fixture(scope="module")
def evaluation_files(trained_dir, tmp_path_factory) -> dict:
    """A linear-probe file (the model and a baseline, 3 seeds) and a retrieval + zero-shot file, as the scripts
    write them."""
    folder = tmp_path_factory.mktemp("evaluation")
    rng = np.random.default_rng(0)
    model = str(trained_dir)
    probe_rows = []
    for name in (model, "random:resnet18"):
        for task, kind, metrics in (("pneumonia", "binary", ("auc", "accuracy")),
                                    ("category", "multiclass", ("accuracy", "auc", "auc/edema"))):
            for fraction in (0.01, 0.1, 1.0):
                for seed in (0, 1, 2):
                    for metric in metrics:
                        probe_rows.append({
                            "model": name, "data": "/data/rsna-shards", "task": task, "task_kind": kind,
                            "protocol": "linear_probe", "fraction": fraction, "seed": seed, "metric": metric,
                            "value": float(rng.uniform(0.5, 1.0)), "headline": metric == metrics[0]})
    probe = write_results(folder / "linear_probe.json",
                          {"protocol": "linear_probe", "dataset": "/data/rsna-shards", "arguments": {}},
                          probe_rows, summarise_runs(probe_rows))

    ks = [5, 10, 50, 100]
    directions = {
        direction: {"mean": {5: 0.61, 10: 0.55, 50: 0.4321, 100: None}, "num_queries": {"edema": 2},
                    "num_candidates": {"edema": 60}, "per_category": {"edema": {5: 0.6, 10: 0.5, 50: 0.4, 100: None}}}
        for direction in ("image->image", "text->image")
    }
    directions["text->image"]["mean"] = {5: 0.7, 10: 0.65, 50: 0.5, 100: None}
    data = "/cache/convirt_hf/synthetic-0123abcd"
    rows = retrieval_rows(directions, model, data, ks)
    rows.append({"model": model, "data": f"{data}:cls_test", "task": "category", "task_kind": "multiclass",
                 "protocol": "zero_shot", "fraction": None, "seed": None, "metric": "accuracy", "value": 0.4375,
                 "headline": True})
    retrieval = write_results(folder / "retrieval.json",
                              {"protocol": "retrieval", "retrieval_set": data, "chance_rate": 0.125},
                              rows, summarise_runs([row for row in rows if row.get("category", "mean") == "mean"]))
    return {"linear_probe": probe, "retrieval": retrieval}


@pytest.fixture()
def no_network(monkeypatch):
    """Any socket connection or real HfApi fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if args else kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    import huggingface_hub

    class NoHfApi:
        def __init__(self, *args, **kwargs):
            raise AssertionError("a real HfApi was created")

    monkeypatch.setattr(huggingface_hub, "HfApi", NoHfApi)


@pytest.fixture()
def token(monkeypatch):
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN", PLANTED_TOKEN)
    return PLANTED_TOKEN


@pytest.fixture()
def no_token(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    from huggingface_hub import get_token

    assert get_token() is None, "a token is stored in the test HF_HOME"


def empty_sections(markdown: str) -> list[str]:
    """Headings (outside code blocks) with no text before the next heading."""
    body = markdown.split("\n---\n", 1)[1] if markdown.startswith("---") else markdown
    sections: list[tuple[str, list[str]]] = []
    fenced = False
    for line in body.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and re.match(r"^#{1,6} ", line):
            sections.append((line, []))
        elif sections and line.strip():
            sections[-1][1].append(line)
    return [heading for heading, lines in sections if not lines]


def headings(markdown: str, level: int = 2) -> set[str]:
    return set(re.findall(rf"^{'#' * level} (.+)$", markdown, flags=re.MULTILINE))


def expected_model_index(evaluation_files: dict, model: str) -> Counter:
    """(task type, data set, split, metric type, value) of every entry the card should carry, from the JSON files."""
    expected = Counter()
    probe = json.loads(evaluation_files["linear_probe"].read_text())
    for row in probe["summary"]:
        if row["model"] == model and row["headline"]:
            metric_type = {"auc": "roc_auc", "accuracy": "accuracy"}[row["metric"]]
            expected[("image-classification", "rsna-shards", "test", metric_type, round(row["mean"], 4))] += 1
    retrieval = json.loads(evaluation_files["retrieval"].read_text())
    for row in retrieval["summary"]:
        if row["protocol"] == "retrieval":
            k = row["metric"].split("@")[1]
            expected[("image-feature-extraction", "convirt-hf synthetic corpus", "retrieval", f"precision_at_{k}",
                      round(row["mean"], 4))] += 1
        elif row["protocol"] == "zero_shot":
            expected[("zero-shot-image-classification", "convirt-hf synthetic corpus", "cls_test", "accuracy",
                      round(row["mean"], 4))] += 1
    return expected


def copy_trained(trained_dir: Path, destination: Path, **config_changes) -> Path:
    shutil.copytree(trained_dir, destination, ignore=shutil.ignore_patterns("checkpoints", "best_model", "runs"))
    if config_changes:
        config = json.loads((destination / "config.json").read_text())
        config.update(config_changes)
        (destination / "config.json").write_text(json.dumps(config))
    return destination


# ---------------------------------------------------------------------------------------------------------------------
# Uploads through the fake HfApi


def test_push_makes_one_create_repo_and_one_upload_per_repo_with_the_expected_files(
        trained_dir, evaluation_files, tmp_path, token, no_network):
    api = FakeHfApi(tmp_path / "remote")
    result = push_cli.main(["--model_dir", str(trained_dir), "--repo_id", REPO, "--timm_repo_id", TIMM_REPO,
                            "--evaluation", str(evaluation_files["linear_probe"]), str(evaluation_files["retrieval"]),
                            "--build_dir", str(tmp_path / "build")], api=api)

    assert api.names() == ["create_repo", "repo_info", "upload_folder", "create_repo", "repo_info", "upload_folder"]
    assert [kwargs["repo_id"] for _, kwargs in api.calls] == [REPO] * 3 + [TIMM_REPO] * 3
    assert all(kwargs["exist_ok"] and kwargs["private"] is False for name, kwargs in api.calls if name == "create_repo")
    assert all(kwargs["revision"] is None for name, kwargs in api.calls if name == "upload_folder")
    model_repo, timm_repo = api.remote(REPO), api.remote(TIMM_REPO)
    assert {path.name for path in model_repo.iterdir()} == MODEL_FILES
    assert {path.name for path in timm_repo.iterdir()} == TIMM_FILES
    assert result["model"]["commit_url"].startswith(f"https://huggingface.co/{REPO}/commit/")
    assert {name for name, _ in result["model"]["files"]} == MODEL_FILES

    auto_map = json.loads((model_repo / "config.json").read_text())["auto_map"]
    assert set(auto_map) >= {"AutoConfig", "AutoModel", "AutoModelForZeroShotImageClassification"}
    processor_map = json.loads((model_repo / "processor_config.json").read_text())["auto_map"]
    assert processor_map["AutoProcessor"] == "processing_convirt.ConvirtProcessor"
    # the weights uploaded are the trained ones, byte for byte
    assert (model_repo / "model.safetensors").read_bytes() == (trained_dir / "model.safetensors").read_bytes()
    card = (model_repo / "README.md").read_text()
    assert f'from_pretrained("{REPO}"' in card and f"hf-hub:{TIMM_REPO}" in card


def test_private_and_revision_create_the_branch_and_upload_to_it(trained_dir, tmp_path, token, no_network):
    api = FakeHfApi(tmp_path / "remote")
    push_cli.main(["--model_dir", str(trained_dir), "--repo_id", REPO, "--private", "--revision", "experiment-1"],
                  api=api)
    assert api.names() == ["create_repo", "create_branch", "repo_info", "upload_folder"]
    assert api.calls[0][1]["private"] is True
    assert api.calls[1][1]["branch"] == "experiment-1"
    assert api.calls[2][1]["revision"] == "experiment-1"
    assert {path.name for path in api.remote(REPO, "experiment-1").iterdir()} == MODEL_FILES


def test_dry_run_builds_and_lists_files_without_calling_the_api(trained_dir, tmp_path, no_token, no_network, capsys):
    api = FakeHfApi(tmp_path / "remote")
    build = tmp_path / "build"
    result = push_cli.main(["--model_dir", str(trained_dir), "--repo_id", REPO, "--timm_repo_id", TIMM_REPO,
                            "--dry_run", "--build_dir", str(build)], api=api)
    assert api.calls == []
    assert result["model"]["dry_run"] and result["model"]["commit_url"] is None
    assert result["model"]["files"] == [[name, size] for name, size in hub.folder_files(build / "model")]
    assert {path.name for path in (build / "timm").iterdir()} == TIMM_FILES
    out = capsys.readouterr().out
    assert "Would upload" in out and "nothing was uploaded" in out
    size = (build / "model" / "model.safetensors").stat().st_size
    assert re.search(rf"{re.escape(hub.format_size(size))}\s+model\.safetensors", out)
    # a second build into the same folder is refused unless asked
    with pytest.raises(FileExistsError, match="--overwrite"):
        push_cli.main(["--model_dir", str(trained_dir), "--repo_id", REPO, "--dry_run", "--build_dir", str(build)],
                      api=api)
    push_cli.main(["--model_dir", str(trained_dir), "--repo_id", REPO, "--dry_run", "--build_dir", str(build),
                   "--overwrite"], api=api)
    assert api.calls == []


def test_push_folder_keeps_working_for_pretrain(trained_dir, tmp_path, token, no_network):
    api = FakeHfApi(tmp_path / "remote")
    url = hub.push_folder(trained_dir, REPO, api=api)
    assert api.names() == ["create_repo", "repo_info", "upload_folder"] and url.startswith("https://huggingface.co/")
    assert {path.name for path in api.remote(REPO).iterdir()} == MODEL_FILES
    assert not Path(api.calls[2][1]["folder_path"]).exists()  # built in a temporary folder, removed afterwards


# ---------------------------------------------------------------------------------------------------------------------
# Errors before any upload


def test_missing_token_fails_before_anything_is_built_or_sent(trained_dir, tmp_path, no_token, no_network):
    api = FakeHfApi(tmp_path / "remote")
    with pytest.raises(hub.MissingTokenError) as error:
        push_cli.main(["--model_dir", str(trained_dir), "--repo_id", REPO, "--build_dir", str(tmp_path / "build")],
                      api=api)
    assert "HF_TOKEN" in str(error.value) and "hf auth login" in str(error.value)
    assert api.calls == [] and not (tmp_path / "build").exists()
    with pytest.raises(hub.MissingTokenError):
        hub.push_folder(trained_dir, REPO, api=api)
    assert api.calls == []


@pytest.mark.parametrize("bad", ["convirt-tiny", "org/convirt tiny", "org/convirt--tiny", "org/../etc", "-org/x",
                                 "org/name!", "org/x.git"])
def test_bad_repo_ids_fail_before_any_upload(bad, trained_dir, tmp_path, token, no_network):
    api = FakeHfApi(tmp_path / "remote")
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        push_cli.main(["--model_dir", str(trained_dir), f"--repo_id={bad}"], api=api)
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        push_cli.main(["--model_dir", str(trained_dir), "--repo_id", REPO, f"--timm_repo_id={bad}"], api=api)
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        hub.push(trained_dir, bad, api=api)
    assert api.calls == []


def test_folders_that_are_not_trained_models_fail_with_what_is_missing(trained_dir, tmp_path, token, no_network):
    api = FakeHfApi(tmp_path / "remote")
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(trained_dir / "config.json", half / "config.json")
    with pytest.raises(ValueError, match="not a trained ConVIRT folder") as error:
        push_cli.main(["--model_dir", str(half), "--repo_id", REPO], api=api)
    for name in ("model.safetensors", "modeling_convirt.py", "processor_config.json", "training_args.json"):
        assert name in str(error.value)

    pickled = copy_trained(trained_dir, tmp_path / "pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pytorch_model.bin.*safetensors"):
        hub.build_publish_folder(pickled, tmp_path / "out", REPO)

    corrupt = copy_trained(trained_dir, tmp_path / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        push_cli.main(["--model_dir", str(corrupt), "--repo_id", REPO], api=api)

    with pytest.raises(FileNotFoundError):
        push_cli.main(["--model_dir", str(tmp_path / "absent"), "--repo_id", REPO], api=api)
    # a built folder with a pickle in it is refused by push itself
    built = hub.build_publish_folder(trained_dir, tmp_path / "built", REPO)
    (built / "extra.pt").write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="extra.pt"):
        hub.push(built, REPO, api=api)
    assert api.calls == [] and not (tmp_path / "out").exists()


def test_cli_turns_errors_into_one_logged_line_and_exit_status_1(trained_dir, monkeypatch, caplog, token, no_network):
    monkeypatch.setattr(sys, "argv", ["push.py", "--model_dir", str(trained_dir), "--repo_id", "no namespace"])
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        push_cli.cli()
    assert exit_info.value.code == 1
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and "'no namespace' is not a valid Hub repo id" in errors[0].getMessage()


def test_build_refuses_to_overwrite_or_delete_what_it_did_not_write(trained_dir, tmp_path):
    out = hub.build_publish_folder(trained_dir, tmp_path / "out", REPO)
    with pytest.raises(FileExistsError, match="overwrite"):
        hub.build_publish_folder(trained_dir, out, REPO)
    hub.build_publish_folder(trained_dir, out, REPO, overwrite=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        hub.build_publish_folder(trained_dir, out, REPO, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="would contain the model folder"):
        hub.build_publish_folder(trained_dir, trained_dir.parent, REPO, overwrite=True)


def test_planted_token_never_appears_in_logs_output_or_files(trained_dir, evaluation_files, tmp_path, token,
                                                             no_network, caplog, capsys):
    api = FakeHfApi(tmp_path / "remote")
    arguments = ["--model_dir", str(trained_dir), "--repo_id", REPO, "--timm_repo_id", TIMM_REPO,
                 "--evaluation", str(evaluation_files["linear_probe"]), str(evaluation_files["retrieval"])]
    with caplog.at_level(logging.DEBUG):
        push_cli.main([*arguments, "--dry_run", "--build_dir", str(tmp_path / "dry")], api=api)
        push_cli.main([*arguments, "--build_dir", str(tmp_path / "build")], api=api)
        hub.push(tmp_path / "build" / "model", REPO, api=api, token=PLANTED_TOKEN)  # an explicit token too
    assert len(api.calls) == 9  # create_repo, repo_info and upload_folder, for 3 uploads
    captured = capsys.readouterr()
    for text in (caplog.text, captured.out, captured.err):
        assert PLANTED_TOKEN not in text
    written = [path for root in (tmp_path / "dry", tmp_path / "build", tmp_path / "remote")
               for path in root.rglob("*") if path.is_file()]
    assert len(written) > 20
    for path in written:
        assert PLANTED_TOKEN.encode() not in path.read_bytes(), path


# ---------------------------------------------------------------------------------------------------------------------
# The built folder serves the model without convirt_hf; the timm folder serves the image tower


def test_built_folder_loads_in_a_clean_interpreter_and_classifies_zero_shot(trained_dir, tmp_path):
    from convirt_hf import ConvirtModel, ConvirtProcessor

    built = hub.build_publish_folder(trained_dir, tmp_path / "built", REPO)
    folder = shutil.copytree(built, tmp_path / "downloaded")  # as after snapshot_download
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 40), dtype=np.uint8), mode="L")
    image.save(tmp_path / "xray.png")
    sentences = ["the heart is enlarged .", "no pleural effusion .", "the lungs are clear ."]
    model = ConvirtModel.from_pretrained(trained_dir, dtype=torch.float32).eval()
    processor = ConvirtProcessor.from_pretrained(trained_dir)
    with torch.no_grad():
        logits = model(**processor(images=[Image.open(tmp_path / "xray.png")], text=sentences)).logits_per_image
    expected = dict(zip(sentences, logits.softmax(dim=-1)[0].tolist()))

    result = run_clean_python(
        f"""
        import json, torch
        from transformers import AutoModel, AutoProcessor, pipeline

        folder = {str(folder)!r}
        model = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
        assert type(model).__name__ == "ConvirtModel" and "convirt_hf" not in type(model).__module__
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        assert type(processor).__name__ == "ConvirtProcessor", type(processor)
        inputs = processor(images=[{str(tmp_path / "xray.png")!r}], text={sentences!r})
        with torch.no_grad():
            direct = model(**inputs).logits_per_image.softmax(dim=-1)[0].tolist()
        classify = pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)
        scores = classify({str(tmp_path / "xray.png")!r}, candidate_labels={sentences!r}, hypothesis_template="{{}}")
        print(json.dumps({{"direct": direct, "scores": scores}}))
        """,
        hf_home=tmp_path / "clean_hf_home",
        cwd=tmp_path,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["direct"] == pytest.approx([expected[s] for s in sentences], abs=1e-5)
    assert sorted(entry["label"] for entry in report["scores"]) == sorted(sentences)
    for entry in report["scores"]:
        assert entry["score"] == pytest.approx(expected[entry["label"]], abs=2e-3)


def test_timm_folder_loads_with_local_dir_and_matches_the_image_tower(trained_dir, tmp_path):
    import timm

    from convirt_hf import ConvirtModel

    folder = hub.build_timm_folder(trained_dir, tmp_path / "timm", TIMM_REPO, convirt_repo_id=REPO)
    assert {path.name for path in folder.iterdir()} == TIMM_FILES
    config = json.loads((folder / "config.json").read_text())
    model = ConvirtModel.from_pretrained(trained_dir, dtype=torch.float32).eval()
    assert config["architecture"] == model.config.image_model_name == "test_resnet"
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32] and config["pretrained_cfg"]["num_classes"] == 0

    encoder = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features, tower = encoder(pixels), model.image_encoder(pixels)
        untrained = timm.create_model(f"local-dir:{folder}", pretrained=False).eval()(pixels)
    assert features.shape == (3, model.image_encoder.num_features)
    torch.testing.assert_close(features, tower, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(untrained, tower, atol=1e-3)  # the match comes from the weights, not the architecture
    assert tuple(timm.data.resolve_data_config({}, model=encoder)["input_size"]) == (3, 32, 32)  # a list in timm 1.0.29

    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "timm" and card.data.base_model == [REPO]
    assert {"timm", "convirt", "medical-imaging"} <= set(card.data.tags)
    assert f'timm.create_model("hf-hub:{TIMM_REPO}", pretrained=True)' in card.text
    assert "not a medical device" in card.text and not empty_sections(card.content)


# ---------------------------------------------------------------------------------------------------------------------
# Model cards


def test_card_metadata_and_model_index_match_the_evaluation_files(trained_dir, evaluation_files, tmp_path):
    source = copy_trained(trained_dir, tmp_path / "convirt-tiny", image_tower_source="resnet18.a1_in1k",
                          text_tower_source="emilyalsentzer/Bio_ClinicalBERT")
    # the evaluation files name the original folder: match it explicitly
    built = hub.build_publish_folder(source, tmp_path / "built", REPO, evaluation_model=str(trained_dir),
                                     evaluation_files=[evaluation_files["linear_probe"], evaluation_files["retrieval"]],
                                     license="cc-by-4.0")
    card = ModelCard.load(built / "README.md")
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "zero-shot-image-classification"
    assert REQUIRED_TAGS <= set(data.tags) and data.license == "cc-by-4.0"
    assert data.base_model == ["timm/resnet18.a1_in1k", "emilyalsentzer/Bio_ClinicalBERT"]
    assert data.model_name == "convirt-tiny"

    actual = Counter((r.task_type, r.dataset_name, r.dataset_split, r.metric_type, r.metric_value)
                     for r in data.eval_results)
    assert actual == expected_model_index(evaluation_files, str(trained_dir))
    # 2 tasks x 3 fractions, 2 directions x 3 finite k, 1 zero-shot; baselines and metrics.json's retrieval stay out
    assert len(data.eval_results) == 6 + 6 + 1
    names = [r.metric_name for r in data.eval_results if r.task_type == "image-classification"]
    assert "Linear probe, pneumonia AUC, 1% labels, mean of 3 seeds" in names
    assert all(" " not in r.dataset_type for r in data.eval_results)  # ids, not pretty names

    # the evaluation table: task x fraction, mean ± std x100 of this model, and the baseline beside it
    summary = json.loads(evaluation_files["linear_probe"].read_text())["summary"]
    ours = {(row["task"], row["fraction"]): row for row in summary
            if row["model"] == str(trained_dir) and row["headline"]}
    pneumonia = next(line for line in card.text.splitlines() if line.startswith("| rsna-shards | pneumonia | AUC |"))
    cells = [cell.strip() for cell in pneumonia.strip().strip("|").split("|")]
    assert cells[3:] == [f"{100 * ours[('pneumonia', f)]['mean']:.1f} ± {100 * ours[('pneumonia', f)]['std']:.1f}"
                         for f in (0.01, 0.1, 1.0)]
    assert "| random:resnet18 |" in card.text and "| this model |" in card.text
    # P@100 has no value (too few candidates): no column for it
    assert "| convirt-hf synthetic corpus | text->image | 70.0 | 65.0 | 50.0 |" in card.text
    assert "A random ranking scores 12.5." in card.text


def test_card_has_every_section_with_content(trained_dir, evaluation_files, tmp_path):
    built = hub.build_publish_folder(trained_dir, tmp_path / "built", REPO, timm_repo_id=TIMM_REPO,
                                     evaluation_files=[evaluation_files["linear_probe"]])
    card = ModelCard.load(built / "README.md")
    assert CARD_SECTIONS <= headings(card.content)
    assert empty_sections(card.content) == []
    text = card.text
    for needle in ("not a medical device", "diagnosis", f'ConvirtModel.from_pretrained("{REPO}")',
                   f'AutoModel.from_pretrained("{REPO}", trust_remote_code=True)', 'hypothesis_template="{}"',
                   '"image-feature-extraction"', f'timm.create_model("hf-hub:{TIMM_REPO}", pretrained=True)',
                   "@inproceedings{zhang2022convirt", "| tau / lambda | 0.1 / 0.75 |"):
        assert needle in text, needle
    # trained on a dataset folder, not the built-in corpus: the weights' license is the data's, not ours to pick
    assert card.data.license == "other"
    # metrics.json's retrieval stays in the model-index when no evaluation file has retrieval results
    assert {r.task_type for r in card.data.eval_results} == {"image-classification", "image-feature-extraction"}
    assert not any(line.strip() == "|" for line in text.splitlines())


def test_card_without_results_says_so_and_has_no_model_index(trained_dir, tmp_path):
    source = copy_trained(trained_dir, tmp_path / "no-results")
    metrics = json.loads((source / "metrics.json").read_text())
    for key in ("retrieval", "retrieval_table", "retrieval_chance"):
        metrics.pop(key)
    (source / "metrics.json").write_text(json.dumps(metrics))
    card = ModelCard.load(hub.build_publish_folder(source, tmp_path / "built", REPO) / "README.md")
    assert "No evaluation results were recorded for this model" in card.text
    assert card.data.eval_results is None and "model-index" not in card.content.split("\n---\n", 1)[0]
    assert CARD_SECTIONS <= headings(card.content) and empty_sections(card.content) == []
    assert "local-dir:" in card.text  # without a timm repo, the card shows the export route


def test_evaluation_files_that_do_not_name_the_model_are_refused(trained_dir, evaluation_files, tmp_path):
    source = copy_trained(trained_dir, tmp_path / "renamed")
    with pytest.raises(ValueError, match="cannot tell which of its models"):
        hub.build_publish_folder(source, tmp_path / "built", REPO, evaluation_files=[evaluation_files["linear_probe"]])
    with pytest.raises(ValueError, match="no rows for model 'other'"):
        hub.build_publish_folder(trained_dir, tmp_path / "built", REPO, evaluation_model="other",
                                 evaluation_files=[evaluation_files["linear_probe"]])
    (tmp_path / "bad.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="not an evaluation results file"):
        hub.build_publish_folder(trained_dir, tmp_path / "built", REPO, evaluation_files=[tmp_path / "bad.json"])
    assert not (tmp_path / "built").exists()


def test_build_completes_an_incomplete_auto_map_in_the_copy_only(trained_dir, tmp_path):
    source = copy_trained(trained_dir, tmp_path / "older-run")
    config = json.loads((source / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_convirt.ConvirtConfig"}
    (source / "config.json").write_text(json.dumps(config))
    processor = json.loads((source / "processor_config.json").read_text())
    processor.pop("auto_map")
    (source / "processor_config.json").write_text(json.dumps(processor))

    built = hub.build_publish_folder(source, tmp_path / "built", REPO)
    assert json.loads((built / "config.json").read_text())["auto_map"] == hub.REQUIRED_AUTO_MAP
    assert json.loads((built / "processor_config.json").read_text())["auto_map"] == hub.PROCESSOR_AUTO_MAP
    assert json.loads((source / "config.json").read_text())["auto_map"] == config["auto_map"]  # source untouched


# ---------------------------------------------------------------------------------------------------------------------
# Publishing as a user sees it: an unchanged push, failures of the Hub, a self-hosted endpoint


def test_an_unchanged_second_push_says_nothing_changed_and_names_the_commit(trained_dir, tmp_path, token, no_network,
                                                                            capsys):
    api = FakeHfApi(tmp_path / "remote")
    argv = ["--model_dir", str(trained_dir), "--repo_id", REPO, "--build_dir", str(tmp_path / "build"), "--overwrite"]
    first = push_cli.main(argv, api=api)["model"]
    assert first["changed"] and "Uploaded" in capsys.readouterr().out
    second = push_cli.main(argv, api=api)["model"]
    output = capsys.readouterr().out
    assert not second["changed"] and second["commit"] == first["commit"]
    assert f"Nothing changed: {REPO} (main) already holds these" in output and first["commit"] in output
    assert "Uploaded" not in output


class RefusingHfApi(FakeHfApi):
    """A fake Hub that fails the upload the way huggingface_hub does."""

    def __init__(self, remote_root, error):
        super().__init__(remote_root)
        self.error = error

    def create_repo(self, **kwargs):
        raise self.error


def http_error(status: int, token: str):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    request = httpx2.Request("POST", "https://huggingface.co/api/repos/create",
                             headers={"authorization": f"Bearer {token}"})
    response = httpx2.Response(status, request=request, text="Invalid credentials in Authorization header")
    return HfHubHTTPError(f"{status} Client Error for url: https://huggingface.co/api/repos/create\n"
                          f"Invalid credentials (Request ID: Root=1-abc)", response=response)


@pytest.mark.parametrize(("status", "expected"), [
    (401, r"The Hub at \S+ rejected the token \(401 Unauthorized\) for org/convirt-tiny: set HF_TOKEN or run "
          r"`hf auth login`"),
    (403, r"The token may not write to org/convirt-tiny on \S+ \(403 Forbidden\)"),
    (None, r"Could not reach the Hub at \S+ to upload org/convirt-tiny \(ConnectionError: \[Errno 111\] "
           r"Connection refused\): check the network, or HF_ENDPOINT"),
])
def test_a_failed_upload_ends_with_one_clear_line_and_never_the_token(trained_dir, tmp_path, token, no_network,
                                                                      monkeypatch, caplog, capsys, status, expected):
    error = http_error(status, token) if status else ConnectionError("[Errno 111] Connection refused")
    api = RefusingHfApi(tmp_path / "remote", error)
    monkeypatch.setattr(sys, "argv", ["push.py", "--model_dir", str(trained_dir), "--repo_id", REPO, "--build_dir",
                                      str(tmp_path / "build")])
    monkeypatch.setattr(push_cli, "main", lambda argv=None, _main=push_cli.main: _main(argv, api=api))
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        push_cli.cli()
    assert exit_info.value.code == 1
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and re.search(expected, errors[0]), errors
    assert "\n" not in errors[0] and "Traceback" not in capsys.readouterr().err
    assert token not in errors[0] + caplog.text


def test_card_links_use_the_endpoint_of_the_upload(trained_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.example.org")
    folder = hub.build_publish_folder(trained_dir, tmp_path / "model", REPO, timm_repo_id=TIMM_REPO)
    card = (folder / "README.md").read_text()
    assert f"https://hub.example.org/{TIMM_REPO}" in card
    assert "huggingface.co" not in card.split("---", 2)[2]
    # the feature-extraction pipeline returns the model's L2-normalised embeddings: the card says so
    assert "L2-normalised" in card[card.index('pipeline("image-feature-extraction"') - 400:]
