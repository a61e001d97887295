"""Every data source as a `datasets.Dataset` in the shared record shape, with bad rows counted, never silent.

:func:`load_pairs` is the one entry point. A *source* (a small picklable object, :class:`PairSource`) reads its files
and yields :class:`Candidate` rows: an image reference, the raw report, labels and ids. One pipeline,
:func:`finish_candidate`, turns each candidate into a record or a counted skip:

1. rows the caller filtered out on purpose (``views=``, ``split=``) are counted as *filtered*, not as errors;
2. text is made valid UTF-8: bytes that are not UTF-8 (read with ``surrogateescape`` from a table, or raw report
   bytes) are re-decoded as cp1252 one invalid byte at a time, so valid UTF-8 around them is kept
   (:func:`decode_bytes`), in every column (``report_cp1252``, ``metadata_cp1252``, ``image_path_cp1252`` repairs),
   never crashing the Arrow writer; the report is then reduced to FINDINGS + IMPRESSION by
   :func:`~convirt_hf.data.reports.prepare_report`; empty, too short (< ``min_tokens``) or section-less reports are
   skipped as ``empty_report``, ``short_report`` or ``no_findings_impression``;
3. with ``check_images=True`` the image is opened and fully decoded by :func:`~convirt_hf.data.images.load_image`;
   unreadable images are skipped under their reason (``missing_file``, ``zero_byte``, ``truncated``, ``corrupt``,
   ``too_large``, ...); repaired images (16-bit, alpha, palette) are kept *as their repaired 8-bit PNG*, so training
   decodes exactly the pixels that were checked.

Records stream into an Arrow file through ``Dataset.from_generator``: memory stays bounded whatever the corpus size.
Worker processes (``num_proc``) each keep a ledger that is merged into the returned one, so counts are exact; they also
report their progress (one bar per load) and, in strict mode, the first bad row, through small files that the main
process reads (an exception pickled back from a worker loses its cause).

Kinds: ``manifest`` (a CSV/TSV/JSONL/parquet file of image paths, relative to the file, and report text),
``imagefolder`` (a folder with ``metadata.jsonl`` or ``metadata.csv`` and a ``file_name`` column), ``hub`` (a Hub
dataset id, or a local dataset folder, through ``datasets.load_dataset(..., streaming=True)``), ``disk`` (a
``save_to_disk`` folder; returned as it is when it already has the record columns), ``mimic-cxr``, ``chexpert-plus``
and ``openi`` (see :mod:`.mimic_cxr`, :mod:`.chexpert_plus`, :mod:`.openi`).

The package's rooms: :mod:`.text` (text repair), :mod:`.tables` and :mod:`.labels` (table files, label cells),
:mod:`.base` (candidates, ledger, the reader base class), :mod:`.registry` (the kinds by name, and detection),
:mod:`.generic` (the generic kinds), the three corpus adapters, :mod:`.checks` (candidate to record),
:mod:`.workers` (the worker loop, progress and ledgers across processes) and :mod:`.pipeline` (:func:`load_pairs`).
A new kind is a module that registers its builder with :func:`register_source` (see :mod:`.registry`).
"""

from __future__ import annotations

from ..skips import RowRepairs
from .base import REPORT_REASONS, Candidate, PairLedger, PairOptions, PairSource, ReportProblem, in_shard
from .checks import finish_candidate, report_problem
from .labels import (
    binary_value,
    check_binary_columns,
    class_label_names,
    decode_class_labels,
    label_names,
    labels_from_row,
    positive_label_columns,
)
from .pipeline import REPORT_MODES, build_source, check_kind_options, load_pairs
from .registry import SourceKind, detect_kind, looks_like_local_path, register_source, source_kind, source_kinds
from .tables import (
    COLUMN_SCAN_ROWS,
    MANIFEST_SUFFIXES,
    UnreadableRow,
    check_columns,
    iter_table_rows,
    iter_table_rows_lenient,
    read_header,
)
from .text import decode_bytes, fix_text, is_missing, repair_text, to_str
from .workers import (
    DEFAULT_WRITER_BATCH_SIZE,
    ProgressMonitor,
    ShardProgress,
    build_dataset,
    datasets_progress_bars,
    merge_ledger_files,
    run_shards,
    strict_error_from_files,
    write_ledger_file,
)

# The generic kinds register first, then the corpus adapters: registration order is the order of `KINDS`.
from .generic import HUB_SCAN_ROWS, ColumnMap, DatasetSource, HubSource, TableSource, candidate_from_row  # isort: skip
from .mimic_cxr import MimicCxrSource  # isort: skip
from .chexpert_plus import ChexpertPlusSource  # isort: skip
from .openi import OpenISource  # isort: skip

# The built-in kinds, as constants for the code that names them; `source_kinds()` also lists kinds registered later.
KINDS = source_kinds()
GENERIC_KINDS = tuple(kind for kind in KINDS if source_kind(kind).generic)
# The options each kind accepts besides the generic column names (which only the generic kinds use).
KIND_OPTIONS = {kind: source_kind(kind).options for kind in KINDS}

__all__ = [
    "COLUMN_SCAN_ROWS",
    "DEFAULT_WRITER_BATCH_SIZE",
    "GENERIC_KINDS",
    "HUB_SCAN_ROWS",
    "KINDS",
    "KIND_OPTIONS",
    "MANIFEST_SUFFIXES",
    "REPORT_MODES",
    "REPORT_REASONS",
    "Candidate",
    "ChexpertPlusSource",
    "ColumnMap",
    "DatasetSource",
    "HubSource",
    "MimicCxrSource",
    "OpenISource",
    "PairLedger",
    "PairOptions",
    "PairSource",
    "ProgressMonitor",
    "ReportProblem",
    "RowRepairs",
    "ShardProgress",
    "SourceKind",
    "TableSource",
    "UnreadableRow",
    "binary_value",
    "build_dataset",
    "build_source",
    "candidate_from_row",
    "check_binary_columns",
    "check_columns",
    "check_kind_options",
    "class_label_names",
    "datasets_progress_bars",
    "decode_bytes",
    "decode_class_labels",
    "detect_kind",
    "finish_candidate",
    "fix_text",
    "in_shard",
    "is_missing",
    "iter_table_rows",
    "iter_table_rows_lenient",
    "label_names",
    "labels_from_row",
    "load_pairs",
    "looks_like_local_path",
    "merge_ledger_files",
    "positive_label_columns",
    "read_header",
    "register_source",
    "repair_text",
    "report_problem",
    "run_shards",
    "source_kind",
    "source_kinds",
    "strict_error_from_files",
    "to_str",
    "write_ledger_file",
]
