"""HTTP transport: batches of order revisions and telemetry summaries as JSON.

Request: ``POST {url}/api/v1/uplink`` with
``{"gateway": ID, "revisions": [order revision, ...], "telemetry": [summary, ...],
"reports": [report, ...], "health": {...}}`` (``reports`` and ``health`` only when there are
some; ``health`` is the gateway's health summary, edge/status/summary.py) and
``Authorization: Bearer TOKEN`` when a token is set; TLS is checked against ``ca_file``
when given (else the system's CAs).
Response 200: ``{"acknowledged": [[order_id, revision], ...],
"telemetry_acknowledged": [[device, interval], ...], "reports_acknowledged": [seq, ...],
"duplicates": N}``. A revision the platform already had is acknowledged too, so a resend
after a crash is harmless. An answer without ``reports_acknowledged`` comes from a platform
that does not take reports: the reports sent count as delivered. A health summary counts as
delivered with any answer of that shape (a platform that does not know it ignores the key).

The platform is not trusted: an answer that is not JSON (a captive portal's HTML page), is
larger than ``MAX_ANSWER_BYTES``, takes longer than a few timeouts to arrive, or does not
have the shape above is a ``TransportError`` like a dropped connection: nothing is marked
acknowledged and the batch is sent again later.
"""

from __future__ import annotations

import http.client
import json
import time

import orjson
import requests
import urllib3

from edge.redact import redact_text, redact_url

MAX_ANSWER_BYTES = 4 * 1024 * 1024  # an answer to a batch is a few kilobytes
MAX_CHANGES_BYTES = 32 * 1024 * 1024  # the changes feed carries rule files (256 KiB each at most)
READ_TIMEOUTS = 6  # a whole answer must arrive within this many [uplink] timeouts
HEALTH = ("health", 0)  # what ``send`` returns among the acknowledged pairs when the health summary was delivered


class TransportError(Exception):
    """The platform did not acknowledge the batch; ``status`` is the HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def preview(data: bytes | str, limit: int = 200) -> str:
    """The start of what the platform sent, as one line of printable text (for logs and errors)."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = text[:limit]
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def show(value: object, limit: int = 80) -> str:
    """A value the platform sent, as JSON text cut to ``limit`` characters (for messages)."""
    try:
        text = orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        text = repr(value)
    return preview(text, limit)


def loads(body: bytes) -> object:
    """JSON as the platform sent it; numbers beyond a double (1e400) are read too. ValueError if not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        try:
            return json.loads(body)  # orjson refuses 1e400, which is valid JSON
        except (ValueError, RecursionError):
            raise ValueError(str(error)) from None


def parse_acknowledgement(answer: object, revisions: list[dict], reports: list[dict]) -> set[tuple[str, int]]:
    """The (key, number) pairs an answer to one batch acknowledges; raises ValueError on a wrong shape."""
    if not isinstance(answer, dict):
        raise ValueError(f"expected a JSON object, got {type(answer).__name__}")

    def pairs(name: str, required: bool) -> list[tuple[str, int]]:
        items = answer.get(name)
        if items is None and not required:
            return []
        if not isinstance(items, list):
            raise ValueError(f"'{name}' must be a list")
        out = []
        for item in items:
            if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                    or isinstance(item[1], bool) or not isinstance(item[1], int)):
                raise ValueError(f"'{name}' holds {show(item)}, not [text, integer]")
            out.append((item[0], item[1]))
        return out

    acknowledged = set(pairs("acknowledged", True))
    acknowledged |= {(f"telemetry/{device}", interval) for device, interval in pairs("telemetry_acknowledged", False)}
    sent = {report["seq"] for report in reports}
    if "reports_acknowledged" not in answer:
        seqs = sent  # a platform that does not take reports: they count as delivered
    else:
        seqs_given = answer["reports_acknowledged"]
        if not isinstance(seqs_given, list) or any(isinstance(s, bool) or not isinstance(s, int) for s in seqs_given):
            raise ValueError("'reports_acknowledged' must be a list of integers")
        seqs = sent & set(seqs_given)
    acknowledged |= {(f"report-{seq}", seq) for seq in seqs}
    return acknowledged


class HttpTransport:
    def __init__(self, url: str, gateway_id: str, token: str = "", timeout: float = 10.0, ca_file: str | None = None):
        self.base = url.rstrip("/")
        self.endpoint = f"{self.base}/api/v1/uplink"
        self.shown = redact_url(self.endpoint)  # for messages: no password of the URL in a log line
        self.gateway_id = gateway_id
        self.timeout = timeout
        self.session = requests.Session()
        # Passed with every request: requests lets REQUESTS_CA_BUNDLE override a session's verify.
        self.verify: str | bool = ca_file if ca_file else True
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _request(self, method: str, url: str, where: str, limit: int, **kwargs) -> object:
        """One request; the answer's JSON, or TransportError for anything but a 200 with JSON within ``limit``."""
        deadline = time.monotonic() + self.timeout * READ_TIMEOUTS
        try:
            with self.session.request(method, url, timeout=self.timeout, verify=self.verify, stream=True,
                                      **kwargs) as response:
                body = bytearray()
                while chunk := response.raw.read1(65536, decode_content=True):  # what has arrived, up to 64 KiB
                    body += chunk
                    if len(body) > limit:
                        raise TransportError(f"{where}: answer larger than {limit} bytes", response.status_code)
                    if time.monotonic() > deadline:
                        raise TransportError(f"{where}: answer took longer than {self.timeout * READ_TIMEOUTS:g}s",
                                             response.status_code)
                status = response.status_code
        except (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as error:
            raise TransportError(f"{where}: {type(error).__name__}: {redact_text(str(error))}") from None
        if status != 200:
            raise TransportError(f"{where}: HTTP {status}: {preview(bytes(body))}", status)
        try:
            return loads(bytes(body))
        except ValueError:
            raise TransportError(f"{where}: answer is not JSON (a captive portal or proxy?): {preview(bytes(body))}",
                                 200) from None

    def send(self, revisions: list[dict], telemetry: list[dict] | None = None,
             reports: list[dict] | None = None, health: dict | None = None) -> set[tuple[str, int]]:
        """Send one batch; returns the (key, number) pairs the platform acknowledged.

        Keys are order ids for revisions, ``telemetry/<device>`` for summaries and
        ``report-<seq>`` for reports; ``HEALTH`` when the health summary was delivered.
        """
        body: dict = {"gateway": self.gateway_id, "revisions": revisions, "telemetry": telemetry or []}
        if reports:
            body["reports"] = reports
        if health is not None:
            body["health"] = health
        answer = self._request("POST", self.endpoint, self.shown, MAX_ANSWER_BYTES, data=orjson.dumps(body),
                               headers={"Content-Type": "application/json"})
        try:
            acknowledged = parse_acknowledgement(answer, revisions, reports or [])
        except ValueError as error:
            raise TransportError(f"{self.shown}: unreadable acknowledgement: {error}", 200) from None
        if health is not None:
            acknowledged.add(HEALTH)
        return acknowledged

    def changes(self, after: int, wait: float = 0.0) -> list:
        """Order state changes the platform made since change number ``after`` (the downlink).

        The items are as the platform sent them: the sender checks each one's shape."""
        where = f"downlink {redact_url(self.base)}"
        answer = self._request("GET", f"{self.base}/api/v1/gateways/{self.gateway_id}/changes", where,
                               MAX_CHANGES_BYTES, params={"after": after})
        if not isinstance(answer, dict) or not isinstance(answer.get("changes"), list):
            raise TransportError(f"{where}: answer is not {{\"changes\": [...]}}: {show(answer, 120)}",
                                 200)
        return answer["changes"]

    def close(self) -> None:
        self.session.close()
