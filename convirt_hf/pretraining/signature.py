"""What a pretraining run learned from, so that a finished run folder is reused only for what it really is.

A run's *training signature* is every argument that changes what it learns (the towers, the loss, the data and its
views, the optimisation, the seed) and a digest of the corpus, but not where it writes, how often it logs or
checkpoints, or how fast it runs. `pretrain` records it in `training_args.json`; `signature_differences` says how a
folder's recorded signature differs from the one a table needs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from .arguments import DataArguments, ModelArguments, PretrainingArguments

__all__ = ["corpus_digest", "signature_differences", "training_signature"]

# Arguments that leave what a run learns unchanged: output, bookkeeping, speed (numerically near-equivalent paths).
NOT_LEARNED = frozenset({
    "output_dir", "overwrite_output_dir", "resume", "logging_steps", "save_steps", "save_total_limit", "report_to",
    "push_to_hub", "hub_private", "ddp_timeout", "num_workers", "image_cache_mb", "cache_dir", "torch_compile",
    "gradient_checkpointing", "channels_last",
})


def corpus_digest(data_args: DataArguments) -> str:
    """
    A digest naming the training corpus: the synthetic corpus's configuration digest (its content is a function of
    it), or the `datasets` fingerprints of a dataset folder's splits.
    """
    if data_args.dataset is None:
        from convirt_hf.data.synthetic import SyntheticCorpusConfig

        config = SyntheticCorpusConfig(seed=data_args.synthetic_seed, num_pretrain=data_args.synthetic_pretrain_size)
        return f"synthetic:{config.digest()}"
    folder = Path(data_args.dataset).expanduser()
    fingerprints = []
    for state in sorted(folder.glob("**/state.json")):
        try:
            fingerprints.append(f"{state.parent.relative_to(folder)}={json.loads(state.read_text())['_fingerprint']}")
        except (OSError, ValueError, KeyError):
            fingerprints.append(f"{state.parent.relative_to(folder)}=unreadable")
    return "dataset:" + hashlib.sha256("\n".join(fingerprints).encode()).hexdigest()[:16]


def training_signature(model_args: ModelArguments, data_args: DataArguments,
                       training_args: PretrainingArguments) -> dict:
    """The settings that determine what a run learns (see the module docstring), with the corpus digest."""
    signature = {"corpus": corpus_digest(data_args)}
    for arguments in (model_args, data_args, training_args):
        for name, value in dataclasses.asdict(arguments).items():
            if name not in NOT_LEARNED:
                signature[name] = value
    return json.loads(json.dumps(signature))  # as training_args.json holds it: tuples as lists


def signature_differences(recorded: dict | None, expected: dict) -> list[str]:
    """How a recorded signature differs from the expected one, one "name: recorded X, needed Y" line per field."""
    if recorded is None:
        return ["no training signature recorded (a run from an older version, or not written by pretrain)"]
    return [f"{name}: recorded {recorded.get(name, '<absent>')!r}, needed {value!r}"
            for name, value in expected.items() if recorded.get(name, "<absent>") != value]
