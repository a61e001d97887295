"""ConvirtModel: forward modes, freezing, pooling, save/load, pretrained towers, timm export, bad input."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from convirt_hf import ConvirtConfig, ConvirtModel, ConvirtProcessor
from convirt_hf.modeling.processing_convirt import to_pil_rgb

from helpers import tiny_config


def _batch(model, batch_size=3, length=9, seed=0):
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.text_config.vocab_size
    return {
        "pixel_values": torch.randn(batch_size, 3, 32, 32, generator=generator),
        "input_ids": torch.randint(5, vocab, (batch_size, length), generator=generator),
        "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
    }


def _warm_batchnorm(model, steps=3):
    """Moves BatchNorm running statistics away from their initial values, so a re-initialisation would show."""
    model.train()
    with torch.no_grad():
        for seed in range(steps):
            model(pixel_values=torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 3 + 1)
    model.eval()


def test_image_only_text_only_and_paired_calls(model):
    model.eval()
    batch = _batch(model)
    image_only = model(pixel_values=batch["pixel_values"])
    assert image_only.image_embeds.shape == (3, 16)
    assert image_only.text_embeds is None and image_only.logits_per_image is None
    # pipelines take the first filled field: for an image-only call it must be the image embedding
    torch.testing.assert_close(image_only[0], image_only.image_embeds)

    text_only = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert text_only.text_embeds.shape == (3, 16) and text_only.image_embeds is None

    both = model(**batch, return_loss=True)
    assert both.logits_per_image.shape == (3, 3)
    torch.testing.assert_close(both.logits_per_text, both.logits_per_image.t())
    assert torch.isfinite(both.loss)
    torch.testing.assert_close(both.image_embeds.norm(dim=-1), torch.ones(3))
    # the same embeddings whichever way they are asked for
    torch.testing.assert_close(both.image_embeds, image_only.image_embeds)
    torch.testing.assert_close(model.get_image_features(batch["pixel_values"], normalize=True), both.image_embeds)
    torch.testing.assert_close(
        model.get_text_features(batch["input_ids"], batch["attention_mask"], normalize=True), both.text_embeds
    )
    # cosine similarity over tau
    torch.testing.assert_close(both.logits_per_image, both.image_embeds @ both.text_embeds.t() / model.config.tau)


def test_zero_shot_shapes_differ_between_images_and_texts(model):
    model.eval()
    batch = _batch(model, batch_size=2)
    texts = _batch(model, batch_size=5, seed=1)
    outputs = model(pixel_values=batch["pixel_values"], input_ids=texts["input_ids"])
    assert outputs.logits_per_image.shape == (2, 5)


def test_tuple_output(model):
    model.eval()
    batch = _batch(model)
    as_tuple = model(**batch, return_loss=True, return_dict=False)
    as_dict = model(**batch, return_loss=True)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)


def test_frozen_parameters_get_no_gradient_and_all_others_do(model):
    model.train()
    model(**_batch(model), return_loss=True).loss.backward()
    frozen_prefixes = ("text_encoder.embeddings.", "text_encoder.encoder.layer.0.")
    for name, parameter in model.named_parameters():
        if name.startswith(frozen_prefixes):
            assert not parameter.requires_grad and parameter.grad is None, name
        else:
            assert parameter.requires_grad and parameter.grad is not None, name
    # (timm zero-initialises each residual block's last BatchNorm gamma, so single tensors may get exact zeros at init)
    for group in ("image_encoder.", "text_encoder.encoder.layer.1.", "image_projection.", "text_projection."):
        grads = [p.grad.abs().sum() for n, p in model.named_parameters() if n.startswith(group)]
        assert grads and sum(grads) > 0, group


def test_frozen_layer_count_follows_the_config(tokenizer):
    model = ConvirtModel(tiny_config(vocab_size=tokenizer.vocab_size, frozen_text_layers=2,
                                     freeze_text_embeddings=False))
    assert all(p.requires_grad for p in model.text_encoder.embeddings.parameters())
    assert not any(p.requires_grad for p in model.text_encoder.encoder.parameters())


@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_pooling_ignores_padding(tokenizer, pooling):
    torch.manual_seed(0)
    model = ConvirtModel(tiny_config(vocab_size=tokenizer.vocab_size, text_pooling=pooling)).eval()
    ids = torch.tensor([[2, 40, 41, 42, 3]])
    padded_a = torch.tensor([[2, 40, 41, 42, 3, 0, 0, 0]])
    padded_b = torch.tensor([[2, 40, 41, 42, 3, 77, 12, 150]])  # different ids at the padded positions
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    unpadded = model.get_text_features(ids, torch.ones_like(ids))
    torch.testing.assert_close(model.get_text_features(padded_a, mask), unpadded, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.get_text_features(padded_b, mask), unpadded, rtol=1e-5, atol=1e-6)
    # and padding does matter when it is not masked: the check above is not vacuous
    assert not torch.allclose(model.get_text_features(padded_b, torch.ones_like(padded_b)), unpadded, atol=1e-4)


def test_max_pooling_is_a_max_over_real_tokens(model):
    model.eval()
    ids = torch.tensor([[2, 40, 41, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    hidden = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    expected = model.text_projection(hidden[:, :4].amax(dim=1))
    torch.testing.assert_close(model.get_text_features(ids, mask), expected)


def test_save_and_load_give_identical_logits_and_batchnorm_statistics(model, tmp_path):
    _warm_batchnorm(model)
    batch = _batch(model)
    with torch.no_grad():
        expected = model(**batch)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    assert {"modeling_convirt.py", "configuration_convirt.py"} <= {p.name for p in tmp_path.iterdir()}

    loaded = ConvirtModel.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        actual = loaded(**batch)
    torch.testing.assert_close(actual.logits_per_image, expected.logits_per_image, rtol=0, atol=0)
    torch.testing.assert_close(actual.image_embeds, expected.image_embeds, rtol=0, atol=0)
    saved_buffers = dict(model.named_buffers())
    for name, buffer in loaded.named_buffers():
        if "running_" in name or "num_batches_tracked" in name:
            torch.testing.assert_close(buffer, saved_buffers[name], rtol=0, atol=0, msg=name)
    for name, parameter in loaded.named_parameters():
        assert parameter.requires_grad == dict(model.named_parameters())[name].requires_grad, name


def test_auto_classes_resolve_to_convirt(model, tmp_path):
    from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification

    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ConvirtConfig)
    assert isinstance(AutoModel.from_pretrained(tmp_path, dtype=torch.float32), ConvirtModel)
    zero_shot = AutoModelForZeroShotImageClassification.from_pretrained(tmp_path, dtype=torch.float32)
    assert isinstance(zero_shot, ConvirtModel)


def _tiny_bert_folder(path, vocab_size, seed=0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    bert = BertModel(
        BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, max_position_embeddings=64),
        add_pooling_layer=False,
    )
    bert.save_pretrained(path)
    return bert


def _trained_looking_resnet18(seed=0):
    torch.manual_seed(seed)
    tower = timm.create_model("resnet18", num_classes=10)
    for module in tower.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return tower


@pytest.mark.parametrize("layout", ["safetensors", "torchvision_pth_with_module_prefix", "timm_local_dir"])
def test_from_pretrained_towers_keeps_the_loaded_weights(tmp_path, tokenizer, layout):
    from safetensors.torch import save_file

    tower = _trained_looking_resnet18()
    if layout == "safetensors":
        image_spec = tmp_path / "resnet18.safetensors"
        save_file(tower.state_dict(), image_spec)
    elif layout == "torchvision_pth_with_module_prefix":
        image_spec = tmp_path / "resnet18.pth"  # torchvision key names (same as timm's for ResNet), DDP-wrapped
        torch.save({"state_dict": {f"module.{k}": v for k, v in tower.state_dict().items()}}, image_spec)
    else:
        from timm.models import save_for_hf

        image_spec = tmp_path / "timm_tower"
        save_for_hf(tower, str(image_spec), safe_serialization=True)
    bert = _tiny_bert_folder(tmp_path / "bert", tokenizer.vocab_size)

    model = ConvirtModel.from_pretrained_towers(
        image=image_spec, text=tmp_path / "bert", image_model_name="resnet18", frozen_text_layers=1, projection_dim=16
    )
    assert model.config.image_model_name == "resnet18"
    expected_image = {k: v for k, v in tower.state_dict().items() if not k.startswith("fc.")}
    for name, value in model.image_encoder.state_dict().items():
        torch.testing.assert_close(value, expected_image[name], rtol=0, atol=0, msg=name)
    for name, value in model.text_encoder.state_dict().items():
        torch.testing.assert_close(value, bert.state_dict()[name], rtol=0, atol=0, msg=name)
    assert model.config.text_tower_source == str(tmp_path / "bert")

    # and the weights survive a save/load cycle as well
    model.save_pretrained(tmp_path / "convirt")
    reloaded = ConvirtModel.from_pretrained(tmp_path / "convirt", dtype=torch.float32)
    torch.testing.assert_close(reloaded.image_encoder.conv1.weight, tower.conv1.weight, rtol=0, atol=0)


def test_from_pretrained_towers_reports_mismatched_keys(tmp_path, tokenizer):
    from safetensors.torch import save_file

    save_file(timm.create_model("resnet10t", num_classes=0).state_dict(), tmp_path / "other.safetensors")
    _tiny_bert_folder(tmp_path / "bert", tokenizer.vocab_size)
    with pytest.raises(ValueError, match="do not fit 'resnet18'.*missing keys"):
        ConvirtModel.from_pretrained_towers(
            image=tmp_path / "other.safetensors", text=tmp_path / "bert", image_model_name="resnet18",
            frozen_text_layers=1,
        )


class NotATensor:
    """Stands for an arbitrary pickled object (the kind of payload weights_only=True refuses)."""


def test_from_pretrained_towers_refuses_pickled_objects(tmp_path, tokenizer):
    torch.save({"conv1.weight": NotATensor()}, tmp_path / "evil.pt")
    _tiny_bert_folder(tmp_path / "bert", tokenizer.vocab_size)
    with pytest.raises(ValueError, match="weights_only=True"):
        ConvirtModel.from_pretrained_towers(image=tmp_path / "evil.pt", text=tmp_path / "bert", frozen_text_layers=1)


# --- checkpoint layouts: torchvision and timm key names, training wrappers, self-supervised checkpoints -------------


def _torchvision_resnet18(seed=0):
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def _timm_resnet18():
    return timm.create_model("resnet18", num_classes=0).eval()


def test_torchvision_checkpoint_gives_the_timm_tower_the_same_features(tmp_path):
    from convirt_hf.modeling.modeling_convirt import load_tower_state, read_state_dict_file

    torchvision_model = _torchvision_resnet18()
    # an older torchvision-era training checkpoint: DDP prefix, an epoch counter, no BatchNorm step counters
    state = {f"module.{k}": v for k, v in torchvision_model.state_dict().items() if "num_batches_tracked" not in k}
    torch.save({"epoch": 90, "arch": "resnet18", "state_dict": state}, tmp_path / "resnet18_checkpoint.torch")

    tower = _timm_resnet18()
    load_tower_state(tower, read_state_dict_file(tmp_path / "resnet18_checkpoint.torch"), "file", "resnet18")
    torchvision_model.fc = torch.nn.Identity()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(tower(pixels), torchvision_model(pixels))
    assert all(value.item() == 0 for key, value in tower.state_dict().items() if key.endswith("num_batches_tracked"))


def test_tower_is_found_next_to_self_supervised_heads(caplog):
    from convirt_hf.modeling.modeling_convirt import load_tower_state

    source = _torchvision_resnet18(seed=1).state_dict()  # torchvision names in a timm-style framework checkpoint
    state = {f"backbone.{k}": v for k, v in source.items() if not k.startswith("fc.")}
    state.update({"neck.mlp.0.weight": torch.zeros(8, 512), "head.predictor.weight": torch.zeros(8, 8)})
    tower = _timm_resnet18()
    with caplog.at_level(logging.WARNING, logger="convirt_hf.modeling.modeling_convirt"):
        load_tower_state(tower, state, "ssl.pth", "resnet18")
    assert "under 'backbone.'" in caplog.text and "neck.mlp.0.weight" in caplog.text
    torch.testing.assert_close(tower.conv1.weight, source["conv1.weight"], rtol=0, atol=0)

    # a projector at the top level of a plain layout is skipped the same way
    plain = {**{k: v for k, v in source.items()}, "projector.0.weight": torch.zeros(8, 512)}
    load_tower_state(_timm_resnet18(), plain, "plain.pth", "resnet18")


def test_momentum_and_teacher_checkpoints_need_the_tower_named(tmp_path, tokenizer):
    from convirt_hf.modeling.modeling_convirt import load_tower_state, read_state_dict_file

    query, key = _torchvision_resnet18(seed=2).state_dict(), _torchvision_resnet18(seed=3).state_dict()
    moco = {f"module.encoder_q.{k}": v for k, v in query.items()}
    moco.update({f"module.encoder_k.{k}": v for k, v in key.items()})
    moco["module.queue"] = torch.zeros(128, 16)
    torch.save({"epoch": 200, "state_dict": moco}, tmp_path / "moco.pth.tar")
    state = read_state_dict_file(tmp_path / "moco.pth.tar")
    with pytest.raises(ValueError, match=r"whole tower under each of the prefixes \['module.encoder_k.', "
                                         r"'module.encoder_q.'\].*image_prefix"):
        load_tower_state(_timm_resnet18(), state, "moco.pth.tar", "resnet18")
    tower = _timm_resnet18()
    load_tower_state(tower, state, "moco.pth.tar", "resnet18", prefix="module.encoder_q.")
    torch.testing.assert_close(tower.layer4[1].bn2.running_var, query["layer4.1.bn2.running_var"], rtol=0, atol=0)

    # DINO-style nested dicts, through from_pretrained_towers
    torch.save({"student": {f"backbone.{k}": v for k, v in query.items()},
                "teacher": {f"backbone.{k}": v for k, v in key.items()}, "epoch": 100}, tmp_path / "dino.pth")
    _tiny_bert_folder(tmp_path / "bert", tokenizer.vocab_size)
    towers = dict(text=tmp_path / "bert", image_model_name="resnet18", frozen_text_layers=1, projection_dim=16)
    with pytest.raises(ValueError, match=r"\['student.backbone.', 'teacher.backbone.'\]"):
        ConvirtModel.from_pretrained_towers(image=tmp_path / "dino.pth", **towers)
    model = ConvirtModel.from_pretrained_towers(image=tmp_path / "dino.pth", image_prefix="teacher.backbone.", **towers)
    torch.testing.assert_close(model.image_encoder.conv1.weight, key["conv1.weight"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="No key .* starts with 'ema.'"):
        ConvirtModel.from_pretrained_towers(image=tmp_path / "dino.pth", image_prefix="ema.", **towers)


def test_another_architecture_is_reported_with_its_keys():
    from convirt_hf.modeling.modeling_convirt import load_tower_state

    # every ResNet-18 key is in a ResNet-34 state dict with the same shape: the extra blocks must not be skipped
    resnet34 = timm.create_model("resnet34", num_classes=0).state_dict()
    with pytest.raises(ValueError) as error:
        load_tower_state(_timm_resnet18(), resnet34, "resnet34.safetensors", "resnet18")
    message = str(error.value)
    assert "do not fit 'resnet18'" in message and "missing keys (0)" in message
    assert "unexpected keys (" in message and "layer1.2.conv1.weight" in message
    assert "Is image_model_name the checkpoint's architecture?" in message


def test_exported_image_encoder_loads_in_timm_with_the_same_features(model, tmp_path):
    _warm_batchnorm(model)
    folder = model.export_image_encoder(tmp_path / "timm_encoder")
    assert {"config.json", "model.safetensors"} <= {p.name for p in folder.iterdir()}
    timm_config = json.loads((folder / "config.json").read_text())
    assert timm_config["architecture"] == "test_resnet" and timm_config["num_classes"] == 0
    assert tuple(timm_config["pretrained_cfg"]["input_size"]) == (3, 32, 32)

    encoder = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder(pixel_values), model.image_encoder(pixel_values), rtol=0, atol=0)
    # the model's own tower keeps its original pretrained_cfg
    assert model.image_encoder.pretrained_cfg.get("tag") != "convirt"


def test_bad_pixel_values_are_named(model):
    with pytest.raises(ValueError,
                       match=r"pixel_values must have shape \(batch, 3, height, width\), got \(3, 32, 32\)"):
        model(pixel_values=torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"got \(2, 1, 32, 32\).*3 channels"):
        model.get_image_features(torch.randn(2, 1, 32, 32))


def test_mismatched_batch_sizes_with_loss(model):
    images = _batch(model, batch_size=2)["pixel_values"]
    texts = _batch(model, batch_size=3)["input_ids"]
    with pytest.raises(ValueError, match="2 images and 3 texts"):
        model(pixel_values=images, input_ids=texts, return_loss=True)
    with pytest.raises(ValueError, match="both pixel_values and input_ids"):
        model(pixel_values=images, return_loss=True)


def test_gradient_checkpointing_gives_the_same_gradients(tokenizer):
    torch.manual_seed(0)
    config = tiny_config(vocab_size=tokenizer.vocab_size, image_model_name="resnet18")
    # no dropout, so the two training-mode passes (checkpointing only acts in training mode) see the same function
    config.text_config.hidden_dropout_prob = config.text_config.attention_probs_dropout_prob = 0.0
    plain = ConvirtModel(config).train()
    checkpointed = ConvirtModel(config).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.set_grad_checkpointing(True)
    assert checkpointed.image_encoder.grad_checkpointing
    assert any(getattr(m, "gradient_checkpointing", False) for m in checkpointed.text_encoder.modules())
    batch = _batch(plain)
    plain(**batch, return_loss=True).loss.backward()
    checkpointed(**batch, return_loss=True).loss.backward()
    compared = 0
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
            compared += 1
    assert compared > 50
    checkpointed.set_grad_checkpointing(False)
    assert not checkpointed.image_encoder.grad_checkpointing


def test_processor_prepares_every_image_form(tokenizer):
    processor = ConvirtProcessor.from_tokenizer(tokenizer, image_size=32, resize_size=40)
    gradient16 = (np.linspace(0, 4095, 48 * 40).reshape(48, 40)).astype(np.uint16)  # 12-bit data, 16-bit container
    images = [
        Image.fromarray(np.full((48, 40), 128, dtype=np.uint8), mode="L"),
        Image.fromarray(gradient16),
        np.zeros((40, 48), dtype=np.uint8),
        torch.rand(1, 50, 40),
        Image.new("RGBA", (40, 40), (255, 0, 0, 0)),
    ]
    batch = processor(images=images, text=["the heart is enlarged .", "no pleural effusion"])
    assert batch["pixel_values"].shape == (5, 3, 32, 32)
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"].shape == batch["input_ids"].shape
    assert set(batch) >= {"pixel_values", "input_ids", "attention_mask"}
    # 16-bit data is windowed to the full 8-bit range, not truncated to its high byte
    converted = np.asarray(to_pil_rgb(Image.fromarray(gradient16)).convert("L"))
    assert converted.min() == 0 and converted.max() == 255
    # a fully transparent RGBA image flattens onto black
    assert np.asarray(to_pil_rgb(images[-1])).max() == 0


def test_processor_save_and_load(tokenizer, tmp_path):
    from transformers import AutoProcessor

    processor = ConvirtProcessor.from_tokenizer(tokenizer, image_size=32, resize_size=40)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "processing_convirt.py").is_file()
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, ConvirtProcessor)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 60), dtype=np.uint8), mode="L")
    reloaded, original = loaded(images=image)["pixel_values"], processor(images=image)["pixel_values"]
    # AutoProcessor may pick the other image backend (torchvision vs PIL) on some transformers 5.x releases: their
    # resampling differs by a few hundredths on isolated pixels, and by nothing on average.
    torch.testing.assert_close(reloaded, original, rtol=0, atol=0.05)
    assert (reloaded - original).abs().mean() < 1e-3


def test_processor_rejects_empty_calls_and_unknown_types(tokenizer):
    processor = ConvirtProcessor.from_tokenizer(tokenizer)
    with pytest.raises(ValueError, match="needs images, text, or both"):
        processor()
    with pytest.raises(TypeError, match="Unsupported image type"):
        processor(images=[{"not": "an image"}])


def _write_dicom(path, pixels, photometric, window=None):
    pydicom = __import__("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation = 0
    dataset.RescaleSlope, dataset.RescaleIntercept = 1, 0
    if window is not None:
        dataset.WindowCenter, dataset.WindowWidth = window
    dataset.PixelData = pixels.astype(np.uint16).tobytes()
    dataset.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).PhotometricInterpretation == photometric


def test_dicom_monochrome1_is_inverted_and_windowed(tmp_path):
    pytest.importorskip("pydicom")
    from convirt_hf.modeling.processing_convirt import read_dicom

    pixels = np.zeros((8, 8), dtype=np.uint16)
    pixels[:, 4:] = 4000  # right half: high raw values
    pixels[0, 0] = 1000
    _write_dicom(tmp_path / "mono2.dcm", pixels, "MONOCHROME2")
    _write_dicom(tmp_path / "mono1.dcm", pixels, "MONOCHROME1")
    _write_dicom(tmp_path / "windowed.dcm", pixels, "MONOCHROME2", window=(1000, 1000))

    mono2 = np.asarray(read_dicom(tmp_path / "mono2.dcm"))
    mono1 = np.asarray(read_dicom(tmp_path / "mono1.dcm"))
    assert mono2[0, 7] == 255 and mono2[1, 0] == 0  # high values bright
    np.testing.assert_array_equal(mono1, 255 - mono2)  # MONOCHROME1: high values are dark
    windowed = np.asarray(read_dicom(tmp_path / "windowed.dcm"))
    assert windowed[0, 0] == 128 and windowed[1, 0] == 0 and windowed[0, 7] == 255  # [500, 1500] -> [0, 255]
    # and the processor accepts the path directly
    assert to_pil_rgb(str(tmp_path / "mono1.dcm")).size == (8, 8)


def test_corpus_tokenizer_is_deterministic_and_covers_the_corpus():
    from convirt_hf.text_towers import corpus_wordpiece_tokenizer, small_bert_config

    corpus = ["The cardiac silhouette is enlarged.", "No pleural effusion or pneumothorax.",
              "The lungs are clear."] * 20
    tokenizer = corpus_wordpiece_tokenizer(corpus, vocab_size=300, min_frequency=2)
    again = corpus_wordpiece_tokenizer(list(reversed(corpus)), vocab_size=300, min_frequency=2)
    assert tokenizer.get_vocab() == again.get_vocab()  # same texts, same ids, whatever the order
    encoded = tokenizer("the cardiac silhouette is enlarged .")
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"]) == ["[CLS]", "the", "cardiac", "silhouette", "is",
                                                                     "enlarged", ".", "[SEP]"]
    spelled = tokenizer.convert_ids_to_tokens(tokenizer("cat")["input_ids"])  # unseen word: characters, never [UNK]
    assert spelled == ["[CLS]", "c", "##a", "##t", "[SEP]"]
    small = corpus_wordpiece_tokenizer(corpus, vocab_size=60, min_frequency=2)
    assert small.vocab_size <= 60 and "the" in small.get_vocab()  # the most frequent words make the cut
    with pytest.raises(ValueError, match="smaller than"):
        corpus_wordpiece_tokenizer(corpus, vocab_size=10)
    assert small_bert_config(tokenizer.vocab_size).vocab_size == tokenizer.vocab_size
