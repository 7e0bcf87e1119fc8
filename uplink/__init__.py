"""Uplink to the district's central platform, and a reference central receiver."""
