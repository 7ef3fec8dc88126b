#!/usr/bin/env python3
"""How long bearer-token work takes: RSA signing-key generation by length, and minting rate.

Answers two sizing questions: is ``--token-key-length 8192/16384`` bearable in a
``pulumi up`` (key generation dominates), and how many tokens per second one key can mint.

    python benchmarks/bench_tokens.py [--with-16384] [--runs 5] [--tokens 100]

Prints one JSON document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

import cryptography

from components.runtime.bearer_token import TokenRequest, generate_signing_key, mint

KEY_LENGTHS = (1024, 2048, 4096, 8192)
MINT_KEY_LENGTH = 4096
HEARTBEAT_S = 5.0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _generate_with_heartbeat(bits: int) -> float:
    """Generate one key and return seconds; a 16384-bit key can take minutes, so show that we are alive."""
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(HEARTBEAT_S):
            print(".", end="", file=sys.stderr, flush=True)

    ticker = threading.Thread(target=heartbeat, daemon=True)
    ticker.start()
    started = time.perf_counter()
    try:
        generate_signing_key(bits)
    finally:
        done.set()
        ticker.join()
    elapsed = time.perf_counter() - started
    if elapsed >= HEARTBEAT_S:
        print(file=sys.stderr)  # end the line of dots
    return elapsed


def time_key_generation(bits: int, runs: int) -> dict[str, Any]:
    """Seconds per key; RSA prime search is random, so report the spread, not one run."""
    samples = []
    for run in range(runs):
        _log(f"generating {bits}-bit key {run + 1}/{runs}")
        samples.append(_generate_with_heartbeat(bits))
    return {
        "bits": bits,
        "runs": runs,
        "median_s": round(statistics.median(samples), 4),
        "min_s": round(min(samples), 4),
        "max_s": round(max(samples), 4),
    }


def time_minting(tokens: int, runs: int) -> dict[str, Any]:
    """Tokens per second with one 4096-bit key (signing dominates; zlib and JSON are noise)."""
    key = generate_signing_key(MINT_KEY_LENGTH)
    now = datetime.now(UTC)
    requests = [TokenRequest(access_key="bench-access-key", user_id=f"user-{i}") for i in range(tokens)]
    rates = []
    for run in range(runs):
        _log(f"minting {tokens} tokens, run {run + 1}/{runs}")
        started = time.perf_counter()
        for request in requests:
            mint(request, key, now=now)
        rates.append(tokens / (time.perf_counter() - started))
    return {
        "key_bits": MINT_KEY_LENGTH,
        "tokens_per_run": tokens,
        "runs": runs,
        "median_tokens_per_s": round(statistics.median(rates), 1),
        "min_tokens_per_s": round(min(rates), 1),
        "max_tokens_per_s": round(max(rates), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--with-16384", action="store_true", help="also time one 16384-bit key (minutes)")
    parser.add_argument("--runs", type=int, default=5, help="key generations per length (default 5)")
    parser.add_argument("--mint-runs", type=int, default=3, help="minting runs (default 3)")
    parser.add_argument("--tokens", type=int, default=100, help="tokens per minting run (default 100)")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(KEY_LENGTHS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    key_generation = [time_key_generation(bits, args.runs) for bits in args.lengths]
    if args.with_16384:
        _log("generating one 16384-bit key; expect one to several minutes")
        key_generation.append(time_key_generation(16384, 1))
    result = {
        "benchmark": "bearer_tokens",
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "cpu_count": os.cpu_count(),
        "key_generation": key_generation,
        "minting": time_minting(args.tokens, args.mint_runs),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
