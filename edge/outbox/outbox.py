"""The outbox: order revisions and telemetry summaries waiting for the platform's acknowledgement.

An order revision is written in the same transaction as the order change that made it, so
no change can exist without its revision waiting to go out. A row is marked sent only when
the platform has acknowledged it. Order revisions go before telemetry; within a kind, the
oldest first, so the revisions of one order leave in order.

Nothing unacknowledged is deleted, except by ``enforce_budget`` (docs/uplink.md, "Disk budget
and eviction") when gateway.db and its WAL outgrow the disk budget, or the partition is
nearly full, in this order, in chunks of what is still needed, each step logged and recorded
in the ``evictions`` table:

1. acknowledged rows, oldest first (already delivered; each order's state stays in ``orders``);
2. quarantined payloads, oldest first (examples of bad input; their counts stay in /metrics);
3. unsent telemetry summaries, oldest first, keeping the newest summary of each device;
4. the newest telemetry summaries too;
5. unsent order revisions, oldest first: only when ``evict_orders`` is set (default: never;
   the file then grows past its budget rather than lose an order).

When even all of that could not bring the files under the budget (unsent order revisions
fill it), nothing is evicted: wiping the rest would lose it for nothing. The condition is
logged once and reported (``BudgetReport.problem``) so health shows it. Freed pages are given
back to the filesystem and the WAL truncated, so the files shrink back under the budget.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import sqlite_utils

from edge.outbox import disk
from edge.outbox.database import WAL_SIZE_LIMIT, transaction

log = logging.getLogger(__name__)

PRIORITY_ORDER = 0  # lower goes first
PRIORITY_REPORT = 5  # what the gateway did with a change from the platform: after orders, before telemetry
PRIORITY_TELEMETRY = 10
REPORTS_KEPT = 1000  # unsent reports kept; a platform that floods bad changes cannot fill the disk with them
EVICTION_CHUNK = 500  # rows at most per eviction transaction (fewer when fewer bytes are needed)
EVICTIONS_KEPT = 1000  # rows of the evictions table kept as they are; older ones are summed per step
UNMET_RECHECK = 60.0  # seconds between estimates while the budget cannot be met
TIGHT_ROOM = 32 * 1024 * 1024  # with less free on the partition, eviction goes in small chunks given back one by one
BUDGET_TIME_LIMIT = 5.0  # seconds one enforce_budget call spends at most (the rest is done at the next)


@dataclass(frozen=True)
class Pending:
    seq: int
    kind: str  # "order", "telemetry" or "report"
    key: str  # the order id, telemetry/<device>, or report-<seq>
    revision: int  # the order's revision, the telemetry interval's number, or the report's change seq
    body: dict


@dataclass(frozen=True)
class Eviction:
    step: str
    rows: int
    used_before: int
    used_after: int


class BudgetReport(list):
    """What ``enforce_budget`` did: the evictions (it is their list) and the disk after them.

    ``problem`` is empty while all is well; otherwise one line per condition for a person
    (health's "disk" part): the budget cannot be met, the partition is nearly full (the reserve
    is given back), or the disk was too full to evict or give space back.
    """

    def __init__(self, evictions: list[Eviction], max_bytes: int, db_bytes: int, wal_bytes: int,
                 free_bytes: int | None, reserve_held: bool | None, problem: str = ""):
        super().__init__(evictions)
        self.max_bytes, self.db_bytes, self.wal_bytes = max_bytes, db_bytes, wal_bytes
        self.free_bytes, self.reserve_held, self.problem = free_bytes, reserve_held, problem

    @property
    def within_budget(self) -> bool:
        return self.db_bytes + self.wal_bytes <= self.max_bytes

    def __repr__(self) -> str:
        return (f"BudgetReport({list(self)!r}, db={self.db_bytes}, wal={self.wal_bytes}, max={self.max_bytes}, "
                f"free={self.free_bytes}, reserve_held={self.reserve_held}, problem={self.problem!r})")


@dataclass(frozen=True)
class _Step:
    name: str
    table: str
    key: str
    where: str
    size: str  # SQL: about the bytes one row takes


_OUTBOX_ROW = "length(CAST(body AS BLOB)) + length(order_id) + 48"
_STEPS = (
    _Step("acknowledged", "outbox", "seq", "sent_at IS NOT NULL", _OUTBOX_ROW),
    _Step("quarantine", "quarantine", "id", "1", "length(payload) + length(topic) + length(detail) + 48"),
    _Step("telemetry_old", "outbox", "seq",
          "sent_at IS NULL AND kind = 'telemetry' AND EXISTS (SELECT 1 FROM outbox AS newer WHERE "
          "newer.order_id = outbox.order_id AND newer.revision > outbox.revision)", _OUTBOX_ROW),
    _Step("telemetry_latest", "outbox", "seq", "sent_at IS NULL AND kind = 'telemetry'", _OUTBOX_ROW),
)
_ORDERS_STEP = _Step("order_revisions", "outbox", "seq", "sent_at IS NULL AND kind = 'order'", _OUTBOX_ROW)


@dataclass
class _Watch:
    """What one gateway file's budget keeper remembers between calls (the agent makes an Outbox per tick)."""

    problems: dict[str, str] = field(default_factory=dict)  # kind -> text, as last logged
    recheck_at: float = 0.0  # monotonic: while the budget cannot be met, no new estimate before this
    recheck_for: tuple = ()  # (max_bytes, evict_orders, unsent rows) the wait is for: when they change, at once
    estimate: dict[str, int] = field(default_factory=dict)
    reserve_error: bool = False  # the reserve file could not be made for another reason than room (said once)


_watches: dict[str, _Watch] = {}


def unsent(conn) -> dict[str, int]:
    """Rows waiting for the platform, by kind: ``order``, ``telemetry``, ``report`` (a connection or Database)."""
    counts = {"order": 0, "telemetry": 0, "report": 0}
    for kind, count in conn.execute("SELECT kind, count(*) FROM outbox WHERE sent_at IS NULL GROUP BY kind"):
        counts[kind] = counts.get(kind, 0) + count
    return counts


class Outbox:
    def __init__(self, db: sqlite_utils.Database):
        self.db = db

    def put(self, order_id: str, revision: int, body: dict, priority: int = PRIORITY_ORDER) -> None:
        """Queue one order revision; call inside the transaction that changed the order."""
        self.db.execute(
            "INSERT OR IGNORE INTO outbox (priority, kind, order_id, revision, body, created_at) "
            "VALUES (?, 'order', ?, ?, ?, ?)",
            [priority, order_id, revision, orjson.dumps(body).decode(), time.time()],
        )

    def put_telemetry(self, device: str, interval: int, body: dict) -> None:
        """Queue one device's telemetry summary for one interval."""
        self.db.execute(
            "INSERT OR REPLACE INTO outbox (priority, kind, order_id, revision, body, created_at) "
            "VALUES (?, 'telemetry', ?, ?, ?, ?)",
            [PRIORITY_TELEMETRY, f"telemetry/{device}", interval, orjson.dumps(body).decode(), time.time()],
        )

    def put_report(self, seq: int, body: dict) -> None:
        """Queue a report to the platform on its change ``seq`` (docs/uplink.md, "reports").

        At most REPORTS_KEPT unsent reports are kept: beyond, the oldest are evicted (logged
        and recorded as the eviction step ``reports``)."""
        self.db.execute(
            "INSERT OR IGNORE INTO outbox (priority, kind, order_id, revision, body, created_at) "
            "VALUES (?, 'report', ?, ?, ?, ?)",
            [PRIORITY_REPORT, f"report-{seq}", seq, orjson.dumps(body).decode(), time.time()],
        )
        unsent = self.db.execute("SELECT count(*) FROM outbox WHERE kind = 'report' AND sent_at IS NULL").fetchone()[0]
        if unsent > REPORTS_KEPT:
            before = self.used_bytes()
            cursor = self.db.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE kind = 'report' AND sent_at IS NULL "
                "ORDER BY seq LIMIT ?)", [unsent - REPORTS_KEPT])
            self.db.execute(
                "INSERT INTO evictions (at, step, rows, used_bytes_before, used_bytes_after) VALUES (?, ?, ?, ?, ?)",
                [time.time(), "reports", cursor.rowcount, before, self.used_bytes()])
            log.warning("more than %d reports to the platform unsent: evicted the oldest %d", REPORTS_KEPT,
                        cursor.rowcount)

    def pending(self, limit: int, fresh: int = 10) -> list[Pending]:
        """The oldest unacknowledged rows, orders before telemetry, in the order they were made.

        Up to ``fresh`` of the places go to the newest new orders (revision 1), so a problem
        that starts while a long backlog drains is not kept waiting behind it. A first
        revision has nothing before it, so every order's revisions still leave in order.
        """
        rows = self.db.execute(
            "SELECT seq, kind, order_id, revision, body FROM outbox WHERE sent_at IS NULL "
            "ORDER BY priority, seq LIMIT ?",
            [limit],
        ).fetchall()
        if len(rows) == limit and fresh > 0:
            newest = self.db.execute(
                "SELECT seq, kind, order_id, revision, body FROM outbox WHERE sent_at IS NULL AND kind = 'order' "
                "AND revision = 1 AND seq > ? ORDER BY seq DESC LIMIT ?",
                [rows[-1][0], min(fresh, limit - 1)],
            ).fetchall()
            if newest:
                rows = rows[: limit - len(newest)] + sorted(newest)
        return [Pending(seq, kind, key, revision, orjson.loads(body)) for seq, kind, key, revision, body in rows]

    def mark_sent(self, acknowledged: list[tuple[str, int]]) -> int:
        """Mark acknowledged (key, revision) pairs sent, in one transaction; returns how many."""
        if not acknowledged:
            return 0
        now = time.time()
        count = 0
        with transaction(self.db) as conn:
            for key, revision in acknowledged:
                cursor = conn.execute(
                    "UPDATE outbox SET sent_at = ? WHERE order_id = ? AND revision = ? AND sent_at IS NULL",
                    [now, key, revision],
                )
                count += cursor.rowcount
        return count

    def depth(self, kind: str | None = None) -> int:
        if kind is None:
            return self.db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]
        return self.db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL AND kind = ?", [kind]).fetchone()[0]

    def oldest_unsent_age(self, now: float | None = None) -> float | None:
        row = self.db.execute("SELECT min(created_at) FROM outbox WHERE sent_at IS NULL").fetchone()
        return None if row[0] is None else (now or time.time()) - row[0]

    def sent_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL").fetchone()[0]

    def used_bytes(self) -> int:
        """Bytes of the file in use (pages not on the free list); freed pages are reused before it grows."""
        page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * page_size

    def file_bytes(self) -> tuple[int, int]:
        """(gateway.db, its WAL) in bytes, what the disk budget counts; the file counts at least its pages."""
        page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
        logical = self.db.execute("PRAGMA page_count").fetchone()[0] * page_size
        path = self._path()
        if path is None:
            return logical, 0
        db_bytes, wal_bytes = disk.file_sizes(path)
        return max(db_bytes, logical), wal_bytes

    def _path(self) -> Path | None:
        for _, name, file in self.db.execute("PRAGMA database_list").fetchall():
            if name == "main":
                return Path(file) if file else None
        return None

    def enforce_budget(self, max_bytes: int, evict_orders: bool = False,
                       time_limit: float | None = BUDGET_TIME_LIMIT) -> BudgetReport:
        """Keep gateway.db and its WAL within ``max_bytes``, and the partition writable.

        Cheap when all is well (two stats and a few pragmas): call it every tick. When the files
        are over the budget: give freed pages back and empty the WAL; if still over, evict in the
        documented order, in chunks, only what is needed to get ``slack`` under the budget (so
        that the WAL has room), then give the freed pages back. When everything the policy
        allows would not be enough, evict nothing (estimated again once a minute). On a nearly
        full partition the reserve file is given back, and low-priority rows are evicted to keep
        a reserve's worth free. Disk-full errors on the way end the call (the report says so);
        other errors propagate. Stops after ``time_limit`` seconds, to go on at the next call.
        """
        started = time.monotonic()
        path = self._path()
        watch = _watches.setdefault(str(path), _Watch())
        problems: dict[str, str] = {}
        evictions: list[Eviction] = []
        free = reserve = None
        held: bool | None = None
        need_min = 0
        evicting = False  # this call evicted for the budget: over it still only if it ran out of time
        try:
            if path is not None:
                reserve, free, held = disk.reserve_size(path), disk.free_bytes(path), disk.reserve_held(path)
                if held and free < reserve // 2:
                    disk.release_reserve(path)
                    held, free = False, disk.free_bytes(path)
            db_bytes, wal_bytes = self.file_bytes()
            low = path is not None and not held and free < reserve
            if db_bytes + wal_bytes > max_bytes or low:
                try:
                    disk.reclaim(self.db.conn, time_limit)
                except (sqlite3.Error, OSError) as error:
                    if not disk.is_disk_full(error, path):
                        raise  # (no room to give space back before evicting: evicting comes first then)
                db_bytes, wal_bytes = self.file_bytes()
                free = disk.free_bytes(path) if path is not None else None
            need_min, need_floor, need = self._needs(max_bytes, wal_bytes, free, reserve, held)
            if (need_min > 0 or need_floor > 0) and (time.monotonic() >= watch.recheck_at
                                                      or watch.recheck_for != self._recheck_key(max_bytes, evict_orders)):
                watch.estimate = self._evictable()
                allowed = self._allowed_bytes(watch.estimate, evict_orders)
                target = 0
                if 0 < need_min <= allowed:
                    target = need
                if 0 < need_floor <= allowed:
                    target = max(target, need_floor)
                if target > 0:
                    evicting = 0 < need_min <= allowed
                    steps = _STEPS + ((_ORDERS_STEP,) if evict_orders else ())
                    reason = "disk budget exceeded" if need_min > 0 else "partition nearly full"
                    evictions = self._evict(steps, target, reason, max_bytes, started, time_limit, path)
                    disk.reclaim(self.db.conn, None if time_limit is None else
                                 max(0.5, time_limit - (time.monotonic() - started)))
                    db_bytes, wal_bytes = self.file_bytes()
                    free = disk.free_bytes(path) if path is not None else None
                    need_min, need_floor, _ = self._needs(max_bytes, wal_bytes, free, reserve, held)
                else:
                    watch.recheck_at = time.monotonic() + UNMET_RECHECK
                    watch.recheck_for = self._recheck_key(max_bytes, evict_orders)
            if need_min > 0 and not evicting:
                problems["budget"] = self._unmet_text(max_bytes, evict_orders, watch.estimate)
            if need_min <= 0 and need_floor <= 0:
                watch.recheck_at = 0.0
            if path is not None and not held:
                try:
                    held = disk.has_room(path) and disk.hold_reserve(path)
                except OSError as error:  # not a full disk (that is False): a folder it may not write, say
                    if not watch.reserve_error:
                        log.warning("cannot make the reserve file %s (%s): a full partition will stop writes "
                                    "until space returns", disk.reserve_path(path), error)
                    watch.reserve_error = True
                    held = None
                free = disk.free_bytes(path)
                if held is False:
                    problems["partition"] = (
                        f"the partition of {path.parent} is nearly full ({free / 1e6:.1f} MB free of "
                        f"{disk.partition_bytes(path) / 1e6:.0f} MB): the gateway gave back its "
                        f"{reserve / 1e6:.1f} MB reserve file and evicts what it may to keep room; free space there")
        except (sqlite3.Error, OSError) as error:
            if not disk.is_disk_full(error, path):
                raise
            problems["full"] = (f"no room on the partition of {path.parent if path else 'gateway.db'} to evict or give "
                                f"space back ({error}); free space there")
            db_bytes, wal_bytes = self.file_bytes()
        self._log_problems(watch, problems)
        return BudgetReport(evictions, max_bytes, db_bytes, wal_bytes, free, held, "; ".join(problems.values()))

    def _recheck_key(self, max_bytes: int, evict_orders: bool) -> tuple:
        """What makes a "cannot be met" stale: other settings, or unsent rows taken by the platform
        (the count reads the unsent-rows index only)."""
        return max_bytes, evict_orders, self.depth()

    def _needs(self, max_bytes: int, wal_bytes: int, free: int | None, reserve: int | None,
               held: bool | None) -> tuple[int, int, int]:
        """Bytes to free: at least (to meet the budget), for the partition's room, and the aim (with slack)."""
        used = self.used_bytes() + wal_bytes  # what the files take once freed pages are given back
        slack = min(WAL_SIZE_LIMIT, max_bytes // 8)
        need_min = used - max_bytes
        need_floor = reserve - free if free is not None and not held and free < reserve else 0
        return max(0, need_min), max(0, need_floor), max(0, used - (max_bytes - slack))

    def _evictable(self) -> dict[str, int]:
        """About how many bytes of the file each kind of row takes (only when over the budget: it reads them all).

        The rows' own sizes, scaled to the pages their tables and indexes really take (SQLite's
        dbstat, where it is built in): rows that leave most of a page empty count a page each.
        """
        out = {"acknowledged": 0, "quarantine": 0, "telemetry": 0, "order": 0, "report": 0}
        rows = self.db.execute(f"SELECT sent_at IS NULL, kind, total({_OUTBOX_ROW}) FROM outbox GROUP BY 1, 2")
        for unsent, kind, size in rows:
            name = kind if unsent else "acknowledged"
            out[name] = out.get(name, 0) + int(size)
        out["quarantine"] = int(self.db.execute(f"SELECT total({_STEPS[1].size}) FROM quarantine").fetchone()[0])
        outbox_rows = sum(size for name, size in out.items() if name != "quarantine")
        outbox_pages = self._table_bytes("outbox")
        if outbox_pages and outbox_rows:
            for name in out:
                if name != "quarantine":
                    out[name] = out[name] * outbox_pages // outbox_rows
        quarantine_pages = self._table_bytes("quarantine")
        if quarantine_pages and out["quarantine"]:
            out["quarantine"] = quarantine_pages
        return out

    def _table_bytes(self, table: str) -> int | None:
        """Bytes of the pages of ``table`` and its indexes; None without dbstat."""
        names = [row[0] for row in self.db.execute("SELECT name FROM sqlite_schema WHERE tbl_name = ?", [table])]
        try:
            return sum(self.db.execute("SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name = ? AND aggregate = 1",
                                       [name]).fetchone()[0] for name in names)
        except sqlite3.OperationalError:  # SQLite built without dbstat: the rows' own sizes
            return None

    @staticmethod
    def _allowed_bytes(estimate: dict[str, int], evict_orders: bool) -> int:
        kinds = ("acknowledged", "quarantine", "telemetry") + (("order",) if evict_orders else ())
        return sum(estimate.get(kind, 0) for kind in kinds)

    def _unmet_text(self, max_bytes: int, evict_orders: bool, estimate: dict[str, int]) -> str:
        db_bytes, wal_bytes = self.file_bytes()
        kept = "unsent order revisions" + ("" if evict_orders else " ([outbox] evict_orders is off)")
        return (f"gateway.db and its WAL take {(db_bytes + wal_bytes) / 1e6:.1f} MB, over the "
                f"{max_bytes / 1e6:.1f} MB disk budget ([outbox] max_bytes), and evicting all that may be "
                f"({self._allowed_bytes(estimate, evict_orders) / 1e6:.1f} MB) would not bring them under it: "
                f"{estimate.get('order', 0) / 1e6:.1f} MB are {kept}; nothing was evicted for it. They go once the "
                f"platform takes them; or raise max_bytes")

    def _evict(self, steps: tuple[_Step, ...], need: int, reason: str, max_bytes: int, started: float,
               time_limit: float | None, path: Path | None) -> list[Eviction]:
        """Evict ``need`` bytes of pages, step by step, in chunks.

        On a partition with little room, deleting rows takes room first (the WAL holds the
        changed pages until a checkpoint): each chunk is then a third of the room at most, and
        its pages are given back before the next."""
        done: list[Eviction] = []
        start = self.used_bytes()
        for step in steps:
            before = self.used_bytes()
            if start - before >= need:
                break
            rows = 0
            while (left := need - (start - self.used_bytes())) > 0:
                room = disk.free_bytes(path) if path is not None else None
                tight = room is not None and room < TIGHT_ROOM
                taken = self._evict_chunk(step, min(left, max(16 * 1024, room // 3)) if tight else left)
                rows += taken
                if tight and taken:
                    disk.reclaim(self.db.conn)
                if taken == 0 or (time_limit is not None and time.monotonic() - started > time_limit):
                    break
            if rows:
                after = self.used_bytes()
                self._record(Eviction(step.name, rows, before, after))
                log.warning("%s (budget %d bytes): evicted %d row(s) (%s), %d -> %d bytes in use",
                            reason, max_bytes, rows, step.name, before, after)
                done.append(Eviction(step.name, rows, before, after))
            if time_limit is not None and time.monotonic() - started > time_limit:
                break
        return done

    def _evict_chunk(self, step: _Step, need: int) -> int:
        """Delete the oldest rows of ``step`` whose sizes add up to ``need`` (at most EVICTION_CHUNK)."""
        with transaction(self.db) as conn:
            rows = conn.execute(
                f"SELECT {step.key}, {step.size} FROM {step.table} WHERE {step.where} ORDER BY {step.key} LIMIT ?",
                [EVICTION_CHUNK],
            ).fetchall()
            keys, total = [], 0
            for key, size in rows:
                keys.append(key)
                total += size or 0
                if total >= need:
                    break
            if keys:
                conn.execute(f"DELETE FROM {step.table} WHERE {step.key} IN (SELECT value FROM json_each(?))",
                             [orjson.dumps(keys).decode()])
        return len(keys)

    def _record(self, eviction: Eviction) -> None:
        """One row in the evictions table; beyond 2 x EVICTIONS_KEPT the oldest are summed, one row per step,
        so the table stays small and the sums per step (the metric) never go down."""
        with transaction(self.db) as conn:
            conn.execute(
                "INSERT INTO evictions (at, step, rows, used_bytes_before, used_bytes_after) VALUES (?, ?, ?, ?, ?)",
                [time.time(), eviction.step, eviction.rows, eviction.used_before, eviction.used_after],
            )
            if conn.execute("SELECT id FROM evictions ORDER BY id DESC LIMIT 1 OFFSET ?",
                            [2 * EVICTIONS_KEPT]).fetchone() is None:
                return
            (last,) = conn.execute("SELECT id FROM evictions ORDER BY id DESC LIMIT 1 OFFSET ?",
                                   [EVICTIONS_KEPT]).fetchone()
            conn.execute(
                "INSERT INTO evictions (at, step, rows, used_bytes_before, used_bytes_after) "
                "SELECT max(at), step, sum(rows), max(used_bytes_before), min(used_bytes_after) FROM evictions "
                "WHERE id <= ? GROUP BY step", [last])
            conn.execute("DELETE FROM evictions WHERE id <= ?", [last])

    @staticmethod
    def _log_problems(watch: _Watch, problems: dict[str, str]) -> None:
        """Each condition once when it starts (not at every tick), and when it ends."""
        for kind, text in problems.items():
            if kind not in watch.problems:
                log.error("disk: %s", text)
        for kind in watch.problems:
            if kind not in problems:
                log.info("disk: %s", {"budget": "gateway.db is within its disk budget again",
                                      "partition": "the partition has room again; the reserve file is back",
                                      "full": "the disk has room again"}[kind])
        watch.problems = dict(problems)
