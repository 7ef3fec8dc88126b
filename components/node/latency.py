"""A userspace Ethernet switch with per-frame delay and jitter between the node target's namespaces.

This kernel has no sch_netem (nor any tc qdisc or classifier, nor iptables/nft), so latency
between node namespaces cannot come from the kernel. It can come from /dev/net/tun: each port is a
persistent TAP device in one namespace (a node's `eth0`, the hub's `sw0`), and this process forwards
the Ethernet frames between them after a delay.

- Forwarding: learning by source MAC, flooding broadcast, multicast and unknown destinations (so
  ARP works as on a wire).
- Delay: each frame is due `delay + uniform(-jitter, +jitter)` after it was read, but never before
  the previous frame between the same two ports (per port pair FIFO): jitter varies the latency
  without reordering a TCP flow, as a real path between two hosts does not reorder either.
- Faults: `cut PORT` drops every frame to and from that port, silently both ways (a partition as
  EC2 shows it: no carrier change, no ICMP, the node keeps its address); `heal PORT` ends it.
  Requests arrive on a Unix datagram socket; the reply is sent once the change is in effect.

    python -m components.node.latency CONTROL_SOCKET DELAY_MS JITTER_MS NAME=NETNS:IFNAME ...

The TAP devices must exist (`ip -n NETNS tuntap add dev IFNAME mode tap`): they are persistent,
so a node keeps its link (without carrier) while the switch is not running, and `ip netns del`
removes them. The switch ends on SIGTERM.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import heapq
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Port", "Switch", "open_tap", "request"]

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
MAX_FRAME = 65536
BROADCAST_BIT = 0x01  # the I/G bit of the destination MAC's first octet: broadcast and multicast
QUEUE_BOUND = 20_000  # frames held at once; beyond this a frame is dropped, as a full switch buffer does

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def setns(path: str) -> None:
    """Move the calling thread into the network namespace at `path` (Python 3.11 has no os.setns)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def open_tap(netns: str, ifname: str) -> int:
    """Attach to the persistent TAP `ifname` in namespace `netns`; the fd keeps working in any namespace."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        setns(f"/run/netns/{netns}")
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(), IFF_TAP | IFF_NO_PI))
        finally:
            if _libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the switch's own namespace failed")
    finally:
        os.close(home)
    return fd


@dataclass
class Port:
    name: str
    fd: int
    cut: bool = False
    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0


@dataclass(order=True)
class _Due:
    due: float
    seq: int
    port: int = field(compare=False)
    frame: bytes = field(compare=False)


class Switch:
    def __init__(self, ports: list[Port], delay_s: float, jitter_s: float, control: socket.socket | None = None,
                 seed: int | None = None) -> None:
        if jitter_s > delay_s:
            raise ValueError(f"jitter ({jitter_s * 1000:g} ms) larger than the delay ({delay_s * 1000:g} ms) "
                             "would make some frames early")
        self.ports = ports
        self.delay_s = delay_s
        self.jitter_s = jitter_s
        self.control = control
        self.macs: dict[bytes, int] = {}
        self.queue: list[_Due] = []
        self.last_due: dict[tuple[int, int], float] = {}
        self.seq = 0
        self.random = random.Random(seed)
        self.running = True

    def _schedule(self, now: float, src: int, dst: int, frame: bytes) -> None:
        target = self.ports[dst]
        if target.cut or len(self.queue) >= QUEUE_BOUND:
            target.dropped += 1
            return
        due = now + self.delay_s + self.random.uniform(-self.jitter_s, self.jitter_s)
        due = max(due, self.last_due.get((src, dst), 0.0))
        self.last_due[(src, dst)] = due
        self.seq += 1
        heapq.heappush(self.queue, _Due(due, self.seq, dst, frame))

    def _receive(self, index: int) -> None:
        port = self.ports[index]
        for _ in range(64):  # a bounded batch per wakeup: one busy port does not starve the others
            try:
                frame = os.read(port.fd, MAX_FRAME)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EBADFD:  # no carrier on the other side yet
                    return
                raise
            if len(frame) < 14:
                continue
            port.frames_in += 1
            if port.cut:
                port.dropped += 1
                continue
            now = time.monotonic()
            dst, src = frame[0:6], frame[6:12]
            if not src[0] & BROADCAST_BIT:
                self.macs[src] = index
            out = None if dst[0] & BROADCAST_BIT else self.macs.get(dst)
            if out is None:
                for other in range(len(self.ports)):
                    if other != index:
                        self._schedule(now, index, other, frame)
            elif out != index:
                self._schedule(now, index, out, frame)

    def _send_due(self) -> None:
        now = time.monotonic()
        while self.queue and self.queue[0].due <= now:
            item = heapq.heappop(self.queue)
            port = self.ports[item.port]
            if port.cut:
                port.dropped += 1
                continue
            try:
                os.write(port.fd, item.frame)
                port.frames_out += 1
            except OSError:  # queue full or the device went away: the frame is lost, as on a wire
                port.dropped += 1

    def _answer(self) -> None:
        assert self.control is not None
        try:
            data, sender = self.control.recvfrom(4096)
        except BlockingIOError:
            return
        words = data.decode(errors="replace").split()
        reply: dict[str, object]
        names = {p.name: p for p in self.ports}
        if len(words) == 2 and words[0] in ("cut", "heal") and words[1] in names:
            names[words[1]].cut = words[0] == "cut"
            if words[0] == "cut":  # frames already queued to or from it are lost with the link
                self.queue = [d for d in self.queue if self.ports[d.port].name != words[1]]
                heapq.heapify(self.queue)
            reply = {"ok": True, "cut": sorted(p.name for p in self.ports if p.cut)}
        elif words == ["stats"]:
            reply = {"ok": True, "delay_ms": self.delay_s * 1000, "jitter_ms": self.jitter_s * 1000,
                     "queued": len(self.queue),
                     "ports": {p.name: {"in": p.frames_in, "out": p.frames_out, "dropped": p.dropped, "cut": p.cut}
                               for p in self.ports}}
        else:
            reply = {"ok": False, "error": f"unknown request {data[:80]!r}: cut|heal PORT, or stats"}
        if sender:
            with contextlib.suppress(OSError):
                self.control.sendto(json.dumps(reply).encode(), sender)

    def run(self) -> None:
        fds = {p.fd: i for i, p in enumerate(self.ports)}
        readable = list(fds)
        if self.control is not None:
            readable.append(self.control.fileno())
        while self.running:
            timeout = None
            if self.queue:
                timeout = max(0.0, self.queue[0].due - time.monotonic())
            # select, not epoll/poll: their timeouts are whole milliseconds, which would turn a 1 ms
            # delay into 1-2 ms; select's is in microseconds.
            try:
                ready, _, _ = select.select(readable, [], [], timeout if timeout is not None else 0.5)
            except InterruptedError:
                continue
            for fd in ready:
                if fd in fds:
                    self._receive(fds[fd])
                else:
                    self._answer()
            self._send_due()


def request(control_path: str | os.PathLike[str], text: str, timeout_s: float = 5.0) -> dict[str, object]:
    """Send one request to a running switch and return its reply (raises OSError when it does not answer)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    reply_path = f"{control_path}.client-{os.getpid()}-{time.monotonic_ns()}"
    try:
        client.bind(reply_path)
        client.settimeout(timeout_s)
        client.sendto(text.encode(), str(control_path))
        data = client.recv(65536)
    finally:
        client.close()
        Path(reply_path).unlink(missing_ok=True)
    reply = json.loads(data)
    if not reply.get("ok"):
        raise OSError(f"the latency switch refused {text!r}: {reply.get('error')}")
    return reply


def main(argv: list[str]) -> int:
    control_path, delay_ms, jitter_ms, *specs = argv
    ports = []
    for spec in specs:
        name, _, where = spec.partition("=")
        netns, _, ifname = where.partition(":")
        ports.append(Port(name, open_tap(netns, ifname)))
    Path(control_path).unlink(missing_ok=True)
    control = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    control.bind(control_path)
    os.chmod(control_path, 0o600)
    control.setblocking(False)
    switch = Switch(ports, float(delay_ms) / 1000, float(jitter_ms) / 1000, control)

    def stop(*_: object) -> None:
        switch.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"latency switch: {len(ports)} ports, delay {delay_ms} ms, jitter {jitter_ms} ms", flush=True)
    try:
        switch.run()
    finally:
        control.close()
        Path(control_path).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
