"""Rule files change under a running gateway: valid ones swap in with state kept, bad ones are refused."""

from __future__ import annotations

import shutil
import threading
import time

import orjson
import requests
import paho.mqtt.client as mqtt

from conftest import RULES, wait_until, write_gateway_config
from edge.agent import Agent
from edge.config import load_config
from edge.orders.book import iso
from uplink.receiver import ReceiverServer, ReceiverStore


def test_reload_keeps_state_of_unchanged_rules_and_refuses_a_bad_file(tmp_path, mosquitto):
    rules = tmp_path / "rules"
    rules.mkdir()
    shutil.copy(RULES / "manhole_covers.yaml", rules)
    shutil.copy(RULES / "bins.yaml", rules)
    store = ReceiverStore(tmp_path / "receiver.db")
    server = ReceiverServer("127.0.0.1", 0, store)
    server.start_background()
    config = write_gateway_config(tmp_path, mosquitto.url, server.url, rules=rules.as_posix())
    config.write_text(config.read_text().replace("[mqtt]", "watch_interval = 0.1\n\n[mqtt]"))
    agent = Agent(load_config(config))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    t0 = time.time()

    def publish(device, ts, readings):
        payload = orjson.dumps({"device": device, "ts": ts, "readings": readings})
        client.publish(f"devices/{device}/telemetry", payload, qos=1).wait_for_publish(5)

    def orders():
        return {(o["rule"], o["device"]): o for o in store.orders()}

    try:
        assert agent.ready.wait(60) and agent.subscriber.connected.wait(20)
        client.connect(mosquitto.host, mosquitto.port)
        client.loop_start()

        publish("MH-0001", t0, {"tilt_deg": 30.0, "open": 1})  # cover_tilted starts waiting out its 10 s
        assert wait_until(lambda: agent.stats.messages == 1, 10)
        bins = rules / "bins.yaml"
        bins.write_text(bins.read_text().replace("fill_pct >= 85", "fill_pct >= 80"))
        assert wait_until(lambda: agent.stats.rule_reloads == 1, 10)

        publish("MH-0001", t0 + 11, {"tilt_deg": 30.0, "open": 1})
        assert wait_until(lambda: ("cover_tilted", "MH-0001") in orders(), 5)
        assert orders()[("cover_tilted", "MH-0001")]["opened_at"] == iso(t0 + 11)  # the wait began before the reload

        bins.write_text(bins.read_text().replace("fill_pct >= 80", "fill_pct >= = 80"))
        assert wait_until(lambda: agent.stats.rule_errors == 1, 10)
        assert "bins.yaml:" in agent.stats.last_rule_error
        publish("BIN-0002", t0 + 12, {"distance_cm": 20.0})  # 83 % full: only the reloaded rule (80) opens it
        assert wait_until(lambda: ("bin_full", "BIN-0002") in orders(), 5)
        assert agent.stats.rule_reloads == 1
    finally:
        client.loop_stop()
        agent.stop()
        thread.join(30)
        server.shutdown()
        store.close()


def test_rule_files_from_the_platform_are_validated_before_they_apply(tmp_path, mosquitto):
    rules = tmp_path / "rules"
    rules.mkdir()
    shutil.copy(RULES / "manhole_covers.yaml", rules)
    store = ReceiverStore(tmp_path / "receiver.db")
    server = ReceiverServer("127.0.0.1", 0, store)
    server.start_background()
    config = write_gateway_config(tmp_path, mosquitto.url, server.url, rules=rules.as_posix(), id="gw-rules")
    config.write_text(config.read_text().replace("[mqtt]", "watch_interval = 0.1\n\n[mqtt]")
                      .replace("[uplink]", "[uplink]\ndownlink_interval = 0.1"))
    agent = Agent(load_config(config))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        assert agent.ready.wait(60)
        good = (RULES / "bins.yaml").read_text()
        assert requests.put(f"{server.url}/api/v1/gateways/gw-rules/rules/bins.yaml", data=good, timeout=5).ok
        assert wait_until(lambda: agent.stats.rule_reloads == 1, 10)
        assert (rules / "bins.yaml").read_text() == good
        assert "bin_full" in {rule.name for rule in agent.rules}

        bad = good.replace("fill_pct >= 85", "fill_pct >= >= 85")
        assert requests.put(f"{server.url}/api/v1/gateways/gw-rules/rules/bins.yaml", data=bad, timeout=5).ok
        assert wait_until(lambda: agent.sender.downlink_refused.get("rule_file_invalid") == 1, 10)
        assert (rules / "bins.yaml").read_text() == good  # the bad file never reached the rules folder
        assert agent.stats.rule_reloads == 1 and agent.stats.rule_errors == 0
    finally:
        agent.stop()
        thread.join(30)
        server.shutdown()
        store.close()
