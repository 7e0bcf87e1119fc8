"""LoRaWAN sensors behind a network server: ChirpStack v4-style uplink events over MQTT.

Topic ``application/<application id>/device/<devEUI>/event/up``, payload (abridged)::

    {"deduplicationId": "...", "time": "2025-06-01T08:00:00.123456+00:00",
     "deviceInfo": {"applicationId": "street-sensors", "deviceProfileName": "MCL-300",
                    "deviceName": "MH-0101", "devEui": "a84041000181c8f3", ...},
     "devAddr": "01c8f3a8", "dr": 5, "fCnt": 12, "fPort": 1, "confirmed": false,
     "data": "AQEsBdwADwAFALQOEAAA",
     "rxInfo": [{"gatewayId": "...", "rssi": -87, "snr": 7.5, "time": "...", ...}],
     "txInfo": {"frequency": 868100000, "modulation": {"lora": {...}}}}

``data`` is the model's binary frame: a built-in model's (edge/ingest/codecs), or a vendor
model's (firmware_sim/vendor_models.py), which the gateway decodes with the vendor's JavaScript
codec. When the network server decodes (a device group's ``network_server_decodes``), the
event also carries ``object``: what the vendor's codec makes of the frame, as ChirpStack gives
it (for a built-in model, its readings). ``deviceName`` is the registry id; the devEUI is
derived from it (``dev_eui``). LoRaWAN devices have no clock in their frames: the reading's
time is the network server's ``time``. Signal strength comes from ``rxInfo``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import uuid

import orjson

from edge.ingest.codecs import codec_for
from firmware_sim import vendor_models
from firmware_sim.protocols import Decoded, Frame

GATEWAY_EUI = "0016c001ff10a235"


def dev_eui(device_id: str) -> str:
    """A stable 64-bit EUI for a device id (OUI a8-40-41, as many LoRaWAN sensors)."""
    return "a84041" + hashlib.sha1(device_id.encode()).hexdigest()[:10]


def uplink_topic(application: str, device_id: str) -> str:
    return f"application/{application}/device/{dev_eui(device_id)}/event/up"


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat()


def _codec(model: str):
    """The model's frames: a vendor model's encoder, or the built-in codec (same interface)."""
    return vendor_models.MODELS.get(model) or codec_for(model)


def event(application: str, device_id: str, model: str, t: float, fcnt: int, fport: int, data: bytes,
          rssi: float, snr: float, seq: int, ns_object: dict | None = None) -> bytes:
    """The uplink event; ``ns_object`` is the network server's ``object``, when it decodes."""
    eui = dev_eui(device_id)
    doc = {
        "deduplicationId": str(uuid.UUID(int=(int(eui, 16) << 64) | (seq & 0xFFFFFFFFFFFFFFFF))),
        "time": _iso(t),
        "deviceInfo": {
            "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242", "tenantName": "district",
            "applicationId": application, "applicationName": application,
            "deviceProfileId": str(uuid.UUID(bytes=hashlib.md5(model.encode()).digest())),
            "deviceProfileName": model, "deviceName": device_id, "devEui": eui, "tags": {},
        },
        "devAddr": eui[-8:], "adr": True, "dr": 5, "fCnt": fcnt, "fPort": fport, "confirmed": False,
        "data": base64.b64encode(data).decode(),
        "rxInfo": [{
            "gatewayId": GATEWAY_EUI, "uplinkId": seq & 0xFFFF, "time": _iso(t), "rssi": int(round(rssi)),
            "snr": round(snr, 1), "channel": fcnt % 8, "context": "AAAAAA==", "crcStatus": "CRC_OK",
            "location": {},
        }],
        "txInfo": {"frequency": 868100000 + 200000 * (fcnt % 8),
                   "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 7, "codeRate": "CR_4_5"}}},
    }
    if ns_object is not None:
        doc["object"] = ns_object
    return orjson.dumps(doc)


def report(application: str, device_id: str, model: str, t: float, readings: dict, alarm: bool,
           fcnt: int, seq: int, network_server_decodes: bool = False) -> tuple[Frame, Decoded]:
    codec = _codec(model)
    values = {k: v for k, v in readings.items() if k != "rssi_dbm"}
    fport, data = codec.encode(values, alarm=alarm)
    rssi = readings.get("rssi_dbm", -90.0)
    snr = max(-20.0, min(12.0, (rssi + 120) / 4))
    decoded = codec.decode(fport, data)
    ns_object = None
    if network_server_decodes:
        ns_object = (vendor_models.network_server_object(model, fport, data) if model in vendor_models.MODELS
                     else dict(decoded))
    payload = event(application, device_id, model, t, fcnt, fport, data, rssi, snr, seq, ns_object)
    decoded["rssi_dbm"] = float(int(round(rssi)))
    return Frame(uplink_topic(application, device_id), payload), Decoded(device_id, round(t, 6), decoded)


MALFORMED = ("truncated_frame", "unknown_fport", "bad_base64")


def malformed(application: str, device_id: str, model: str, t: float, readings: dict, fcnt: int, seq: int,
              variant: str) -> Frame:
    codec = _codec(model)
    fport, data = codec.encode({k: v for k, v in readings.items() if k != "rssi_dbm"})
    if variant == "truncated_frame":
        data = data[: len(data) // 2]
    elif variant == "unknown_fport":
        fport = 99
    payload = event(application, device_id, model, t, fcnt, fport, data, readings.get("rssi_dbm", -90.0), 5.0, seq)
    if variant == "bad_base64":
        doc = orjson.loads(payload)
        doc["data"] = "!!not base64!!"
        payload = orjson.dumps(doc)
    return Frame(uplink_topic(application, device_id), payload)
