"""Fault drills: development tooling that breaks a running cluster and counts what clients lost."""
