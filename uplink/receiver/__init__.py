"""A reference central platform: receives order revisions, keeps them, drops duplicates."""

from uplink.receiver.server import ReceiverServer
from uplink.receiver.store import ReceiverStore

__all__ = ["ReceiverServer", "ReceiverStore"]
