"""The health summary the gateway sends to the platform (docs/uplink.md, "Health summary (contract version 1)").

One small JSON object for the platform's fleet page: when the gateway made it (its clock, so
the platform can tell the clock skew), when it started, its backlog, the rule files it runs
and those it refused, the state of each part, its software version. The uplink sender sends
it every ``[uplink] health_interval`` seconds (uplink/sender.py).

``RuleFiles`` is where the rule files' side is kept: the agent says what it loaded (and which
local files a reload refused), the downlink which pushed files it refused or applied; the
sender's thread reads it. Safe to use from any thread.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from edge import __version__
from edge.engine.rules import Problem, version
from edge.orders.book import iso
from edge.outbox import unsent

if TYPE_CHECKING:
    from edge.supervisor import Health

__all__ = ["VERSION", "RuleFiles", "health_summary"]

VERSION = 1  # the contract's version; a new field that old platforms can ignore does not change it
REFUSED_KEPT = 20  # refused rule files listed, the newest
DETAIL_CHARS = 500  # of each refusal's detail
NAME_CHARS = 200  # of a refused file's name (a platform may push any text as a name)


class RuleFiles:
    """The rule files the gateway runs (version, names) and those refused since start that still are."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version = ""
        self._files: list[str] = []
        # file name -> (where it was refused: "platform" or "local", the refusal as sent)
        self._refused: OrderedDict[str, tuple[str, dict]] = OrderedDict()

    @staticmethod
    def version_of(paths: list[Path]) -> tuple[str, list[str]]:
        """What ``loaded`` takes: read before the files are loaded, so a change after it makes a reload."""
        return version(paths)

    def loaded(self, files: tuple[str, list[str]]) -> None:
        """The rules from ``files`` (``version_of``) run now: local files refused earlier are no longer refused."""
        with self._lock:
            self._version, self._files = files[0], list(files[1])
            for name in [name for name, (where, _) in self._refused.items() if where == "local"]:
                del self._refused[name]

    def refused(self, file: str, reason: str, detail: str, at: float | None = None, where: str = "platform") -> None:
        """A rule file was refused (pushed by the platform, or edited on the gateway: ``where`` = "local")."""
        file = file[:NAME_CHARS]
        entry = {"file": file, "reason": reason, "detail": detail[:DETAIL_CHARS],
                 "at": iso(time.time() if at is None else at)}
        with self._lock:
            self._refused.pop(file, None)
            self._refused[file] = (where, entry)
            while len(self._refused) > REFUSED_KEPT:
                self._refused.popitem(last=False)

    def refused_locally(self, problems: list[Problem]) -> None:
        """A reload refused the files on the gateway: each file with a problem, its problems as the detail."""
        by_file: dict[str, list[str]] = {}
        for problem in problems:
            by_file.setdefault(Path(problem.path).name, []).append(str(problem))
        at = time.time()
        for name, lines in by_file.items():
            self.refused(name, "rule_file_invalid", "\n".join(lines), at, where="local")

    def applied(self, file: str) -> None:
        """The platform pushed ``file`` again and it was applied: an earlier refusal of it no longer holds."""
        with self._lock:
            self._refused.pop(file[:NAME_CHARS], None)

    def as_dict(self) -> dict:
        with self._lock:
            return {"version": self._version, "files": list(self._files),
                    "refused": [dict(entry) for _, entry in self._refused.values()]}


def health_summary(db, started_at: float, health: "Health", rule_files: RuleFiles, sending: dict[str, int] | None = None,
                   now: float | None = None) -> dict:
    """The summary (contract version 1). The backlog is what gateway.db (``db``) holds unacknowledged
    besides the rows sent with the summary (``sending``, by outbox kind): what still waits after this batch."""
    backlog = unsent(db)
    for kind, rows in (sending or {}).items():
        backlog[kind] = max(0, backlog.get(kind, 0) - rows)
    return {
        "version": VERSION,
        "at": iso(time.time() if now is None else now),
        "started_at": iso(started_at),
        "backlog": {"revisions": backlog["order"], "telemetry": backlog["telemetry"], "reports": backlog["report"]},
        "rules": rule_files.as_dict(),
        "parts": {part["name"]: part["state"] for part in health.parts()},
        "software": __version__,
    }
