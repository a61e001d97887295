"""Fixtures of the fault suite: a tiny synthetic corpus, the fork server, and the uninterrupted reference run."""

from __future__ import annotations

from pathlib import Path

import pytest

from faultkit import CRASH_RUN, Zygote, tiny_args  # tests/faults is on pytest's pythonpath


@pytest.fixture(scope="session")
def zygote(tmp_path_factory):
    server = Zygote(tmp_path_factory.mktemp("zygote-logs"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def reference_run(tiny_corpus, zygote, tmp_path_factory) -> Path:
    """The crash tests' run, uninterrupted: what every interrupted and resumed run must end with, bit for bit."""
    output_dir = tmp_path_factory.mktemp("reference") / "run"
    zygote.run(tiny_args(tiny_corpus, output_dir, **CRASH_RUN), name="reference")
    return output_dir
