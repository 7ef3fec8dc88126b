"""Test tiers: every test module is in exactly one, by what it needs to run (README, "Tests").

The tier is assigned here, by module, so that a module's own `pytestmark` stays about the module;
a module that marks itself with a tier keeps it. A module in no tier stops the collection: a new
module that starts servers must not slip into the fast inner loop unnoticed.
"""

from __future__ import annotations

import pytest

# The markers are registered, with their descriptions, in pyproject.toml ([tool.pytest.ini_options]).
TIERS = {
    # Plain Python (moto and botocore's Stubber stand in for AWS, in process).
    "test_bearer_token_cli": "unit",
    "test_document": "unit",
    "test_drill_figures": "unit",
    "test_providers": "unit",
    "test_secret_store": "unit",
    "test_settings": "unit",
    "test_switchover": "unit",
    "test_live_settings": "unit",
    "test_live_settings_provider": "unit",
    "test_secret_entries": "unit",
    # The Pulumi program under pulumi.runtime.set_mocks.
    "test_consumer_example": "program",
    "test_policy": "program",
    "test_preview": "program",
    "test_program": "program",
    "test_monitoring": "program",
    "test_readme": "program",
    "test_stack_files": "program",
    # The project's own tools: ruff and mypy.
    "test_code_quality": "lint",
    # Real binaries on rendered files or single processes: redis-server, redis-sentinel, haproxy,
    # cloud-init schema, shellcheck, openssl, check-jsonschema, actionlint.
    "test_access_key": "binaries",
    "test_bearer_token": "binaries",
    "test_bundle": "binaries",
    "test_node_scripts": "binaries",
    "test_start_gate": "binaries",
    "test_tls": "binaries",
    "test_workflows": "binaries",
    # Whole local clusters on loopback hosts.
    "test_local_cluster": "live",
    "test_observe_live": "live",
    "test_quorum": "live",
    "test_quorum_provider_live": "live",
    "test_rotation": "live",
    "test_live_settings_live": "live",
    "test_tls_live": "live",
    # Fault drills, each on a fresh local cluster.
    "test_drills": "drills",
    # The node target: containers booting the program's cloud-init user data under systemd.
    "test_node_target": "node",
}
ALL_TIERS = frozenset(TIERS.values())


def tier_of(module: str) -> str | None:
    return TIERS.get(module)


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    untiered: set[str] = set()
    for item in items:
        if any(item.get_closest_marker(name) for name in ALL_TIERS):
            continue
        module = item.path.stem
        tier = tier_of(module)
        if tier is None:
            untiered.add(module)
        else:
            item.add_marker(getattr(pytest.mark, tier))
    if untiered:
        raise pytest.UsageError(
            f"tests/{', '.join(sorted(untiered))}: in no test tier; add each to TIERS in tests/conftest.py"
        )
