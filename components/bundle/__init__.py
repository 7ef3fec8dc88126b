"""The pure bundle renderer: a node's files and start steps from typed settings. No Pulumi here.

`model` holds the data types, `names` every shared name, `render` the config text and the bundle,
`scripts` the shipped node scripts and fence (`files/`) and the node's data file."""

from components.bundle.model import Bundle, BundleFile, NodeLayout, NodePlace, Sinks, StartStep
from components.bundle.names import (
    GUARD_BACKEND_PREFIX,
    PASSWORD_ALPHABET,
    PASSWORD_CHARACTERS,
    ROUTED_BACKEND,
    guard_backend,
    majority,
    node_name,
    sentinel_id,
)
from components.bundle.render import SENTINEL_PING_PERIOD_MS, render_bundle

__all__ = [
    "GUARD_BACKEND_PREFIX", "PASSWORD_ALPHABET", "PASSWORD_CHARACTERS", "ROUTED_BACKEND",
    "SENTINEL_PING_PERIOD_MS", "Bundle", "BundleFile", "NodeLayout", "NodePlace", "Sinks", "StartStep",
    "guard_backend", "majority", "node_name", "render_bundle", "sentinel_id",
]
