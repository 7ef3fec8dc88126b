"""Dynamic providers of hst-ha, each a thin adapter over a plain module.

- `RedisUsersSecret` (`pulumi-python:dynamic/hstha:RedisUsersSecret`): the Redis users' passwords, made
  and kept only in their secret, before the nodes.
- `ClusterTls` (`pulumi-python:dynamic/hstha:ClusterTls`): with tlsEnabled, the cluster CA (a deployer-only
  secret) and a certificate per node (the nodes' secret), made and kept only in Secrets Manager, before the nodes.
- `SigningKey` (`pulumi-python:dynamic/hstha:SigningKey`): the bearer-token signing key, before the nodes.
- `SentinelQuorum` (`pulumi-python:dynamic/hstha:SentinelQuorum`): proves the cluster failover-ready.
- `BootstrapTokens` (`pulumi-python:dynamic/hstha:BootstrapTokens`): bootstrap bearer tokens, after the quorum.

`mint_bootstrap_tokens` is the minting logic the providers share with the local target
(`components.runtime.bootstrap`).
"""

from components.aws.providers._common import PROVIDER_VERSION, aws_store, local_store
from components.aws.providers.cluster_tls import ClusterTls, ClusterTlsArgs, ClusterTlsProvider
from components.aws.providers.redis_users import RedisUsersSecret, RedisUsersSecretArgs, RedisUsersSecretProvider
from components.aws.providers.sentinel_quorum import SentinelQuorum, SentinelQuorumArgs, SentinelQuorumProvider
from components.aws.providers.tokens import (
    BootstrapTokens,
    BootstrapTokensArgs,
    BootstrapTokensProvider,
    SigningKey,
    SigningKeyArgs,
    SigningKeyProvider,
)
from components.runtime.bootstrap import (
    BEARER_TOKENS_SECRET,
    SIGNING_KEY_SECRET,
    BootstrapResult,
    mint_bootstrap_tokens,
)

__all__ = [
    "BEARER_TOKENS_SECRET",
    "BootstrapResult",
    "BootstrapTokens",
    "BootstrapTokensArgs",
    "BootstrapTokensProvider",
    "ClusterTls",
    "ClusterTlsArgs",
    "ClusterTlsProvider",
    "PROVIDER_VERSION",
    "RedisUsersSecret",
    "RedisUsersSecretArgs",
    "RedisUsersSecretProvider",
    "SIGNING_KEY_SECRET",
    "SentinelQuorum",
    "SentinelQuorumArgs",
    "SentinelQuorumProvider",
    "SigningKey",
    "SigningKeyArgs",
    "SigningKeyProvider",
    "aws_store",
    "local_store",
    "mint_bootstrap_tokens",
]
