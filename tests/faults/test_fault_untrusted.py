"""Untrusted files: pickled payloads never run, custom code needs trust_remote_code, no token is ever written down.

Every pickle below carries a real payload: unpickling it creates a marker folder (`os.mkdir`). The first test proves
the payload works when loaded unsafely, so each later "the marker does not exist" is a check that can fail.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from convirt_hf import ConvirtModel, ConvirtProcessor
from convirt_hf.checkpointing import CheckpointReadError, latest_checkpoint

from faultkit import tiny_args
from helpers import run_clean_python
from training import pretrain

PLANTED_TOKEN = "hf_faultSuitePlantedToken0123456789ABCDEFGH"


class Payload:
    """Unpickling runs os.mkdir(marker): the stand-in for any code an attacker could put in a pickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def plant_pickle(path: Path, marker: Path, keys=("conv1.weight",)) -> Path:
    torch.save({key: Payload(marker) for key in keys}, path)
    return path


def test_the_planted_payload_runs_when_unpickled_unsafely(tmp_path):
    marker = tmp_path / "payload-ran"
    plant_pickle(tmp_path / "evil.pt", marker)
    assert not marker.exists()
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.is_dir()  # so a refusal below is what keeps the marker away


@pytest.fixture()
def bert_folder(tmp_path, tokenizer) -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64, max_position_embeddings=64),
                     add_pooling_layer=False)
    bert.save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    return tmp_path / "bert"


def test_tower_files_with_a_pickled_payload_are_refused(tmp_path, bert_folder):
    marker = tmp_path / "payload-ran"
    evil_image = plant_pickle(tmp_path / "resnet.pt", marker)
    with pytest.raises(ValueError, match=r"weights_only=True"):
        ConvirtModel.from_pretrained_towers(image=evil_image, text=bert_folder, image_model_name="resnet18",
                                            frozen_text_layers=1)
    # a text tower folder holding only a pickled pytorch_model.bin
    evil_bert = tmp_path / "evil-bert"
    shutil.copytree(bert_folder, evil_bert)
    (evil_bert / "model.safetensors").unlink()
    plant_pickle(evil_bert / "pytorch_model.bin", marker, keys=("embeddings.word_embeddings.weight",))
    with pytest.raises(Exception) as raised:
        ConvirtModel.from_pretrained_towers(image=None, text=evil_bert, image_model_name="resnet18",
                                            frozen_text_layers=1)
    assert "weights_only" in str(raised.value) or "Unpickl" in type(raised.value).__name__, raised.value
    assert not marker.exists()


def test_a_model_folder_with_a_pickled_payload_is_refused(tmp_path, model, tokenizer):
    from convirt_hf.evaluation.encoders import load_image_encoder

    marker = tmp_path / "payload-ran"
    folder = tmp_path / "convirt"
    model.save_pretrained(folder)
    ConvirtProcessor.from_tokenizer(tokenizer, image_size=32, resize_size=40).save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    plant_pickle(folder / "pytorch_model.bin", marker, keys=("logit_scale",))
    for load in (lambda: ConvirtModel.from_pretrained(folder), lambda: load_image_encoder(folder),
                 lambda: load_image_encoder(plant_pickle(tmp_path / "encoder.pth", marker), "resnet18")):
        with pytest.raises(Exception) as raised:
            load()
        assert "weights_only" in str(raised.value) or "Unpickl" in type(raised.value).__name__, raised.value
        assert not marker.exists()

    # a timm folder (what export_image_encoder writes) whose weights were swapped for a pickle
    timm_folder = tmp_path / "timm"
    model.export_image_encoder(timm_folder)
    for weights in timm_folder.glob("*.safetensors"):
        weights.unlink()
    plant_pickle(timm_folder / "pytorch_model.bin", marker)
    with pytest.raises(Exception) as refused:  # noqa: B017  (torch refuses the pickle; its error type varies)
        load_image_encoder(timm_folder)
    assert not marker.exists(), refused.value


@pytest.fixture(scope="module")
def trained_run(tiny_corpus, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("untrusted") / "run"
    pretrain.main(tiny_args(tiny_corpus, output_dir, retrieval_set="none", max_steps=4, save_steps=2, eval_steps=4))
    return output_dir


@pytest.mark.parametrize("victim", ["optimizer.bin", "random_states_0.pkl"])
def test_a_checkpoint_file_with_a_pickled_payload_stops_the_resume(victim, tiny_corpus, trained_run, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(trained_run, output_dir)
    checkpoint = latest_checkpoint(output_dir / "checkpoints")
    marker = tmp_path / "payload-ran"
    plant_pickle(checkpoint / victim, marker, keys=("state", "random_state"))
    args = tiny_args(tiny_corpus, output_dir, retrieval_set="none", max_steps=6, save_steps=2, eval_steps=4)
    with pytest.raises(CheckpointReadError, match=rf"{checkpoint.name}.*(cannot be restored|{victim})"):
        pretrain.main(args + ["--resume", "latest"])
    assert not marker.exists()
    assert latest_checkpoint(output_dir / "checkpoints") == checkpoint  # nothing trained, nothing overwritten


def test_a_missing_random_state_file_stops_the_resume_instead_of_silently_diverging(tiny_corpus, trained_run,
                                                                                      tmp_path):
    # accelerate alone logs "Could not load random states" at INFO and resumes with other random numbers
    output_dir = tmp_path / "run"
    shutil.copytree(trained_run, output_dir)
    checkpoint = latest_checkpoint(output_dir / "checkpoints")
    (checkpoint / "random_states_0.pkl").unlink()
    args = tiny_args(tiny_corpus, output_dir, retrieval_set="none", max_steps=6, save_steps=2, eval_steps=4)
    with pytest.raises(CheckpointReadError, match=r"cannot restore the random states from random_states_0\.pkl"):
        pretrain.main(args + ["--resume", "latest"])


def test_custom_code_runs_only_with_trust_remote_code(model, tokenizer, tmp_path, hf_home):
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    ConvirtProcessor.from_tokenizer(tokenizer, image_size=32, resize_size=40).save_pretrained(folder)
    marker = tmp_path / "remote-code-ran"
    for name in ("modeling_convirt.py", "configuration_convirt.py"):  # what a tampered Hub repo could hold
        with open(folder / name, "a") as handle:  # runs when the module is imported
            handle.write(f"\nimport os as _os\n_os.makedirs({str(marker)!r}, exist_ok=True)\n")

    result = run_clean_python(
        f"""
        from transformers import AutoConfig, AutoModel, AutoProcessor, pipeline

        folder = {str(folder)!r}
        refusals = []
        for load in (lambda: AutoConfig.from_pretrained(folder), lambda: AutoModel.from_pretrained(folder),
                     lambda: AutoProcessor.from_pretrained(folder),
                     lambda: pipeline("zero-shot-image-classification", model=folder),
                     lambda: AutoModel.from_pretrained(folder, trust_remote_code=False)):
            try:
                load()
            except Exception as error:
                refusals.append("trust_remote_code" in str(error))
            else:
                refusals.append("loaded")
        print("REFUSALS", refusals)
        import os
        print("MARKER_AFTER_REFUSALS", os.path.exists({str(marker)!r}))
        model = AutoModel.from_pretrained(folder, trust_remote_code=True)
        print("LOADED", type(model).__name__)
        """,
        hf_home=hf_home, cwd=tmp_path)
    assert "REFUSALS [True, True, True, True, True]" in result.stdout, result.stdout + result.stderr
    assert "MARKER_AFTER_REFUSALS False" in result.stdout, result.stdout
    assert "LOADED ConvirtModel" in result.stdout and marker.is_dir()  # the planted code did run once trusted


def test_a_planted_token_never_reaches_logs_cards_or_saved_arguments(tiny_corpus, zygote, tmp_path, monkeypatch,
                                                                       caplog):
    import logging

    from helpers import FakeHfApi
    from training import push as push_cli

    output_dir = tmp_path / "run"
    child = zygote.run(tiny_args(tiny_corpus, output_dir, max_steps=4, save_steps=2, eval_steps=2,
                                 report_to="tensorboard"),
                       env={"HF_TOKEN": PLANTED_TOKEN, "HUGGING_FACE_HUB_TOKEN": PLANTED_TOKEN}, name="token")
    # the token is in the process's environment, so a careless dump of os.environ or of the Hub settings would show it
    monkeypatch.setenv("HF_TOKEN", PLANTED_TOKEN)
    api = FakeHfApi(tmp_path / "remote")
    with caplog.at_level(logging.DEBUG):
        push_cli.main(["--model_dir", str(output_dir), "--repo_id", "someone/convirt-test",
                       "--build_dir", str(tmp_path / "build")], api=api)

    haystacks = {"training log": child.output(), "push log": caplog.text,
                 "api calls (other than the token itself)": json.dumps(
                     [[name, {k: str(v) for k, v in kwargs.items() if k != "token"}] for name, kwargs in api.calls])}
    for root in (output_dir, tmp_path / "build", tmp_path / "remote"):
        for path in root.rglob("*"):
            if path.is_file():
                haystacks[str(path)] = path.read_bytes().decode("latin-1")
    assert any(path.endswith("README.md") for path in haystacks) and any("tfevents" in p for p in haystacks)
    leaked = [where for where, text in haystacks.items() if PLANTED_TOKEN in text or PLANTED_TOKEN[3:20] in text]
    assert not leaked, f"the token appears in {leaked}"
