"""Ports of the design contract that no setting changes, for the renderer and the settings alike.

Stdlib only: the node imports the renderer (components/bundle/boot.py) with the distribution's
Python, so nothing on that path may need more than the stdlib.
"""

from __future__ import annotations

__all__ = ["HAPROXY_METRICS_PORT", "NODE_API_PORT", "REDIS_EXPORTER_PORT", "SENTINEL_EXPORTER_PORT", "SSH_FASP_PORT"]

# The Node API and SSH/FASP are HSTS's own.
NODE_API_PORT = 9092
SSH_FASP_PORT = 33001
# Metrics ports on each node's private address (components/bundle/observe.py): redis_exporter for
# Redis and for Sentinel, and HAProxy's own exporter (with the fence's counters at /fence).
REDIS_EXPORTER_PORT = 9121
SENTINEL_EXPORTER_PORT = 9122
HAPROXY_METRICS_PORT = 8405
