"""Text from devices (and the platform) made safe to print on a terminal.

A device id, topic, label or quarantine detail can hold anything a device chose to send,
including ESC sequences that recolour, move the cursor, retitle the window or hide what
follows, and bidirectional overrides that make text read backwards. ``printable`` shows
every such character as a visible escape (``\\x1b``, ``\\u202e``) instead, so what an
operator reads is what was received. Every command that prints device-supplied text passes
it through here.
"""

from __future__ import annotations

import unicodedata

__all__ = ["is_clean", "printable"]

# Unicode categories never printed as they are: controls (C0, DEL, C1: ESC, BEL, CSI...),
# formats (bidi overrides, zero-width characters), surrogates, private use, line and
# paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _unsafe(char: str) -> bool:
    if char < " ":  # fast path for the common case: ASCII controls
        return True
    if char <= "~":
        return False
    return char == "\x7f" or unicodedata.category(char) in _UNSAFE_CATEGORIES


def is_clean(text: str) -> bool:
    """True when ``text`` has no control, format or separator character (what ``printable`` would escape)."""
    if text.isascii():
        return text.isprintable()
    return not any(_unsafe(c) for c in text)


def printable(text, limit: int | None = None) -> str:
    """``text`` with every control, format and separator character shown as an escape, at most ``limit`` characters.

    Anything that is not a ``str`` (None, a number, bytes from an old row) is shown through
    ``str()`` first (bytes as UTF-8 with replacement characters). A cut text ends with "...".
    """
    if text is None:
        return ""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8", "replace")
    elif not isinstance(text, str):
        text = str(text)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    if is_clean(text):
        return text
    return "".join(_escape(c) if _unsafe(c) else c for c in text)
