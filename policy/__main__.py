"""hst-ha policy pack: the plain rules of `rules.py`, each a MANDATORY resource validation.

Run from the repository root with `pulumi preview --policy-pack policy` (or `pulumi up ...`).
The CLI runs this folder as a program, so `rules` is imported as a sibling module; nothing
from the project's `components` package is needed, and the folder can be published alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyConfigSchema,
    PolicyPack,
    ReportViolation,
    ResourceValidation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

import rules

# The cluster's ports are stack settings; a stack that moves them tells the pack with
# `pulumi preview --policy-pack policy --policy-pack-config policy-config.json`.
PORT_CONFIG = PolicyConfigSchema(
    properties={
        "redisPort": {"type": "integer", "default": rules.REDIS_PORT},
        "sentinelPort": {"type": "integer", "default": rules.SENTINEL_PORT},
        "haproxyPort": {"type": "integer", "default": rules.HAPROXY_PORT},
    }
)


def _validate(rule: rules.Rule, with_ports: bool) -> ResourceValidation:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        options: dict[str, Any] = {}
        if with_ports:
            config: Mapping[str, Any] = args.get_config() or {}
            options = {
                "redis_port": int(config.get("redisPort", rules.REDIS_PORT)),
                "sentinel_port": int(config.get("sentinelPort", rules.SENTINEL_PORT)),
                "haproxy_port": int(config.get("haproxyPort", rules.HAPROXY_PORT)),
            }
        # `args.props` raises UnknownValueError for a value not known yet (a fresh stack's
        # preview); the SDK turns that into an advisory note and the rule runs again at `up`.
        for violation in rule(args.resource_type, args.props, **options):
            report_violation(violation, None)  # no urn: the resource under validation

    return validate


POLICIES: list[Policy] = [
    ResourceValidationPolicy(
        name=name,
        description=description,
        enforcement_level=EnforcementLevel.MANDATORY,
        validate=_validate(rule, with_ports=rule is rules.cluster_ports_closed),
        config_schema=PORT_CONFIG if rule is rules.cluster_ports_closed else None,
    )
    for name, (rule, description) in rules.RULES.items()
]

PolicyPack(
    name="hst-ha-security",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=POLICIES,
)
