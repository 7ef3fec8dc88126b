"""A running local cluster for the live tests, stopped (by pid) and removed whatever the test did."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from components.local.cluster import LocalCluster
from components.settings import parse_settings

# Fast detection, so the tests that stop a Sentinel or a replica see it within seconds.
FAST = {"downAfterMs": 1000, "failoverTimeoutMs": 5000}


@contextlib.contextmanager
def running_cluster(prefix: str, base_address: str = "127.0.0.11", **settings: Any) -> Iterator[LocalCluster]:
    """A cluster with FAST and `settings` (stack config keys) over the defaults."""
    # A short path: HAProxy's stats socket lives under it and Unix socket paths are short.
    state_dir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    local = LocalCluster(
        parse_settings({**FAST, **settings}), state_dir, base_address=base_address,
        progress=lambda message: print(message, file=sys.stderr),
    )
    try:
        local.up(timeout_s=30)
        yield local
    finally:
        local.down()
        shutil.rmtree(state_dir, ignore_errors=True)


T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, interval_s: float = 0.05) -> T:
    """Poll until `probe` returns something truthy; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s}s")
        time.sleep(interval_s)
