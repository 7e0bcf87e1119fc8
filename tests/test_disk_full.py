"""Everything on disk is bounded by the disk budget, and a full disk is a degraded mode, not an exit.

Real files throughout: a real gateway.db made by ``open_database``, and a real partition that
fills: a tmpfs of a few MB mounted for the test (``mount -t tmpfs``, which needs root or
CAP_SYS_ADMIN). The end-to-end case runs a real ``edge run`` process with the session's real
Mosquitto and the reference receiver, its data folder on such a partition.

Without the right to mount, the tests that need a partition fail and say so (they are not
skipped). The SQLITE_FULL path itself is also made without a mount, with SQLite's
``PRAGMA max_page_count`` on a real file (test_is_disk_full_tells_a_full_disk_from_other_errors),
and a real ENOSPC from /dev/full.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import threading
import time
import uuid
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
import requests

from conftest import edge_command, start_receiver, wait_until, write_gateway_config
from edge.broker import free_port
from edge.outbox import Outbox, open_database, transaction
from edge.outbox.database import MIGRATIONS, WAL_SIZE_LIMIT
from edge.outbox.disk import (
    DiskFullError, file_sizes, free_bytes, is_disk_full, release_reserve, reserve_held, reserve_path, reserve_size,
)
from edge.outbox.outbox import EVICTIONS_KEPT

MB = 1024 * 1024


# --- a partition that fills --------------------------------------------------------------------

class Partition:
    """A tmpfs of ``size`` mounted at ``path`` for one test, and a filler that fills it."""

    def __init__(self, path: Path, size: str = "8m"):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            pytest.fail(f"this test mounts a tmpfs and needs root (or CAP_SYS_ADMIN); running as uid {os.geteuid()}")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs at {path} ({done.stderr.strip()}): this test needs the right to mount")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fillers = 0

    def free_bytes(self) -> int:
        return free_bytes(self.path)

    def fill(self, leave: int = 0) -> None:
        """Write a filler file until the partition is full, then give ``leave`` bytes of it back."""
        self._fillers += 1
        filler = self.path / f"filler-{self._fillers}"
        block = b"\xa5" * 65536
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(block)
            except OSError as error:
                assert error.errno == 28, error  # ENOSPC
            for size in (4096, 512):  # the last bits
                try:
                    while True:
                        f.write(block[:size])
                except OSError:
                    pass
            if leave:
                f.truncate(max(0, f.tell() - leave))

    def keep_full(self) -> None:
        """A runaway writer: keeps the partition full until ``free()`` (what the gateway frees, it takes)."""
        self.fill()

        def run():
            while not self._stop.wait(0.05):
                self.fill()

        self._thread = threading.Thread(target=run, name="filler", daemon=True)
        self._thread.start()

    def free(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for filler in self.path.glob("filler-*"):
            filler.unlink()

    def close(self) -> None:
        self.free()
        if subprocess.run(["umount", str(self.path)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=30)


@pytest.fixture
def partition(tmp_path):
    part = Partition(tmp_path / "data")
    yield part
    part.close()


def quarantine_rows(db, count: int, size: int, start: int = 0) -> None:
    """Quarantined payloads as big as a hostile device sends them (one transaction each, as batches)."""
    for n in range(start, start + count):
        with transaction(db) as conn:
            conn.execute("INSERT INTO quarantine (received_at, topic, payload, reason, detail, payload_bytes) "
                         "VALUES (?, 'devices/MH-0001/telemetry', zeroblob(?), 'malformed_json', '', ?)",
                         [float(n), size, size])


def on_disk(path: Path) -> int:
    db_bytes, wal_bytes = file_sizes(path)
    return db_bytes + wal_bytes


# --- the budget ----------------------------------------------------------------------------------

def test_files_shrink_back_under_the_budget_after_a_flood_of_big_payloads(tmp_path):
    path = tmp_path / "gateway.db"
    db = open_database(path)
    quarantine_rows(db, 40, 10 * MB)  # the flood, stored whole (as before ingest cut payloads)
    assert on_disk(path) > 400 * MB
    budget = 32 * MB
    report = Outbox(db).enforce_budget(budget, time_limit=None)
    db_bytes, wal_bytes = file_sizes(path)
    assert db_bytes + wal_bytes <= budget, (db_bytes, wal_bytes)  # the files themselves, not pages in use
    assert (report.db_bytes, report.wal_bytes) == (db_bytes, wal_bytes) and report.problem == ""
    left = [row[0] for row in db.execute("SELECT received_at FROM quarantine ORDER BY id")]
    assert 1 <= len(left) < 4 and left == [float(n) for n in range(40 - len(left), 40)]  # the oldest went
    assert [(e.step, e.rows) for e in report] == [("quarantine", 40 - len(left))]
    assert db.execute("SELECT step, rows FROM evictions").fetchall() == [("quarantine", 40 - len(left))]
    # Within the budget now: the next call has nothing to do.
    again = Outbox(db).enforce_budget(budget, time_limit=None)
    assert list(again) == [] and again.within_budget
    db.conn.close()


def test_a_file_made_before_auto_vacuum_is_converted_once_and_shrinks_too(tmp_path):
    path = tmp_path / "gateway.db"
    conn = sqlite3.connect(path, isolation_level=None)  # as gateways before this version made it
    conn.execute("PRAGMA journal_mode=WAL")
    for number, script in enumerate(MIGRATIONS, start=1):
        conn.executescript(script)
        conn.execute(f"PRAGMA user_version={number}")
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()
    db = open_database(path)
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental, from now on
    quarantine_rows(db, 10, 4 * MB)
    report = Outbox(db).enforce_budget(8 * MB, time_limit=None)
    assert on_disk(path) <= 8 * MB and report.problem == ""
    assert 0 < db.execute("SELECT count(*) FROM quarantine").fetchone()[0] < 10
    db.conn.close()


def test_the_wal_is_cut_back_after_a_big_write(tmp_path):
    path = tmp_path / "gateway.db"
    db = open_database(path)
    quarantine_rows(db, 1, 20 * MB)  # one transaction far bigger than the WAL's limit
    assert file_sizes(path)[1] > 20 * MB
    quarantine_rows(db, 1, 100, start=1)  # the next write starts the WAL over, cut back to its limit
    assert file_sizes(path)[1] <= WAL_SIZE_LIMIT
    db.conn.close()


def fill_outbox(db, unsent_orders: int, acknowledged: int, telemetry: int, body: int = 3000) -> None:
    outbox = Outbox(db)
    pad = "x" * body
    with transaction(db):
        for n in range(acknowledged):
            outbox.put(f"done-{n}", 1, {"order_id": f"done-{n}", "revision": 1, "pad": pad})
        for n in range(unsent_orders):
            outbox.put(f"wait-{n}", 1, {"order_id": f"wait-{n}", "revision": 1, "pad": pad})
        for n in range(telemetry):
            outbox.put_telemetry(f"D{n}", 7, {"device": f"D{n}", "interval": 7, "pad": pad[:500]})
    outbox.mark_sent([(f"done-{n}", 1) for n in range(acknowledged)])


def counts(db) -> dict:
    return {
        "acknowledged": db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL").fetchone()[0],
        "unsent_orders": db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL AND kind = 'order'").fetchone()[0],
        "telemetry": db.execute("SELECT count(*) FROM outbox WHERE kind = 'telemetry'").fetchone()[0],
        "quarantine": db.execute("SELECT count(*) FROM quarantine").fetchone()[0],
    }


def test_unsent_orders_over_the_budget_leave_the_rest_alone_and_it_is_said_once(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edge.outbox.outbox")
    db = open_database(tmp_path / "gateway.db")
    fill_outbox(db, unsent_orders=600, acknowledged=300, telemetry=40)
    quarantine_rows(db, 200, 1000)
    outbox = Outbox(db)
    budget = 1 * MB  # [outbox] max_bytes' least value; 600 unsent orders of 3 KB alone are over it
    before = counts(db)
    for _ in range(5):  # five ticks
        report = outbox.enforce_budget(budget)
        assert list(report) == [] and counts(db) == before  # nothing wiped, call after call
        assert "unsent order revisions ([outbox] evict_orders is off)" in report.problem
    said = [r for r in caplog.records if r.levelno == logging.ERROR and "over the 1.0 MB disk budget" in r.message]
    assert len(said) == 1  # once, not at every tick

    # The platform takes the backlog: now acknowledged rows can go, and only as many as needed.
    outbox.mark_sent([(f"wait-{n}", 1) for n in range(600)])
    report = outbox.enforce_budget(budget, time_limit=None)
    assert [e.step for e in report] == ["acknowledged"] and report.problem == "" and report.within_budget
    after = counts(db)
    assert 0 < after["acknowledged"] < before["acknowledged"] + 600  # the newest acknowledged rows stay
    assert (after["quarantine"], after["telemetry"]) == (before["quarantine"], before["telemetry"])
    assert any("within its disk budget again" in r.message for r in caplog.records)
    db.conn.close()


def test_the_evictions_table_stays_small_and_its_sums_never_go_down(tmp_path):
    db = open_database(tmp_path / "gateway.db")
    with transaction(db) as conn:
        conn.executemany("INSERT INTO evictions (at, step, rows, used_bytes_before, used_bytes_after) "
                         "VALUES (?, ?, 1, 2, 1)",
                         [(float(n), "acknowledged" if n % 2 else "quarantine") for n in range(2 * EVICTIONS_KEPT + 1)])
    sums = dict(db.execute("SELECT step, sum(rows) FROM evictions GROUP BY step").fetchall())
    quarantine_rows(db, 30, 100_000)
    report = Outbox(db).enforce_budget(Outbox(db).used_bytes() - 1 * MB, time_limit=None)
    (evicted,) = [e.rows for e in report if e.step == "quarantine"]
    assert db.execute("SELECT count(*) FROM evictions").fetchone()[0] <= EVICTIONS_KEPT + 2
    after = dict(db.execute("SELECT step, sum(rows) FROM evictions GROUP BY step").fetchall())
    assert after == {"acknowledged": sums["acknowledged"], "quarantine": sums["quarantine"] + evicted}
    db.conn.close()


# --- telling a full disk ---------------------------------------------------------------------------

def test_is_disk_full_tells_a_full_disk_from_other_errors(tmp_path):
    db = open_database(tmp_path / "gateway.db")
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count={pages}")  # a real SQLITE_FULL from SQLite, no mount needed
    with pytest.raises(sqlite3.OperationalError) as full:
        with transaction(db) as conn:
            conn.execute("INSERT INTO quarantine (received_at, topic, payload, reason, detail) "
                         "VALUES (1, 't', zeroblob(1000000), 'r', '')")
    assert is_disk_full(full.value) and "database or disk is full" in str(full.value)
    assert db.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 0  # rolled back whole
    assert not db.conn.in_transaction
    db.execute(f"PRAGMA max_page_count={10 * pages + 1000}")  # space is back: the same write goes through
    quarantine_rows(db, 1, 1000)

    with pytest.raises(OSError) as enospc, open("/dev/full", "wb", buffering=0) as f:
        f.write(b"x")
    assert is_disk_full(enospc.value)
    try:
        raise RuntimeError("the batch could not be stored") from full.value
    except RuntimeError as chained:
        assert is_disk_full(chained)
    assert is_disk_full(DiskFullError(tmp_path / "gateway.db", "open it", 0))

    with pytest.raises(sqlite3.OperationalError) as syntax:
        db.execute("SELEC 1")
    other = sqlite3.connect(tmp_path / "gateway.db", timeout=0, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError) as locked:
        other.execute("BEGIN IMMEDIATE")
    db.execute("ROLLBACK")
    other.close()
    assert "locked" in str(locked.value)
    assert not is_disk_full(syntax.value) and not is_disk_full(locked.value)
    assert not is_disk_full(ValueError("year 58890 is out of range"))
    db.conn.close()


# --- a partition that fills ----------------------------------------------------------------------

def test_open_database_on_a_full_partition_opens_a_good_file_with_the_reserve(partition, caplog):
    path = partition.path / "gateway.db"
    db = open_database(path)
    report = Outbox(db).enforce_budget(4 * MB)
    assert report.reserve_held and reserve_held(path) and report.problem == ""
    db.conn.close()
    partition.fill()
    assert partition.free_bytes() < 64 * 1024
    with caplog.at_level(logging.WARNING):
        db = open_database(path)  # WAL mode needs room for its shared-memory file: the reserve gives it
    assert db.execute("SELECT count(*) FROM orders").fetchone()[0] == 0
    assert not reserve_path(path).exists() and "gave back the gateway's reserve file" in caplog.text
    report = Outbox(db).enforce_budget(4 * MB)
    assert not report.reserve_held and "nearly full" in report.problem  # health says so
    db.conn.close()
    partition.free()
    db = open_database(path)
    report = Outbox(db).enforce_budget(4 * MB)
    assert report.reserve_held and report.problem == ""  # the reserve is back, all is well
    db.conn.close()


def test_open_database_on_a_full_partition_says_so_then_opens_when_space_returns(partition):
    path = partition.path / "gateway.db"
    open_database(path).conn.close()  # no reserve was ever made
    partition.fill()
    with pytest.raises(DiskFullError) as full:
        open_database(path)
    assert full.value.action == "open it" and full.value.path == path
    assert "no room on its partition to open it" in str(full.value) and "free space there" in str(full.value)
    assert is_disk_full(full.value)
    partition.free()
    db = open_database(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    db.conn.close()


def test_a_migration_that_does_not_fit_is_rolled_back_whole(partition):
    path = partition.path / "gateway.db"
    holder = sqlite3.connect(path, isolation_level=None)  # the file of the previous version, still open
    holder.execute("PRAGMA auto_vacuum=INCREMENTAL")
    holder.execute("PRAGMA journal_mode=WAL")
    for number, script in enumerate(MIGRATIONS[:-1], start=1):
        holder.executescript(script)
        holder.execute(f"PRAGMA user_version={number}")
    partition.fill()
    with pytest.raises(DiskFullError) as full:
        open_database(path)
    assert full.value.action == f"bring its schema from version {len(MIGRATIONS) - 1} to {len(MIGRATIONS)}"
    assert holder.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) - 1  # nothing half done
    partition.free()
    db = open_database(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    db.conn.close()
    holder.close()


def test_a_nearly_full_partition_evicts_only_what_gives_room(partition):
    path = partition.path / "gateway.db"
    db = open_database(path)
    fill_outbox(db, unsent_orders=50, acknowledged=300, telemetry=10)
    quarantine_rows(db, 100, 1000)
    outbox = Outbox(db)
    budget = 64 * MB  # far from the budget: only the partition is short of room
    assert outbox.enforce_budget(budget).reserve_held
    before = counts(db)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # (the gateway checkpoints as it goes)
    release_reserve(path)  # as at a full disk; then half of it taken again
    partition.fill(leave=reserve_size(path) // 2)
    report = outbox.enforce_budget(budget, time_limit=None)
    assert [e.step for e in report] == ["acknowledged"]  # acknowledged rows were enough
    after = counts(db)
    assert 0 < after["acknowledged"] < before["acknowledged"]
    assert {k: after[k] for k in ("unsent_orders", "telemetry", "quarantine")} == \
        {k: before[k] for k in ("unsent_orders", "telemetry", "quarantine")}
    assert partition.free_bytes() >= reserve_size(path)  # the freed pages went back to the partition
    assert "nearly full" in report.problem and not report.reserve_held
    partition.free()
    report = outbox.enforce_budget(budget)
    assert report.reserve_held and report.problem == ""
    db.conn.close()


# --- end to end: edge run on a partition that fills --------------------------------------------------

def tilted(device: str, t0: float) -> list[tuple[str, bytes]]:
    """A cover tilted 30 degrees for 11 s (the shipped rule cover_tilted holds for 10 s)."""
    return [(f"devices/{device}/telemetry", orjson.dumps({"ts": round(t, 3), "readings": {"tilt_deg": 30.0, "open": 1}}))
            for t in (t0 - 11, t0)]


def publish(broker, messages) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"disk-full-{uuid.uuid4().hex[:8]}")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for info in [client.publish(topic, payload, qos=1) for topic, payload in messages]:
            info.wait_for_publish(20)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_full_partition_is_a_degraded_mode_and_the_gateway_recovers_by_itself(tmp_path, mosquitto, partition):
    receiver = start_receiver(tmp_path / "receiver.db")
    port = free_port()
    config = write_gateway_config(tmp_path, mosquitto.url, receiver.url, status=f"127.0.0.1:{port}")
    config.write_text(config.read_text() + "\n[outbox]\nmax_bytes = 4194304\n")
    log = tmp_path / "gateway.log"
    gateway = subprocess.Popen(edge_command() + ["run", "--config", str(config)], stderr=log.open("ab"))

    def healthz() -> int | None:
        try:
            return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code
        except requests.RequestException:
            return None

    def orders() -> dict[str, list]:
        found: dict[str, list] = {}
        for order in receiver.orders():
            found.setdefault(order["device"], []).append(order["rule"])
        return found

    try:
        assert wait_until(lambda: healthz() == 200 or gateway.poll() is not None, 90) and gateway.poll() is None, \
            log.read_text()[-3000:]
        pid = gateway.pid
        publish(mosquitto, tilted("MH-0002", time.time()))
        assert wait_until(lambda: "MH-0002" in orders(), 30), log.read_text()[-3000:]

        partition.keep_full()  # from now on the partition stays full: what the gateway frees is taken
        publish(mosquitto, tilted("MH-0005", time.time()) + tilted("MH-0009", time.time()))
        assert wait_until(lambda: healthz() == 503 or gateway.poll() is not None, 60)
        time.sleep(5)  # the full disk lasts a while; the gateway keeps trying
        assert gateway.poll() is None, f"the gateway exited on a full disk:\n{log.read_text()[-3000:]}"
        assert healthz() == 503  # health says so while the disk is full
        status = requests.get(f"http://127.0.0.1:{port}/status.json", timeout=5).text
        assert "disk" in status
        shown = subprocess.run(edge_command() + ["status", "--config", str(config)], capture_output=True, text=True,
                               timeout=60)
        assert shown.returncode == 1 and "NOT HEALTHY" in shown.stdout and "disk degraded" in shown.stdout, \
            (shown.returncode, shown.stdout)

        partition.free()  # space returns
        want = {"MH-0002": ["cover_tilted"], "MH-0005": ["cover_tilted"], "MH-0009": ["cover_tilted"]}
        assert wait_until(lambda: orders() == want, 90), (orders(), log.read_text()[-3000:])
        assert wait_until(lambda: healthz() == 200, 90), requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).text
        assert gateway.poll() is None and gateway.pid == pid  # the same process throughout
        assert orders() == want and receiver.stats()["duplicates"] == 0  # each order exactly once
        first = [r for r in receiver.revisions() if r["revision"] == 1]
        assert sorted(r["device"] for r in first) == ["MH-0002", "MH-0005", "MH-0009"]
    finally:
        partition.free()
        if gateway.poll() is None:
            gateway.terminate()
            try:
                gateway.wait(30)
            except subprocess.TimeoutExpired:
                gateway.kill()
                gateway.wait(10)
        receiver.process.terminate()
        receiver.process.wait(10)


def test_a_gateway_started_on_a_full_partition_waits_degraded_and_goes_on_when_space_returns(
        tmp_path, mosquitto, partition):
    """The issue's crash loop: on a full data partition `edge run` exited at every start. It must
    stay up (same process), say so (/healthz 503), and start its work when space returns."""
    receiver = start_receiver(tmp_path / "receiver.db")
    port = free_port()
    config = write_gateway_config(tmp_path, mosquitto.url, receiver.url, status=f"127.0.0.1:{port}")
    config.write_text(config.read_text() + "\n[outbox]\nmax_bytes = 4194304\n")
    log = tmp_path / "gateway.log"
    database = partition.path / "gateway.db"

    def healthz() -> int | None:
        try:
            return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code
        except requests.RequestException:
            return None

    def start():
        return subprocess.Popen(edge_command() + ["run", "--config", str(config)], stderr=log.open("ab"))

    gateway = start()  # a first run makes gateway.db (and its reserve) as in the field
    try:
        assert wait_until(lambda: healthz() == 200 and reserve_held(database), 90), log.read_text()[-3000:]
        gateway.terminate()
        assert gateway.wait(30) == 0
        partition.keep_full()  # then the partition fills, the reserve file's room too
        release_reserve(database)
        gateway = start()
        publish(mosquitto, tilted("MH-0011", time.time()))
        assert wait_until(lambda: healthz() == 503 or gateway.poll() is not None, 60)
        time.sleep(5)
        assert gateway.poll() is None, f"the gateway exited on a full partition:\n{log.read_text()[-3000:]}"
        assert healthz() == 503
        pid = gateway.pid
        partition.free()
        assert wait_until(lambda: [o["device"] for o in receiver.orders()] == ["MH-0011"], 90), log.read_text()[-3000:]
        assert wait_until(lambda: healthz() == 200, 90)
        assert gateway.poll() is None and gateway.pid == pid
        assert receiver.stats()["duplicates"] == 0
    finally:
        partition.free()
        if gateway.poll() is None:
            gateway.terminate()
            try:
                gateway.wait(30)
            except subprocess.TimeoutExpired:
                gateway.kill()
                gateway.wait(10)
        receiver.process.terminate()
        receiver.process.wait(10)
