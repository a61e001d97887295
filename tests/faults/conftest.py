"""Fixtures of the fault suite: a tiny synthetic corpus, the fork server, and the uninterrupted reference run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

FAULTS_DIR = Path(__file__).resolve().parent
if str(FAULTS_DIR) not in sys.path:
    sys.path.insert(0, str(FAULTS_DIR))

from faultkit import CRASH_RUN, Zygote, tiny_args  # noqa: E402


@pytest.fixture(scope="session")
def fault_corpus(tmp_path_factory) -> Path:
    """tests/test_pretrain.py's tiny corpus: 64 pretraining pairs of 48 px, 16 for validation, a small retrieval set."""
    from convirt_hf.data.synthetic import SyntheticCorpusConfig, generate_synthetic_corpus

    config = SyntheticCorpusConfig(seed=0, image_size=48, num_pretrain=64, num_validation=16, num_cls_train=0,
                                   num_cls_val=0, num_cls_test=0, retrieval_candidates_per_category=6,
                                   retrieval_queries_per_category=1)
    return generate_synthetic_corpus(tmp_path_factory.mktemp("fault-corpus") / "synthetic", config)


@pytest.fixture(scope="session")
def zygote(tmp_path_factory):
    server = Zygote(tmp_path_factory.mktemp("zygote-logs"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def reference_run(fault_corpus, zygote, tmp_path_factory) -> Path:
    """The crash tests' run, uninterrupted: what every interrupted and resumed run must end with, bit for bit."""
    output_dir = tmp_path_factory.mktemp("reference") / "run"
    zygote.run(tiny_args(fault_corpus, output_dir, **CRASH_RUN), name="reference")
    return output_dir
