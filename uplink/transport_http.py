"""HTTP transport: a batch of order revisions as JSON, acknowledged per (order id, revision).

Request: ``POST {url}/api/v1/revisions`` with ``{"gateway": ID, "revisions": [body, ...]}``
and ``Authorization: Bearer TOKEN`` when a token is set.
Response 200: ``{"acknowledged": [[order_id, revision], ...], "duplicates": N}``; a revision
the platform already had is acknowledged too, so a resend after a crash is harmless.
"""

from __future__ import annotations

import requests


class TransportError(Exception):
    """The platform did not acknowledge the batch; ``status`` is the HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class HttpTransport:
    def __init__(self, url: str, gateway_id: str, token: str = "", timeout: float = 10.0):
        self.endpoint = f"{url.rstrip('/')}/api/v1/revisions"
        self.gateway_id = gateway_id
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def send(self, revisions: list[dict]) -> set[tuple[str, int]]:
        """Send one batch; returns the (order id, revision) pairs the platform acknowledged."""
        try:
            response = self.session.post(
                self.endpoint,
                json={"gateway": self.gateway_id, "revisions": revisions},
                timeout=self.timeout,
            )
        except requests.RequestException as error:
            raise TransportError(f"{self.endpoint}: {type(error).__name__}: {error}") from None
        if response.status_code != 200:
            raise TransportError(f"{self.endpoint}: HTTP {response.status_code}: {response.text[:200]}", response.status_code)
        try:
            acknowledged = response.json()["acknowledged"]
            return {(str(order_id), int(revision)) for order_id, revision in acknowledged}
        except (ValueError, KeyError, TypeError) as error:
            raise TransportError(f"{self.endpoint}: unreadable acknowledgement: {error}", 200) from None

    def close(self) -> None:
        self.session.close()
