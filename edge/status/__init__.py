"""Health of the running gateway: one snapshot, shown as Prometheus metrics, a status page and `edge status`."""
