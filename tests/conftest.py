"""Shared test setup: offline by construction, tiny generated models and tokenizers."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Before anything imports huggingface_hub/transformers/datasets: no network, and caches in a throwaway folder.
_HF_HOME = tempfile.mkdtemp(prefix="convirt-test-hf-home-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import build_tokenizer, tiny_config  # noqa: E402  (tests/ is on pytest's pythonpath)


@pytest.fixture(scope="session")
def hf_home() -> Path:
    return Path(_HF_HOME)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """The pretraining tests' corpus: 64 synthetic pairs of 48 px, 16 for validation, a 6 x 8 + 8 retrieval set."""
    from convirt_hf.data.synthetic import SyntheticCorpusConfig, generate_synthetic_corpus

    config = SyntheticCorpusConfig(seed=0, image_size=48, num_pretrain=64, num_validation=16, num_cls_train=0,
                                   num_cls_val=0, num_cls_test=0, retrieval_candidates_per_category=6,
                                   retrieval_queries_per_category=1)
    return generate_synthetic_corpus(tmp_path_factory.mktemp("tiny-corpus") / "synthetic", config)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A WordPiece tokenizer with a small in-test vocabulary, saved like a Hub tokenizer folder."""
    path = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture()
def config(tokenizer):
    return tiny_config(vocab_size=tokenizer.vocab_size)


@pytest.fixture()
def model(config):
    from convirt_hf import ConvirtModel

    torch.manual_seed(0)
    return ConvirtModel(config)
