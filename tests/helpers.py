"""Builders shared by tests (tiny models, a generated tokenizer, a clean-interpreter runner, source folders)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

WORDS = """
the a an of and or no with without is are there be seen at in on to left right bilateral mild moderate severe small
large new stable unchanged heart cardiac silhouette size enlarged normal cardiomegaly lung lungs clear pleural effusion
effusions pneumothorax pneumonia consolidation opacity opacities atelectasis edema pulmonary vascular congestion
fracture rib ribs osseous structures intact acute process finding findings impression base bases lobe upper lower
mediastinal contours hilar chest radiograph pa ap lateral view support devices tube line catheter clinically
significant radiographic abnormalities cardiopulmonary abnormality this photo of not identified evidence focal
""".split()


def build_tokenizer():
    """A BERT WordPiece tokenizer over a small radiology vocabulary plus characters, built offline."""
    import string

    from convirt_hf.text_towers import bert_tokenizer_from_vocab

    characters = list(string.ascii_lowercase + string.digits + string.punctuation)
    subwords = [f"##{c}" for c in string.ascii_lowercase + string.digits]
    return bert_tokenizer_from_vocab(WORDS + characters + subwords)


def tiny_config(vocab_size: int = 200, **overrides):
    """A ConvirtConfig small enough for CPU tests: timm's test_resnet and a 2-layer BERT."""
    from convirt_hf import ConvirtConfig

    values = dict(
        image_model_name="test_resnet",
        image_size=32,
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
        frozen_text_layers=1,
        projection_dim=16,
    )
    values.update(overrides)
    return ConvirtConfig(**values)


# A clean interpreter in which `convirt_hf` cannot be imported even though it is installed in the environment, so
# that only the code saved next to the weights (trust_remote_code) can serve the model.
BLOCK_CONVIRT_HF = textwrap.dedent(
    """
    import importlib.abc, sys

    class _BlockConvirtHf(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "convirt_hf" or name.startswith("convirt_hf."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, _BlockConvirtHf())
    try:
        import convirt_hf  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("convirt_hf is importable: the test would not exercise remote code")
    """
)


def run_clean_python(code: str, hf_home: Path, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter with convirt_hf blocked, offline, with HF_HOME under `hf_home`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONPATH="",
        TOKENIZERS_PARALLELISM="false",
    )
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_CONVIRT_HF + textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,  # transformers asks "run the custom code? [y/N]" on a terminal: answer nothing
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"clean subprocess failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


class FakeHfApi:
    """
    Stands in for `huggingface_hub.HfApi` in publishing tests: records every call (method name and keyword
    arguments) and "uploads" by copying the folder under `remote_root/<namespace>__<name>/<revision>`, so tests can
    inspect exactly what a repo would receive. Any method it does not define raises, so an unexpected call fails.
    """

    def __init__(self, remote_root: Path, token: str | None = None):
        self.remote_root = Path(remote_root)
        self.token = token
        self.calls: list[tuple[str, dict]] = []
        self.heads: dict[tuple[str, str | None], str] = {}  # (repo, revision) -> the last commit's id

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))
        return f"https://huggingface.co/{kwargs['repo_id']}"

    def create_branch(self, **kwargs):
        self.calls.append(("create_branch", kwargs))

    def repo_info(self, **kwargs):
        from types import SimpleNamespace

        self.calls.append(("repo_info", kwargs))
        return SimpleNamespace(sha=self.heads.get((kwargs["repo_id"], kwargs.get("revision")), "initial0"))

    def upload_folder(self, **kwargs):
        import hashlib
        import shutil
        from types import SimpleNamespace

        self.calls.append(("upload_folder", kwargs))
        remote = self.remote(kwargs["repo_id"], kwargs.get("revision"))
        remote.parent.mkdir(parents=True, exist_ok=True)
        # a second upload to the same repo lands on top of the first, as a new commit would
        shutil.copytree(kwargs["folder_path"], remote, dirs_exist_ok=True)
        content = hashlib.sha256()
        for path in sorted(p for p in remote.rglob("*") if p.is_file()):
            content.update(str(path.relative_to(remote)).encode() + b"\0" + path.read_bytes())
        head_key = (kwargs["repo_id"], kwargs.get("revision"))
        # as the Hub does: an upload that changes nothing makes no commit and answers with the head
        self.heads[head_key] = oid = content.hexdigest()[:12]
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/{oid}", oid=oid)

    def remote(self, repo_id: str, revision: str | None = None) -> Path:
        return self.remote_root / repo_id.replace("/", "__") / (revision or "main")

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def read_log(output_dir: Path) -> list[dict]:
    """The rows of a run's train_log.jsonl (none when it has not written one)."""
    import json

    path = Path(output_dir) / "train_log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def tiny_args(corpus: Path, output_dir: Path, **overrides) -> list[str]:
    """training/pretrain.py arguments for CPU tests: test_resnet, a 1-layer BERT from scratch, 32 px, batches of 8,
    12 steps."""
    values = {
        "dataset": corpus, "retrieval_set": corpus, "output_dir": output_dir, "image_model_name": "test_resnet",
        "text_tower": "scratch", "text_layers": 1, "text_hidden_size": 32, "text_vocab_size": 300, "projection_dim": 32,
        "image_size": 32,
        "per_device_batch_size": 8, "max_steps": 12, "eval_steps": 6, "save_steps": 4, "logging_steps": 1,
        "report_to": "none", "learning_rate": 1e-3, "max_length": 32,
    }
    values.update(overrides)
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Open-i's fixture reports (tests/fixtures/openi) name these images; CXR2_IM-0652-2001 is listed in 2.xml but missing
OPENI_IMAGES = ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001", "CXR2_IM-0652-1001", "CXR3_IM-1384-1001",
                "CXR4_IM-2050-1001"]


def write_image(path: Path, seed: int, fmt: str | None = None) -> None:
    """A small random 8-bit grayscale image (20 x 16) at `path`."""
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 16), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


def openi_tree(tmp_path: Path) -> Path:
    """Open-i's public layout (ecgen-radiology XML reports, NLMCXR_png images) under `tmp_path`/openi."""
    import shutil

    root = tmp_path / "openi"
    shutil.copytree(FIXTURES / "openi", root)
    for index, image_id in enumerate(OPENI_IMAGES):
        write_image(root / "NLMCXR_png" / f"{image_id}.png", seed=index, fmt="PNG")
    return root
