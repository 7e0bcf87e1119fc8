"""Bearer tokens per gateway: each gateway gets its own, and one can be revoked without touching the others.

A token is shown once, when it is made; the database keeps only its SHA-256 (``gateway_tokens``).
With any token made (or ``--token`` set), every API call needs a bearer token: ``--token``
opens the whole API (for the district's own tools), a gateway's token only that gateway's
uplink and changes feed (a batch naming another gateway is refused with 403). Workers read the
table again every ``REFRESH`` seconds, so a revocation holds everywhere within that time.

    python -m uplink.receiver.gateway_tokens add gw-street-01 --db receiver.db
    python -m uplink.receiver.gateway_tokens list --db receiver.db
    python -m uplink.receiver.gateway_tokens revoke gw-street-01 --db receiver.db
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time

import click

from uplink.receiver.store import ReceiverStore, StoreError

REFRESH = 5.0  # seconds a worker trusts its copy of the token table
PREFIX = "gwt_"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class GatewayTokens:
    def __init__(self, store: ReceiverStore):
        self.store = store
        self._lock = threading.Lock()
        self._by_hash: dict[str, str] = {}
        self._read_at = -REFRESH

    def add(self, gateway: str, label: str = "") -> str:
        """A new token for ``gateway`` (shown once; only its hash is kept)."""
        token = PREFIX + secrets.token_urlsafe(32)
        self.store.db.write(lambda tx: tx.execute(
            "INSERT INTO gateway_tokens (token_hash, gateway, label, created_at) VALUES (?, ?, ?, ?)",
            [_hash(token), gateway, label, time.time()]))
        self._read_at = -REFRESH
        return token

    def revoke(self, gateway: str, token_id: str | None = None) -> int:
        """Revoke the gateway's tokens (or the one whose id, the first 8 hex of its hash, is given); returns how many."""
        now = time.time()

        def revoke(tx) -> int:
            if token_id:
                tx.execute("UPDATE gateway_tokens SET revoked_at = ? WHERE gateway = ? AND revoked_at IS NULL "
                           "AND token_hash LIKE ?", [now, gateway, token_id.lower() + "%"])
            else:
                tx.execute("UPDATE gateway_tokens SET revoked_at = ? WHERE gateway = ? AND revoked_at IS NULL",
                           [now, gateway])
            return tx.rowcount

        count = self.store.db.write(revoke)
        self._read_at = -REFRESH
        return count

    def list(self) -> list[dict]:
        rows = self.store.db.read("SELECT token_hash, gateway, label, created_at, revoked_at FROM gateway_tokens "
                                  "ORDER BY gateway, created_at")
        return [{"id": r["token_hash"][:8], "gateway": r["gateway"], "label": r["label"], "created_at": r["created_at"],
                 "revoked_at": r["revoked_at"]} for r in rows]

    def _current(self) -> dict[str, str]:
        with self._lock:
            if time.monotonic() - self._read_at >= REFRESH:
                rows = self.store.db.read("SELECT token_hash, gateway FROM gateway_tokens WHERE revoked_at IS NULL")
                self._by_hash = {r["token_hash"]: r["gateway"] for r in rows}
                self._read_at = time.monotonic()
            return self._by_hash

    def enabled(self) -> bool:
        """Whether any gateway token is in force (then the API needs a token)."""
        return bool(self._current())

    def gateway_for(self, token: str) -> str | None:
        """The gateway a valid, unrevoked token belongs to."""
        return self._current().get(_hash(token))


def _tokens(db: str) -> GatewayTokens:
    try:
        return GatewayTokens(ReceiverStore(db))
    except (StoreError, OSError) as error:
        raise click.ClickException(str(error)) from None


DB = click.option("--db", default="receiver.db", show_default=True, metavar="FILE|URL",
                  help="The platform's database, as given to python -m uplink.receiver --db.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Bearer tokens of the gateways (one per gateway; revoke one without touching the others)."""


@main.command()
@click.argument("gateway")
@click.option("--label", default="", help="A note for people (where the box is, who asked).")
@DB
def add(gateway: str, label: str, db: str) -> None:
    """Make a token for GATEWAY and print it (only once: put it in the gateway's [uplink] token)."""
    click.echo(_tokens(db).add(gateway, label))


@main.command(name="list")
@DB
def list_tokens(db: str) -> None:
    """Every token: its id, gateway, label, when made and when revoked."""
    for row in _tokens(db).list():
        state = "revoked" if row["revoked_at"] else "active"
        made = time.strftime("%Y-%m-%d %H:%M", time.gmtime(row["created_at"]))
        click.echo(f"{row['id']}  {row['gateway']}  {state}  made {made} UTC  {row['label']}")


@main.command()
@click.argument("gateway")
@click.option("--id", "token_id", default=None, help="Revoke only this token (its id from `list`).")
@DB
def revoke(gateway: str, token_id: str | None, db: str) -> None:
    """Revoke GATEWAY's tokens (or one of them); the platform's workers stop taking them within 5 s."""
    count = _tokens(db).revoke(gateway, token_id)
    if not count:
        raise click.ClickException(f"no active token of {gateway!r}" + (f" with id {token_id}" if token_id else ""))
    click.echo(f"revoked {count} token(s) of {gateway}")


if __name__ == "__main__":
    main()
