"""hst-ha: a highly-available Redis backend for an IBM Aspera HST Server cluster on AWS."""

import pulumi

from components.aws.cluster import HstCluster
from components.outputs import attribute_name, output_specs
from components.settings import SettingsError, read_settings

try:
    settings = read_settings(pulumi.Config().get)
except SettingsError as error:
    # A clean message naming every bad key, before any resource is registered.
    raise pulumi.RunError(str(error)) from None

cluster = HstCluster("hst-ha", settings)

# The stack outputs are the component's, named and typed once in components/outputs.py.
for spec in output_specs():
    pulumi.export(spec.name, getattr(cluster, attribute_name(spec.name)))
