"""The AWS target: ComponentResources, the cloud-config serialization and the dynamic providers."""
