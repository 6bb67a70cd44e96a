"""One Redis or a Redis Cluster, as the URL says (issue #25).

``redis+cluster://host:port/0`` (or ``rediss+cluster://`` over TLS), or any
``REDIS_URL`` with ``REDIS_CLUSTER=1``: a cluster client that finds every master from
that seed node and routes each command by its key's slot. What runs on it must keep
each multi-key command and script within one slot: the read model's keys carry hash
tags (services/readmodel/projection.py) and it runs one script per slot
(services/readmodel/store.py); the API's keys are single keys, its login throttling
one transaction per key (services/api/accounts.py).
"""

from __future__ import annotations

import os

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster(url: str) -> bool:
    return url.split("://", 1)[0] in CLUSTER_SCHEMES or os.environ.get("REDIS_CLUSTER") == "1"


def connect(url: str) -> aioredis.Redis | RedisCluster:
    """The client for ``url``: a cluster client when the URL or REDIS_CLUSTER says so."""
    scheme, rest = url.split("://", 1)
    if is_cluster(url):
        return RedisCluster.from_url(f"{CLUSTER_SCHEMES.get(scheme, scheme)}://{rest}")
    return aioredis.from_url(url)
