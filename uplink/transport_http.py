"""HTTP transport: batches of order revisions and telemetry summaries as JSON.

Request: ``POST {url}/api/v1/uplink`` with
``{"gateway": ID, "revisions": [order revision, ...], "telemetry": [summary, ...]}`` and
``Authorization: Bearer TOKEN`` when a token is set; TLS is checked against ``ca_file``
when given (else the system's CAs).
Response 200: ``{"acknowledged": [[order_id, revision], ...],
"telemetry_acknowledged": [[device, interval], ...], "duplicates": N}``. A revision the
platform already had is acknowledged too, so a resend after a crash is harmless.
"""

from __future__ import annotations

import requests


class TransportError(Exception):
    """The platform did not acknowledge the batch; ``status`` is the HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class HttpTransport:
    def __init__(self, url: str, gateway_id: str, token: str = "", timeout: float = 10.0, ca_file: str | None = None):
        self.base = url.rstrip("/")
        self.endpoint = f"{self.base}/api/v1/uplink"
        self.gateway_id = gateway_id
        self.timeout = timeout
        self.session = requests.Session()
        # Passed with every request: requests lets REQUESTS_CA_BUNDLE override a session's verify.
        self.verify: str | bool = ca_file if ca_file else True
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def send(self, revisions: list[dict], telemetry: list[dict] | None = None) -> set[tuple[str, int]]:
        """Send one batch; returns the (key, number) pairs the platform acknowledged.

        Keys are order ids for revisions and ``telemetry/<device>`` for summaries.
        """
        try:
            response = self.session.post(
                self.endpoint,
                json={"gateway": self.gateway_id, "revisions": revisions, "telemetry": telemetry or []},
                timeout=self.timeout, verify=self.verify,
            )
        except requests.RequestException as error:
            raise TransportError(f"{self.endpoint}: {type(error).__name__}: {error}") from None
        if response.status_code != 200:
            raise TransportError(f"{self.endpoint}: HTTP {response.status_code}: {response.text[:200]}", response.status_code)
        try:
            answer = response.json()
            acknowledged = {(str(order_id), int(revision)) for order_id, revision in answer["acknowledged"]}
            for device, interval in answer.get("telemetry_acknowledged", []):
                acknowledged.add((f"telemetry/{device}", int(interval)))
            return acknowledged
        except (ValueError, KeyError, TypeError) as error:
            raise TransportError(f"{self.endpoint}: unreadable acknowledgement: {error}", 200) from None

    def changes(self, after: int, wait: float = 0.0) -> list[dict]:
        """Order state changes the platform made since change number ``after`` (the downlink)."""
        try:
            response = self.session.get(
                f"{self.base}/api/v1/gateways/{self.gateway_id}/changes",
                params={"after": after}, timeout=self.timeout, verify=self.verify,
            )
        except requests.RequestException as error:
            raise TransportError(f"downlink: {type(error).__name__}: {error}") from None
        if response.status_code != 200:
            raise TransportError(f"downlink: HTTP {response.status_code}: {response.text[:200]}", response.status_code)
        return response.json()["changes"]

    def close(self) -> None:
        self.session.close()
