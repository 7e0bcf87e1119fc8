"""Log lines for journald and for a central log collector, with secrets kept out.

``text`` (the default) is one human line per record; journald adds its own time stamp and
unit. ``json`` is one JSON object per line (time, level, logger, message, and the exception
when there is one), which Loki, Elasticsearch/Fluent Bit and Vector take as they are.
Whatever the format, the configured secrets (uplink token, MQTT password) are replaced by
``***`` in every record, whoever logs it.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys

import orjson

from edge.redact import redact_text

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return orjson.dumps(line).decode()


class RedactSecrets(logging.Filter):
    """Replaces each secret by *** in the record's message (after its arguments are merged in)."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)  # any scheme://user:password@ in a URL, whatever its length
        for secret in self.secrets:
            redacted = redacted.replace(secret, "***")
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
            for secret in self.secrets:
                record.exc_text = record.exc_text.replace(secret, "***")
        return True


def setup(level: str = "info", fmt: str = "text", secrets: list[str] | None = None) -> None:
    """Configure the root logger: one handler on stderr (journald takes stderr under systemd)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RedactSecrets(secrets or []))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
