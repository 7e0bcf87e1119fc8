"""The gateway's SQLite file and the outbox of revisions waiting for the platform."""

from edge.outbox.database import open_database, transaction
from edge.outbox.outbox import Outbox, Pending, unsent

__all__ = ["Outbox", "Pending", "open_database", "transaction", "unsent"]
