"""ConVIRT pretraining as a library: `pretrain(model_args, data_args, training_args)` from Python, and the same run
behind `accelerate launch training/pretrain.py`.

Rooms: `arguments` (the three argument dataclasses and their checks), `towers` (text tower, tokenizer, model), `data`
(corpus, loaders, device views), `loop` (the training loop, one function per phase), `state` (the run folder, step
counters, resume), `export` (best model, final folder, card), `failures` (errors that end a run with one line), `api`
(`pretrain` and its setup phases).
"""

from .api import build_accelerator, pretrain
from .arguments import DataArguments, ModelArguments, PretrainingArguments
from .export import summary_paragraph
from .failures import NonFiniteTrainingError, ProcessGroupError

__all__ = [
    "DataArguments",
    "ModelArguments",
    "NonFiniteTrainingError",
    "PretrainingArguments",
    "ProcessGroupError",
    "build_accelerator",
    "pretrain",
    "summary_paragraph",
]
