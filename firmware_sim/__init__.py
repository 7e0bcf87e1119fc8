"""Firmware simulator: a street of smart manhole covers and bins publishing over MQTT."""
