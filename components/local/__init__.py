"""The local target: the AWS bundles run as processes on loopback "hosts"."""
