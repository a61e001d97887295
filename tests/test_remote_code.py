"""A saved folder serves the model with trust_remote_code in an interpreter where convirt_hf cannot be imported."""

from __future__ import annotations

import json
import shutil

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from convirt_hf import ConvirtProcessor

from helpers import run_clean_python


def test_folder_loads_and_serves_pipelines_without_the_package(model, tokenizer, tmp_path, hf_home):
    model.eval()
    processor = ConvirtProcessor.from_tokenizer(tokenizer, image_size=32, resize_size=40)
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    processor.save_pretrained(saved)
    folder = tmp_path / "copied_elsewhere"  # a plain copy, as after a download
    shutil.copytree(saved, folder)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert set(auto_map) >= {"AutoConfig", "AutoModel", "AutoModelForZeroShotImageClassification"}
    assert "AutoProcessor" in json.loads((folder / "processor_config.json").read_text())["auto_map"]

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (48, 40), dtype=np.uint8), mode="L")
    image.save(tmp_path / "xray.png")
    sentences = ["the heart is enlarged .", "no pleural effusion .", "the lungs are clear ."]
    inputs = processor(images=[image, image.rotate(90)], text=sentences[:2])
    with torch.no_grad():
        expected = model(**inputs)
    save_file({k: v.contiguous() for k, v in inputs.items()}, tmp_path / "inputs.safetensors")

    result = run_clean_python(
        f"""
        import json, torch
        from safetensors.torch import load_file, save_file
        from transformers import AutoModel, AutoProcessor, pipeline

        folder = {str(folder)!r}
        model = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
        assert type(model).__name__ == "ConvirtModel", type(model)
        assert "convirt_hf" not in type(model).__module__, type(model).__module__
        inputs = load_file({str(tmp_path / "inputs.safetensors")!r})
        with torch.no_grad():
            outputs = model(**inputs)
        save_file({{"logits_per_image": outputs.logits_per_image.contiguous(),
                    "image_embeds": outputs.image_embeds.contiguous()}}, {str(tmp_path / "outputs.safetensors")!r})

        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        assert type(processor).__name__ == "ConvirtProcessor", type(processor)
        again = processor(images=[{str(tmp_path / "xray.png")!r}], text=["the heart is enlarged ."])
        assert again["pixel_values"].shape == (1, 3, 32, 32), again["pixel_values"].shape

        classifier = pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)
        scores = classifier({str(tmp_path / "xray.png")!r}, candidate_labels={sentences!r}, hypothesis_template="{{}}")
        extractor = pipeline("image-feature-extraction", model=folder, trust_remote_code=True)
        features = extractor({str(tmp_path / "xray.png")!r})
        print(json.dumps({{"scores": scores, "features_shape": list(torch.tensor(features).shape)}}))
        """,
        hf_home=tmp_path / "clean_hf_home",
        cwd=tmp_path,
    )
    actual = load_file(tmp_path / "outputs.safetensors")
    torch.testing.assert_close(actual["logits_per_image"], expected.logits_per_image, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(actual["image_embeds"], expected.image_embeds, rtol=1e-5, atol=1e-6)

    report = json.loads(result.stdout.strip().splitlines()[-1])
    scores = report["scores"]
    assert sorted(entry["label"] for entry in scores) == sorted(sentences)
    assert abs(sum(entry["score"] for entry in scores) - 1.0) < 1e-4
    # the pipeline's scores are this model's softmaxed logits_per_image for the saved PNG
    with torch.no_grad():
        direct = model(**processor(images=[Image.open(tmp_path / "xray.png")], text=sentences)).logits_per_image
    expected_scores = dict(zip(sentences, direct.softmax(dim=-1)[0].tolist()))
    for entry in scores:
        assert abs(entry["score"] - expected_scores[entry["label"]]) < 2e-3, (entry, expected_scores)
    assert report["features_shape"] == [1, model.config.projection_dim]
