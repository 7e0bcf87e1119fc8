"""The error every codec raises."""

from __future__ import annotations


class CodecError(ValueError):
    """A frame a codec cannot encode or decode; ``reason`` is a short code to count by."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
