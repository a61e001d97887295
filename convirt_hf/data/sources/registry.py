"""The kinds of data source, by name: each reader registers itself here, and the pipeline only looks kinds up.

A kind is a builder (path and options in, a :class:`~convirt_hf.data.sources.base.PairSource` out) with what
:func:`~convirt_hf.data.sources.load_pairs` needs to know about it: the options it accepts, whether it reads the
generic column names, and how :func:`detect_kind` recognises it. Adding a source is one module that defines a
:class:`~convirt_hf.data.sources.base.PairSource` and decorates its builder::

    @register_source("my-corpus", options=("image_root",), detect=lambda path, names: "my-index.csv" in names,
                     looks_for="my-index.csv")
    def build_my_corpus(source, *, split, columns, report_mode, image_root=None):
        return MyCorpusSource(Path(source).expanduser(), split=split, image_root=image_root)

(the built-in kinds are registered by the modules of this package; a new module must be imported once, e.g. from
the package's ``__init__``, before its kind can be named).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .tables import MANIFEST_SUFFIXES

# Suffixes that mark a string as a file name, never a Hub id (a missing local file must not become a Hub lookup).
_LOCAL_SUFFIXES = MANIFEST_SUFFIXES + (".gz", ".arrow", ".txt", ".xml", ".zip", ".tar", ".tgz", ".png", ".jpg",
                                       ".jpeg", ".dcm", ".json.gz")

# detect(path, names): `names` are a folder's entries (empty for a file), listed once for all the kinds tried
Detector = Callable[[Path, frozenset], bool]


@dataclass(frozen=True)
class SourceKind:
    """One registered kind of data source (see :func:`register_source` for each field)."""

    name: str
    build: Callable[..., Any]
    options: tuple[str, ...] = ()
    generic: bool = False
    detect: Detector | None = None
    fallback: bool = False
    looks_for: str | None = None
    detect_id: Callable[[str], bool] | None = None
    no_views: str | None = None
    open_dataset: Callable[[Path, str | None], Any] | None = None


_REGISTRY: dict[str, SourceKind] = {}


def register_source(
    name: str,
    *,
    options: tuple[str, ...] = (),
    generic: bool = False,
    detect: Detector | None = None,
    fallback: bool = False,
    looks_for: str | None = None,
    detect_id: Callable[[str], bool] | None = None,
    no_views: str | None = None,
    open_dataset: Callable[[Path, str | None], Any] | None = None,
) -> Callable:
    """
    Registers a kind of data source; used as a decorator on its builder, which is returned unchanged.

    Args:
        name: the kind's name (``kind=`` of :func:`~convirt_hf.data.sources.load_pairs`, ``--kind`` of preprocess).
        options: the keyword options the builder accepts besides the common ones; any other is refused with a
            ``TypeError`` before anything is read.
        generic: the kind reads the generic column names (``image_column=``, ``text_column=``, ...); other kinds
            have their columns fixed by their layout and refuse them.
        detect: ``detect(path, names) -> bool`` recognises an existing file or folder of this kind for
            ``kind="auto"`` (`names` holds a folder's entry names, and is empty for a file).
        fallback: `detect` accepts anything of a broad shape (any table file, any folder of data files), so it is
            tried only after every kind that is not a fallback. Kinds are otherwise tried in registration order.
        looks_for: what `detect` looks for in a folder, named in the error when no kind recognises one.
        detect_id: ``detect_id(text) -> bool`` recognises a source named by an id rather than a local path (a Hub
            dataset id); only asked for names that do not look like local paths.
        no_views: set for a kind without per-image views: the message refusing ``views=``.
        open_dataset: for kinds stored as a `datasets.Dataset` (a ``save_to_disk`` folder): opens the folder's
            `split`, so that a dataset already in the record shape is returned as it is.

    Returns:
        A decorator taking the builder: ``build(source, *, split, columns, report_mode, **options)`` returning a
        :class:`~convirt_hf.data.sources.base.PairSource` (it raises ``FileNotFoundError`` or ``ValueError`` for a
        bad path or option before any row is read).
    """

    def register(build: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"a data source kind named {name!r} is already registered")
        _REGISTRY[name] = SourceKind(name=name, build=build, options=tuple(options), generic=generic, detect=detect,
                                     fallback=fallback, looks_for=looks_for, detect_id=detect_id, no_views=no_views,
                                     open_dataset=open_dataset)
        return build

    return register


def source_kinds() -> tuple[str, ...]:
    """The names of the registered kinds, in registration order."""
    return tuple(_REGISTRY)


def source_kind(name: str) -> SourceKind:
    """
    The registered kind `name`.

    Raises:
        ValueError: no kind has that name (the message lists them).
    """
    if name not in _REGISTRY:
        raise ValueError(f"kind must be one of {source_kinds()} or 'auto', got {name!r}")
    return _REGISTRY[name]


def looks_like_local_path(source: str | os.PathLike) -> bool:
    """
    Whether `source` is meant as a local path rather than a Hub id: it has a file suffix this package knows, starts
    with ``./``, ``../``, ``/`` or ``~``, contains a backslash, or has more than one ``/`` (Hub ids are ``name`` or
    ``org/name``).
    """
    if isinstance(source, os.PathLike):
        return True
    text = str(source)
    return (text.lower().endswith(_LOCAL_SUFFIXES) or text.startswith((".", "/", "~")) or "\\" in text
            or text.count("/") > 1)


def _detection_order() -> list[SourceKind]:
    """The kinds that recognise only their own layout first, in registration order; the broad fallbacks last."""
    return [kind for kind in _REGISTRY.values() if not kind.fallback] + [
        kind for kind in _REGISTRY.values() if kind.fallback]


def detect_kind(source: str | os.PathLike) -> str:
    """
    Guesses the kind of a source from its path (see :func:`source_kinds`).

    Raises:
        ValueError: a local path whose kind cannot be told.
        FileNotFoundError: a path that does not exist (anything that looks like a local path, see
            :func:`looks_like_local_path`, is never taken for a Hub dataset id).
    """
    path = Path(source).expanduser()
    if path.is_file() or path.is_dir():
        names = frozenset(child.name for child in path.iterdir()) if path.is_dir() else frozenset()
        for kind in _detection_order():
            if kind.detect is not None and kind.detect(path, names):
                return kind.name
        if path.is_file():
            raise ValueError(f"{path}: cannot tell what kind of source this file is; pass kind= (one of "
                             f"{source_kinds()})")
        hints = [kind.looks_for for kind in _detection_order() if kind.looks_for]
        looked_for = ", ".join(hints[:-1]) + (" and " if len(hints) > 1 else "") + (hints[-1] if hints else "")
        raise ValueError(f"{path}: cannot tell what kind of source this folder is (looked for {looked_for}); pass "
                         f"kind= (one of {source_kinds()})")
    if looks_like_local_path(source):
        raise FileNotFoundError(f"{source}: no such file or folder (looked for {path.resolve()})")
    for kind in _REGISTRY.values():
        if kind.detect_id is not None and kind.detect_id(str(source)):
            return kind.name
    raise FileNotFoundError(f"{source}: no such file or folder (and not a Hub dataset id)")


__all__ = ["SourceKind", "detect_kind", "looks_like_local_path", "register_source", "source_kind", "source_kinds"]
