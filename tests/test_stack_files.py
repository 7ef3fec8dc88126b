"""The example stack files: each parses with the program's own settings rules, and the production
example deploys five nodes into the existing VPC's three zones with no policy violation."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from unittest import mock

import pytest
import yaml

from components.aws.cloud_config import PACKAGES
from components.settings import PROJECT, parse_settings
from policy import rules
from tests import pulumi_harness
from tests.pulumi_harness import ROOT, run_program

pytestmark = pytest.mark.timeout(120)

# The stack files must hold whenever they are deployed: a fixed token expiry in one made every
# preview of it fail once that date had passed. Judged now and years from now.
WRITTEN = datetime(2026, 11, 25, tzinfo=UTC)
LATER = datetime(2040, 1, 1, tzinfo=UTC)


def stack_config(stack: str) -> dict:
    config = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    assert set(k.split(":")[0] for k in config) <= {PROJECT, "aws"}, "only project and provider keys"
    return {k.split(":", 1)[1]: v for k, v in config.items() if k.startswith(f"{PROJECT}:")}


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pytest.mark.parametrize("now", [None, WRITTEN, LATER], ids=["today", "written", "2040"])
def test_stack_file_parses(stack, now):
    parse_settings(stack_config(stack), now=now, aws=True)  # as `pulumi preview` judges it


def test_prod_example_is_five_nodes_in_an_existing_vpc():
    settings = parse_settings(stack_config("prod"), now=WRITTEN)
    assert settings.node_count == 5
    assert settings.vpc_id == "vpc-0123456789abcdef0"
    assert len(settings.subnet_ids) == 3
    assert settings.admin_cidrs and settings.transfer_cidrs
    assert settings.ami_id and settings.tokens.expires_at is None and settings.tokens.lifetime_hours == 24
    assert settings.tokens.scope_role == "user"
    assert settings.package_mirror_prefix_list_ids == ("pl-0123456789abcdef0",)
    assert settings.secret_recovery_window_days == 30


def test_dev_example_under_mocks_installs_its_packages_from_its_mirror():
    program = run_program(stack_config("dev"))
    for instance in program.of_type("aws:ec2/instance:Instance"):
        document = instance.inputs["userData"]
        assert yaml.safe_load(document)["packages"] == list(PACKAGES)
    egress = {(r.inputs["fromPort"], r.inputs.get("prefixListId")) for r in
              program.of_type("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule")}
    assert {(80, "pl-0123456789abcdef0"), (443, "pl-0123456789abcdef0")} <= egress
    violations = {r.name: rules.check(r.typ, r.inputs) for r in program.mocks.resources}
    assert {k: v for k, v in violations.items() if v} == {}


def test_prod_example_under_mocks():
    config = stack_config("prod")
    zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
    subnets = {s: (f"10.20.{i + 1}.0/24", zones[i]) for i, s in enumerate(config["subnetIds"])}
    with mock.patch.dict(pulumi_harness.ADOPTED_SUBNETS, subnets):
        program = run_program(config)
    instances = program.of_type("aws:ec2/instance:Instance")
    assert len(instances) == 5
    assert {i.inputs["ami"] for i in instances} == {"ami-0123456789abcdef0"}
    assert not program.of_type("aws:ec2/vpc:Vpc") and not program.of_type("aws:ec2/eip:Eip")
    per_subnet = Counter(r.inputs["subnetId"] for r in program.of_type("aws:ec2/networkInterface:NetworkInterface"))
    assert sorted(per_subnet.values()) == [1, 2, 2]
    assert program.outputs["vpcId"] == "vpc-0123456789abcdef0"
    violations = {r.name: rules.check(r.typ, r.inputs) for r in program.mocks.resources}
    assert {k: v for k, v in violations.items() if v} == {}
