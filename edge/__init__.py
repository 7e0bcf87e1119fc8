"""Street-side IoT edge gateway: device readings in, one work order per real problem out."""

__version__ = "0.1.0"
