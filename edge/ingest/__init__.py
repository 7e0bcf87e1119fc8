"""Ingest: subscribe to the devices and decode their payloads into readings."""
