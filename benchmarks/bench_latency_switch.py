#!/usr/bin/env python3
"""What the node target's latency switch gives between two node namespaces: round trip and throughput.

    sudo python benchmarks/bench_latency_switch.py [--pings 500] [--mb 16]

Two namespaces (the nodes) and a hub, each with a persistent TAP, joined by
`components.node.latency` at: no delay, then 1 ms with 0.5 ms jitter (the drills' setting), and a
veth pair without the switch as the kernel's own figure. Per setting: UDP round trips (one
datagram in flight, 5 ms apart; min, median, p99, max) and one TCP stream of `--mb` MB (bounded to
30 s). Prints JSON. Root only (network namespaces). Everything it starts it stops.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.node.latency import setns

REPO = Path(__file__).resolve().parent.parent
A, B = "10.250.0.11", "10.250.0.12"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class NetnsThread(threading.Thread):
    result: list[Any]  # target's return value, once it has returned


def in_netns(netns: str, target: Callable[..., Any], *args: Any) -> NetnsThread:
    """Run target(*args) in a thread inside `netns` (setns is per thread); returns the thread."""
    result: list[Any] = []

    def body() -> None:
        setns(f"/run/netns/{netns}")
        result.append(target(*args))

    thread = NetnsThread(target=body, daemon=True)
    thread.start()
    thread.result = result
    return thread


def udp_echo(stop: threading.Event) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((B, 7007))
    s.settimeout(0.2)
    while not stop.is_set():
        try:
            data, peer = s.recvfrom(2048)
        except TimeoutError:
            continue
        s.sendto(data, peer)
    s.close()


def udp_pings(count: int) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    rtts, lost = [], 0
    for i in range(count + 5):
        t = time.perf_counter()
        s.sendto(i.to_bytes(4, "big") + b"x" * 60, (B, 7007))
        try:
            s.recv(2048)
        except TimeoutError:
            lost += 1
            continue
        if i >= 5:  # the first ones pay for ARP
            rtts.append((time.perf_counter() - t) * 1000)
        time.sleep(0.005)
    s.close()
    rtts.sort()
    return {"pings": len(rtts), "lost": lost, "rtt_ms_min": round(rtts[0], 3),
            "rtt_ms_median": round(statistics.median(rtts), 3),
            "rtt_ms_p99": round(rtts[int(len(rtts) * 0.99) - 1], 3), "rtt_ms_max": round(rtts[-1], 3)}


def tcp_sink(ready: threading.Event) -> int:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((B, 7008))
    s.listen()
    s.settimeout(10)
    ready.set()
    conn, _ = s.accept()
    conn.settimeout(30)
    total = 0
    while data := conn.recv(1 << 16):
        total += len(data)
    conn.close()
    s.close()
    return total


def tcp_send(mb: int) -> dict:
    s = socket.create_connection((B, 7008), timeout=30)
    block = b"x" * (1 << 20)
    t = time.perf_counter()
    deadline = t + 30
    sent = 0
    while sent < mb and time.perf_counter() < deadline:
        s.sendall(block)
        sent += 1
    s.shutdown(socket.SHUT_WR)
    s.recv(1)  # until the peer closes: everything was received
    took = time.perf_counter() - t
    s.close()
    return {"tcp_mb": sent, "tcp_mb_per_s": round(sent / took, 1)}


def measure(ns_a: str, ns_b: str, pings: int, mb: int) -> dict:
    stop = threading.Event()
    echo = in_netns(ns_b, udp_echo, stop)
    time.sleep(0.2)
    figures = in_netns(ns_a, udp_pings, pings)
    figures.join(60)
    stop.set()
    echo.join(2)
    ready = threading.Event()
    sink = in_netns(ns_b, tcp_sink, ready)
    ready.wait(5)
    sender = in_netns(ns_a, tcp_send, mb)
    sender.join(40)
    sink.join(5)
    return {**figures.result[0], **sender.result[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pings", type=int, default=500)
    parser.add_argument("--mb", type=int, default=16)
    args = parser.parse_args()
    prefix = f"hstlat{os.getpid()}"
    ns = {n: f"{prefix}{n}" for n in ("a", "b", "hub")}
    results = {}
    switch = None
    try:
        for n in ns.values():
            ip("netns", "add", n)
            ip("-n", n, "link", "set", "lo", "up")
        # The kernel's own figure: a veth pair, no switch.
        ip("-n", ns["a"], "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", ns["b"])
        for n, address in ((ns["a"], A), (ns["b"], B)):
            ip("-n", n, "addr", "add", f"{address}/24", "dev", "veth0")
            ip("-n", n, "link", "set", "veth0", "up")
        results["veth, no switch"] = measure(ns["a"], ns["b"], args.pings, args.mb)
        for n in (ns["a"], ns["b"]):
            ip("-n", n, "link", "del", "veth0") if n == ns["a"] else None
        for n, address, dev in ((ns["a"], A, "eth0"), (ns["b"], B, "eth0"), (ns["hub"], "10.250.0.1", "sw0")):
            ip("-n", n, "tuntap", "add", "dev", dev, "mode", "tap")
            ip("-n", n, "addr", "add", f"{address}/24", "dev", dev)
            ip("-n", n, "link", "set", dev, "up")
        for delay, jitter in ((0.0, 0.0), (1.0, 0.5)):
            control = f"/tmp/{prefix}.sock"
            switch = subprocess.Popen(
                [sys.executable, "-m", "components.node.latency", control, str(delay), str(jitter),
                 f"a={ns['a']}:eth0", f"b={ns['b']}:eth0", f"hub={ns['hub']}:sw0"],
                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL)
            time.sleep(1.0)
            label = f"switch, delay {delay:g} ms, jitter {jitter:g} ms"
            results[label] = measure(ns["a"], ns["b"], args.pings, args.mb)
            switch.terminate()
            switch.wait(10)
            switch = None
    finally:
        if switch is not None:
            switch.kill()
            switch.wait(10)
        for n in ns.values():
            subprocess.run(["ip", "netns", "del", n], check=False, capture_output=True)
    print(json.dumps({"command": "python benchmarks/bench_latency_switch.py " + " ".join(sys.argv[1:]),
                      "loadavg": Path("/proc/loadavg").read_text().split()[:3], "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
