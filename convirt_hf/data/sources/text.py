"""Text as valid UTF-8: bytes that are not UTF-8 re-decoded (and counted as repairs), cell values as clean strings.

A stray cp1252 byte in one report must not make a whole file unreadable, nor reach the Arrow writer (which refuses
the lone surrogates that ``surrogateescape`` reads such bytes as): tables are read with ``surrogateescape`` and every
text value goes through :func:`fix_text` / :func:`repair_text` here, which say whether a repair was needed so that
the caller can count it.
"""

from __future__ import annotations

import codecs
import math
from typing import Any

_CP1252_ERRORS = "convirt-cp1252"
_ESCAPED_BYTES = "convirt-escaped-bytes"


def _cp1252_char(byte: int) -> str:
    try:
        return bytes([byte]).decode("cp1252")
    except UnicodeDecodeError:  # the five bytes cp1252 leaves undefined (0x81, 0x8D, 0x8F, 0x90, 0x9D): latin-1
        return chr(byte)


def _decode_invalid_as_cp1252(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return "".join(_cp1252_char(byte) for byte in error.object[error.start : error.end]), error.end


def _escaped_surrogates_to_bytes(error: UnicodeError) -> tuple[bytes, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    out = bytearray()
    for char in error.object[error.start : error.end]:
        code = ord(char)
        # U+DC80..U+DCFF is how `surrogateescape` carries an undecodable byte; any other lone surrogate (e.g. a "\ud83d"
        # escape in JSON) stands for nothing recoverable.
        out += bytes([code - 0xDC00]) if 0xDC80 <= code <= 0xDCFF else "\ufffd".encode()
    return bytes(out), error.end


codecs.register_error(_CP1252_ERRORS, _decode_invalid_as_cp1252)
codecs.register_error(_ESCAPED_BYTES, _escaped_surrogates_to_bytes)


def decode_bytes(data: bytes) -> tuple[str, bool]:
    """
    Decodes text bytes that should be UTF-8; returns ``(text, repaired)``.

    Valid UTF-8 sequences stay UTF-8 and only the bytes that are not valid UTF-8 are decoded as cp1252 (Windows text,
    the usual culprit; latin-1 for the five bytes cp1252 leaves undefined), so a cell with one stray cp1252 byte keeps
    its UTF-8 accents instead of turning into mojibake. Text with a UTF-16 byte-order mark is decoded as UTF-16. A
    UTF-8 byte-order mark is dropped. ``repaired`` is True when anything but plain UTF-8 was needed.
    """
    data = bytes(data)
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        pass
    if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        try:
            return data.decode("utf-16"), True
        except UnicodeDecodeError:
            pass
    return data.decode("utf-8", errors=_CP1252_ERRORS), True


def repair_text(value: str) -> tuple[str, bool]:
    """
    A string read with ``surrogateescape`` (its undecodable bytes carried as lone surrogates, which Arrow refuses) as
    valid text: the original bytes are recovered and decoded by :func:`decode_bytes`. Returns ``(text, repaired)``.
    """
    try:
        value.encode("utf-8")
        return value, False
    except UnicodeEncodeError:
        pass
    text, _ = decode_bytes(value.encode("utf-8", errors=_ESCAPED_BYTES))
    return text, True


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def to_str(value: Any) -> str | None:
    """A metadata value as a clean string (``10000032.0`` -> ``"10000032"``), ``None`` when empty."""
    if is_missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = decode_bytes(bytes(value))[0]
    return str(value).strip() or None


def fix_text(value: Any) -> tuple[str | None, bool]:
    """
    Text read from a file as valid UTF-8: bytes, or strings carrying undecodable bytes (read with
    ``surrogateescape``), go through :func:`decode_bytes`; returns ``(text, repaired)``.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, False
    if isinstance(value, (bytes, bytearray, memoryview)):
        return decode_bytes(bytes(value))
    return repair_text(str(value))


__all__ = ["decode_bytes", "fix_text", "is_missing", "repair_text", "to_str"]
