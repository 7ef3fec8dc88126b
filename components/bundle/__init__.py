"""The pure bundle renderer: a node's files and start steps from typed settings. No Pulumi here."""

from components.bundle.render import (
    PASSWORD_ALPHABET,
    PASSWORD_PLACEHOLDER,
    SENTINEL_PING_PERIOD_MS,
    Bundle,
    BundleFile,
    NodeLayout,
    NodePlace,
    StartStep,
    node_name,
    render_bundle,
    sentinel_id,
)

__all__ = [
    "PASSWORD_ALPHABET", "PASSWORD_PLACEHOLDER", "SENTINEL_PING_PERIOD_MS", "Bundle", "BundleFile",
    "NodeLayout", "NodePlace", "StartStep", "node_name", "render_bundle", "sentinel_id",
]
