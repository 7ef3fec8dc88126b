"""The local target's errors: each message says why and what to do."""

from __future__ import annotations

__all__ = ["LocalClusterError", "PortBusyError"]


class LocalClusterError(RuntimeError):
    """The local cluster cannot do what was asked; the message says why and what to do."""


class PortBusyError(LocalClusterError):
    """A port the cluster needs is held by a program this cluster did not start."""
