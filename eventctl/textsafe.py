"""Text from events, made safe to put on a terminal.

`visible` is for human output: every character a terminal could act on or hide (Unicode
categories Cc, Cf, Zl, Zp, and lone surrogates, which cannot be written at all) is shown
as a Python-style escape, so `ESC [31m` prints as `\\x1b[31m`, and a tab or a newline as
`\\t` / `\\n`, keeping one event on one line. `json_text` is for JSON output: the same value,
with the characters that `ensure_ascii=False` would leave raw but a terminal acts on (C1
controls, U+2028, U+2029) written as `\\uXXXX`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
_JSON_UNSAFE = re.compile("[\x80-\x9f\u2028\u2029\ud800-\udfff]")


def _escape(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def visible(text: str) -> str:
    """`text` with control, format and line/paragraph separator characters escaped."""
    if text.isprintable():  # isprintable() is False for every unsafe character
        return text
    return "".join(
        _escape(ch) if unicodedata.category(ch) in UNSAFE_CATEGORIES else ch for ch in text
    )


def json_text(value: Any, *, indent: int | None = None) -> str:
    """`json.dumps(value, ensure_ascii=False)`, with C1 controls, U+2028 and U+2029 (and
    lone surrogates) as `\\uXXXX` escapes: the identical JSON value, safe on a terminal."""
    text = json.dumps(value, ensure_ascii=False, indent=indent)
    # outside strings JSON text is ASCII, so every match is inside a string
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
