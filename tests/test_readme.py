"""The README's usage example runs as written, with its two Hub tower ids pointed at local folders."""

from __future__ import annotations

import re
from pathlib import Path

import timm
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _readme_example() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    match = re.search(r"<!-- readme-example:.*?-->\s*```python\n(.*?)```", readme, flags=re.S)
    assert match, "README has no marked example block"
    return match.group(1)


def test_readme_example_runs(tmp_path, tokenizer, monkeypatch):
    from timm.models import save_for_hf
    from transformers import BertConfig, BertModel

    code = _readme_example()
    assert 'image="resnet50.tv_in1k"' in code and '"emilyalsentzer/Bio_ClinicalBERT"' in code

    image_tower = tmp_path / "resnet50_local"
    save_for_hf(timm.create_model("resnet50", num_classes=0), str(image_tower), safe_serialization=True)
    text_tower = tmp_path / "bert_local"
    BertModel(
        BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=6, num_attention_heads=2,
                   intermediate_size=64, max_position_embeddings=128),
        add_pooling_layer=False,
    ).save_pretrained(text_tower)
    tokenizer.save_pretrained(text_tower)

    code = code.replace('"resnet50.tv_in1k"', repr(str(image_tower)))
    code = code.replace('"emilyalsentzer/Bio_ClinicalBERT"', repr(str(text_tower)))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)

    assert namespace["outputs"].logits_per_image.shape == (2, 2)
    assert torch.isfinite(namespace["outputs"].loss)
    assert namespace["image_embeddings"].shape == (2, 512)
    assert (tmp_path / "convirt-demo" / "model.safetensors").is_file()
    assert (tmp_path / "convirt-demo" / "processor_config.json").is_file()
