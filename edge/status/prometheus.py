"""The status snapshot in Prometheus' text exposition format (version 0.0.4).

Every metric is named ``edge_...`` and documented by its HELP line; docs/operations.md
lists them. Counters end in ``_total`` and only go up: they count in the running agent and
restart from zero with it, except ``edge_outbox_evicted_rows_total``, summed from the
evictions table (rows are only ever added). What a table holds now (rows that eviction or
trimming can delete) is a gauge without ``_total``, such as ``edge_quarantine_rows``.
"""

from __future__ import annotations

import math

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str, samples) -> None:
        """samples: a number, or a list of (labels dict, number)."""
        if not isinstance(samples, list):
            samples = [({}, samples)]
        samples = [(labels, value) for labels, value in samples if value is not None]
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
            number = float(value)
            shown = "NaN" if math.isnan(number) else repr(number) if not number.is_integer() else str(int(number))
            self.lines.append(f"{name}{{{label_text}}} {shown}" if label_text else f"{name} {shown}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(snap: dict) -> str:
    w = _Writer()
    gateway = snap["gateway"]
    w.metric("edge_info", "gauge", "The gateway (value 1), with its id as a label.", [({"gateway": gateway}, 1)])
    agent = snap["agent"]
    w.metric("edge_agent_up", "gauge", "1 when the gateway agent is running and ready.",
             1 if agent.get("running") and agent.get("ready") else 0)
    orders, outbox = snap["orders"], snap["outbox"]
    w.metric("edge_orders", "gauge", "Work orders in gateway.db by state.",
             [({"state": state}, n) for state, n in orders["by_state"].items()])
    w.metric("edge_orders_rechecked", "gauge", "Orders by the outcome of the sensors' re-check of their last resolution "
             "(pending, verified, not_fixed, unverified).",
             [({"verification": v}, n) for v, n in orders.get("rechecks", {}).items()])
    w.metric("edge_outbox_unsent", "gauge", "Rows waiting in the outbox for the platform's acknowledgement.",
             [({"kind": "order"}, outbox["unsent_orders"]), ({"kind": "telemetry"}, outbox["unsent_telemetry"])])
    w.metric("edge_outbox_oldest_unsent_age_seconds", "gauge",
             "Age of the oldest unacknowledged outbox row (absent when the outbox is empty).",
             outbox["oldest_unsent_age_s"])
    w.metric("edge_database_used_bytes", "gauge", "Bytes of gateway.db in use (the disk budget counts these).",
             outbox["used_bytes"])
    w.metric("edge_outbox_evicted_rows_total", "counter", "Outbox rows evicted to keep the disk budget, by step.",
             [({"step": step}, n) for step, n in outbox["evicted_rows"].items()])
    w.metric("edge_quarantine_rows", "gauge",
             "Quarantined messages kept in gateway.db, by reason (trimming and eviction delete the oldest).",
             [({"reason": reason}, n) for reason, n in snap["quarantine"].items()])
    w.metric("edge_outbox_unsent_reports", "gauge", "Reports on the platform's changes waiting for its acknowledgement.",
             outbox.get("unsent_reports", 0))
    w.metric("edge_unknown_devices", "gauge", "Devices that sent messages but are not in the registry.",
             snap["unknown_devices"])
    if not agent.get("running"):
        return w.text()
    ingest, engine, uplink = snap["ingest"], snap["engine"], snap["uplink"]
    _health(w, snap.get("health"))
    w.metric("edge_uptime_seconds", "gauge", "Seconds since the agent started.", agent["uptime_s"])
    w.metric("edge_resident_memory_bytes", "gauge", "Resident memory of the agent process.", agent["resident_bytes"])
    w.metric("edge_messages_total", "counter", "MQTT messages taken from the broker.", ingest["messages"])
    w.metric("edge_readings_total", "counter", "Readings (one metric of one message) decoded.", ingest["readings"])
    w.metric("edge_quarantined_messages_total", "counter",
             "Messages set aside (quarantined) since the agent started, by reason.",
             [({"reason": reason}, n) for reason, n in sorted(ingest.get("quarantined", {}).items())])
    w.metric("edge_quarantine_trimmed_total", "counter",
             "Quarantined messages deleted to keep only the newest [outbox] quarantine_max.",
             ingest.get("quarantine_trimmed", 0))
    w.metric("edge_ingest_queue_depth", "gauge", "Messages between the network and the engine.", ingest["queue_depth"])
    w.metric("edge_ingest_queue_capacity", "gauge", "Capacity of that queue ([engine] queue_max).", ingest["queue_max"])
    w.metric("edge_broker_connected", "gauge", "1 while subscribed to the device broker.",
             1 if ingest["broker_connected"] else 0)
    w.metric("edge_duplicate_uplinks_total", "counter",
             "LoRaWAN uplinks heard again (several gateways, same fCnt): evaluated once.", ingest["duplicate_uplinks"])
    modbus = ingest["modbus"]
    if modbus is not None:
        w.metric("edge_modbus_polls_total", "counter", "Modbus RTU requests sent on the serial line.", modbus["polls"])
        w.metric("edge_modbus_replies_total", "counter", "Modbus RTU replies received (bad ones are quarantined).",
                 modbus["replies"])
        w.metric("edge_modbus_port_errors_total", "counter", "Times the serial port could not be opened or failed.",
                 modbus["port_errors"])
    w.metric("edge_rules_loaded", "gauge", "Rules running.", engine["rules"])
    w.metric("edge_engine_kernels_ahead_of_time", "gauge",
             "1 when the engine runs kernels built ahead of time (edge engine build), 0 when numba compiled them.",
             1 if engine.get("kernels") == "ahead-of-time" else 0)
    w.metric("edge_rule_evaluations_total", "counter", "Rule evaluations on incoming messages (rules x messages).",
             engine["rule_evaluations"])
    w.metric("edge_rule_reloads_total", "counter", "Rule files reloaded successfully.", engine["rule_reloads"])
    w.metric("edge_rule_errors_total", "counter", "Rule file loads refused (the old rules kept running).",
             engine["rule_errors"])
    w.metric("edge_write_failures_total", "counter",
             "Commits to gateway.db that failed (a full disk...): retried, nothing acknowledged meanwhile.",
             engine.get("write_failures"))
    w.metric("edge_internal_errors_total", "counter",
             "Messages that made a part of ingest fail unexpectedly (quarantined as internal_error).",
             engine.get("internal_errors"))
    w.metric("edge_checkpoints_total", "counter", "Engine checkpoints written.", engine.get("checkpoints"))
    w.metric("edge_checkpoint_failures_total", "counter", "Engine checkpoints that could not be written.",
             engine.get("checkpoint_failures"))
    w.metric("edge_checkpoint_refused_total", "counter",
             "Engine checkpoints, or rules' states in one, not used at start (another version's layout, unreadable): "
             "those rules started fresh.", engine.get("checkpoint_refused"))
    w.metric("edge_replayed_steps", "gauge", "Engine changelog steps replayed at the last start.",
             engine.get("replayed_steps"))
    w.metric("edge_device_clock_resets_total", "counter",
             "Devices whose clock came back from far ahead of the gateway's: their rules started afresh.",
             engine.get("clock_resets"))
    w.metric("edge_alerts_raised_total", "counter", "Rules that fired on a device (before one-order-per-problem).",
             engine["alerts_raised"])
    w.metric("edge_engine_batches_total", "counter", "Batches of messages evaluated.", engine["batches"])
    w.metric("edge_engine_commits_total", "counter", "Commits of evaluated batches to gateway.db (several batches each, "
             "[engine] commit_interval).", engine["commits"])
    w.metric("edge_engine_batch_seconds_total", "counter", "Time spent evaluating batches in the engine.",
             engine["batch_seconds_total"])
    w.metric("edge_engine_last_batch_seconds", "gauge", "Engine time of the latest batch.",
             engine["last_batch_seconds"])
    w.metric("edge_uplinked_total", "counter", "Outbox rows the platform acknowledged.", uplink["uplinked"])
    w.metric("edge_uplink_errors_total", "counter", "Failed sends to the platform (each retried).", uplink["errors"])
    w.metric("edge_uplink_failing", "gauge", "1 while the latest send to the platform failed.",
             1 if uplink["state"] == "failing" else 0)
    w.metric("edge_uplink_last_latency_seconds", "gauge", "Round trip of the latest answered send.",
             uplink["latency_last_s"])
    w.metric("edge_uplink_latency_seconds_total", "counter", "Sum of the round trips of answered sends.",
             uplink.get("latency_total_s", 0.0))
    w.metric("edge_uplink_sends_total", "counter", "Sends the platform answered.", uplink["sends"])
    w.metric("edge_uplink_faults_total", "counter",
             "Unexpected errors caught in the uplink loop (each logged with its traceback; the loop carried on).",
             uplink.get("faults", 0))
    _downlink(w, snap.get("downlink"))
    _checkpoint(w, snap.get("checkpoint"))
    devices = snap["devices"]
    w.metric("edge_devices", "gauge", "Devices in the registry.", len(devices))
    w.metric("edge_devices_silent", "gauge", "Devices with no message within [status] silent_after.",
             sum(1 for d in devices if d["silent"]))
    return w.text()


def _health(w: _Writer, health: dict | None) -> None:
    if health is None:
        return
    parts = health["parts"]
    w.metric("edge_healthy", "gauge", "1 while every part of the gateway is ok (what /healthz answers 200 for).",
             1 if health["healthy"] else 0)
    w.metric("edge_part_up", "gauge", "1 while the part is ok, 0 while it is degraded or down.",
             [({"part": p["name"]}, 1 if p["state"] == "ok" else 0) for p in parts])
    w.metric("edge_part_faults_total", "counter", "Faults the part caught (logged, counted, backed off).",
             [({"part": p["name"]}, p["faults_total"]) for p in parts])
    w.metric("edge_part_restarts_total", "counter", "Times the supervisor restarted the part's loop after it failed.",
             [({"part": p["name"]}, p["restarts_total"]) for p in parts])


def _downlink(w: _Writer, downlink: dict | None) -> None:
    if downlink is None:
        return
    w.metric("edge_downlink_applied_total", "counter", "Order changes from the platform applied.", downlink["applied"])
    w.metric("edge_downlink_refused_total", "counter",
             "Changes from the platform refused, by reason (docs/uplink.md: what the gateway refuses).",
             [({"reason": reason}, n) for reason, n in sorted(downlink["refused"].items())])
    w.metric("edge_rule_files_applied_total", "counter", "Rule files from the platform checked and written.",
             downlink["rule_files_applied"])
    w.metric("edge_rule_files_refused_total", "counter", "Rule files from the platform refused (not written).",
             downlink["rule_files_refused"])
    w.metric("edge_downlink_faults_total", "counter", "Unexpected errors caught in the downlink pass.",
             downlink["faults"])


def _checkpoint(w: _Writer, checkpoint: dict | None) -> None:
    if checkpoint is None:
        return
    w.metric("edge_checkpoint_ok", "gauge", "1 while the engine checkpoint is written without error.",
             1 if checkpoint.get("ok") else 0)
    w.metric("edge_checkpoint_age_seconds", "gauge", "Age of the newest engine checkpoint (absent before the first).",
             checkpoint.get("age_s"))
    w.metric("edge_checkpoint_bytes", "gauge", "Size of the newest engine checkpoint.", checkpoint.get("bytes"))
