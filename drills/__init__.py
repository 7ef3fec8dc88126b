"""Fault drills: development tooling that breaks a running cluster and counts what clients lost.

Every drill starts a fresh `LocalCluster` (the very bundles the AWS target renders, run as processes
on loopback), writes through every node's HAProxy as HST Server does, injects one fault, and returns
a dict of figures:

- `recovery_s`: from the fault to the first acknowledged write, sent after the fault, through EVERY
  node's HAProxy (the slowest HAProxy decides; `recovery_by_haproxy` has each one);
- `acked`, `lost` (acknowledged and missing from the final primary afterwards), `refused` (errors
  the client saw, by kind in `refused_by_kind`);
- `failovers` (promotions Sentinel announced with `+promoted-slave`), `false_failover` (more
  promotions than the fault justifies: any at all for a short pause, a second one after a kill).

The naive configuration (`naive=True`) is the COMPARISON BASELINE only: the rendered bundle with
the Sentinel-majority guard removed from HAProxy and `min-replicas-to-write 0`, made by rewriting
the rendered files before the node first boots (`drills.transforms`); the product renderer has no
naive mode.

Modules, by job: `clients` (the bounded writers, the read-back), `fleet` (the writers of every
node), `observers` (Sentinel events, HAProxy states), `transforms` (`DrillCluster`, the baseline),
`drill` (one run's clock and shared steps), `scenarios` (the drills), `figures`, `runner` (fresh
cluster per run, private network namespaces), `summary`. Plain Python, no Pulumi;
`scripts/drill.py` prints the figures of N runs as JSON.
"""
