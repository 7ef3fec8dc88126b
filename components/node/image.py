"""The node root filesystem: Debian 12 built once with mmdebstrap, cached outside the checkout.

The cache key is the hash of everything that decides the image (suite, mirrors, package list and
the customize hook), so a changed package list builds a new image and an unchanged one is reused.
Builds go to a temporary directory renamed into place at the end, under a lock: a killed build
leaves no half image behind, and two runs do not build the same image at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

from components.aws.cloud_config import PACKAGES

SUITE = "bookworm"
MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# What a Debian 12 cloud image boots with, minus the kernel (containers share the host's).
BASE_PACKAGES = (
    "systemd-sysv", "udev", "dbus", "cloud-init", "iproute2", "ca-certificates", "netbase",
    "procps", "sudo", "gzip",
)
CUSTOMIZE = Path(__file__).with_name("image-customize.sh")
CACHE_ROOT = Path(os.environ.get("HST_HA_NODE_IMAGE_CACHE", "/var/cache/hst-ha/node-image"))
BUILD_TIMEOUT_S = 20 * 60


class ImageError(RuntimeError):
    """The image cannot be built here; the message says why and what to install or change."""


def packages() -> tuple[str, ...]:
    return tuple(sorted(set(BASE_PACKAGES) | set(PACKAGES)))


def image_key() -> str:
    h = hashlib.sha256()
    for part in (SUITE, *MIRRORS, *packages(), CUSTOMIZE.read_text()):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def image_path() -> Path:
    return CACHE_ROOT / image_key() / "rootfs"


def ensure_image(log: TextIO = sys.stderr) -> Path:
    """The cached root filesystem, built first if missing (about 3 minutes cold)."""
    target = image_path()
    if (target / "etc/os-release").exists():
        return target
    if shutil.which("mmdebstrap") is None:
        raise ImageError("mmdebstrap is not installed: apt-get install mmdebstrap (or run scripts/setup.sh)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "etc/os-release").exists():  # another run built it while we waited
            return target
        partial = target.parent / f"rootfs.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        started = time.monotonic()
        print(f"node image: building {target} with mmdebstrap (a few minutes, once)", file=log, flush=True)
        argv = [
            "mmdebstrap", "--variant=minbase", "--mode=root", "--format=directory",
            f"--include={','.join(packages())}",
            f"--customize-hook={CUSTOMIZE}",
            SUITE, str(partial), *MIRRORS,
        ]
        try:
            result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            shutil.rmtree(partial, ignore_errors=True)
            raise ImageError(
                f"mmdebstrap did not finish in {BUILD_TIMEOUT_S} s (is the Debian mirror reachable?)") from None
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            tail = "\n".join(result.stderr.strip().splitlines()[-15:])
            raise ImageError(
                f"mmdebstrap failed (exit {result.returncode}); it needs the Debian mirror, which a test run's "
                f"private network namespace cannot reach: `python -m components.node.image` (which "
                f"./scripts/setup.sh test runs first) builds the image outside it:\n{tail}")
        os.rename(partial, target)
        (target.parent / "packages.txt").write_text("\n".join(packages()) + "\n")
        print(f"node image: built in {time.monotonic() - started:.0f} s", file=log, flush=True)
    return target


if __name__ == "__main__":
    # Built here, before the tests: inside their private network namespace the mirror is unreachable.
    try:
        print(ensure_image())
    except ImageError as error:
        sys.exit(f"node image: {error}")
