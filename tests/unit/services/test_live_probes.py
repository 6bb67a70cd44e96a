"""Live pages' probes (services/api/live.py, issue #27.4): a size probe (HLEN of a hash
that only grows, ZCARD of an index) wakes its watchers when the size changes, in the
same one round trip as the others; a stream whose render changes its probes (the
console: a new offer's copies) is woken by the new ones, and no longer by the old."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.api import live

# the API's app keys are strings (services/api/__main__.py), as live.install's
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")


class _Pipeline:
    def __init__(self, redis: _Redis) -> None:
        self.redis, self.ops = redis, []

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    def hget(self, key, field):
        self.ops.append(self.redis.hashes.get(key, {}).get(field))

    def hgetall(self, key):
        self.ops.append(dict(self.redis.hashes.get(key, {})))

    def hlen(self, key):
        self.ops.append(len(self.redis.hashes.get(key, {})))

    def zcard(self, key):
        self.ops.append(len(self.redis.zsets.get(key, set())))

    async def execute(self):
        self.redis.trips += 1
        return self.ops


class _Redis:
    def __init__(self) -> None:
        self.hashes: dict[str, dict] = {}
        self.zsets: dict[str, set] = {}
        self.trips = 0

    def pipeline(self, transaction=False):
        return _Pipeline(self)


async def test_size_probes_wake_their_watchers_in_the_same_round_trip():
    redis = _Redis()
    redis.hashes = {"gains:ann": {"c1|acq": b"1"}, "cert:c1": {"seq": b"3"}}
    redis.zsets = {"sells:sam": {"o1"}}
    hub = live.LiveHub(redis, poll_s=3600)
    with hub.watch([("gains:ann", live.HLEN)]) as gains, \
            hub.watch([("sells:sam", live.ZCARD)]) as offers, \
            hub.watch([("cert:c1", "seq")]) as cert:
        hub.task.cancel()  # polled by hand here
        await hub.poll_once()
        for w in (gains, offers, cert):
            w.changed.clear()
        redis.hashes["gains:ann"]["c1|why"] = b"too_deep"  # a new step: one more field
        redis.hashes["gains:ann"]["c1|acq"] = b"2"  # a field rewritten: not a size change
        await hub.poll_once()
        assert gains.changed.is_set() and not offers.changed.is_set()
        assert not cert.changed.is_set()
        gains.changed.clear()
        redis.zsets["sells:sam"].add("o2")  # a new offer
        await hub.poll_once()
        assert offers.changed.is_set() and not gains.changed.is_set()
        assert redis.trips == 3  # one round trip a poll, whatever the kinds of probe


async def _updates(response, count: int) -> list[str]:
    """The data of the stream's next ``count`` update events."""
    out, name, data = [], "", []
    while len(out) < count:
        line = (await asyncio.wait_for(response.content.readline(), 5)).decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif not line:
            if name == "update":
                out.append("\n".join(data))
            name, data = "", []
    return out


async def test_a_stream_follows_the_probes_its_render_changed():
    redis = _Redis()
    redis.hashes = {"cert:a": {"seq": b"1"}, "cert:b": {"seq": b"1"}}
    app = web.Application()
    hub = live.install(app, redis)
    hub.poll_s = 0.01

    async def handler(request: web.Request) -> web.StreamResponse:
        probes = [("cert:a", "seq")]

        async def render() -> str:
            probes[:] = [("cert:b", "seq")]  # the page now shows b, not a
            return f"a={redis.hashes['cert:a']['seq'].decode()} " \
                   f"b={redis.hashes['cert:b']['seq'].decode()}"
        return await live.stream(request, probes, render)

    app.router.add_get("/live", handler)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/live")
        assert await _updates(response, 1) == ["a=1 b=1"]
        await asyncio.sleep(0.1)  # the stream watches b now
        redis.hashes["cert:b"]["seq"] = b"2"
        assert await _updates(response, 1) == ["a=1 b=2"]
        redis.hashes["cert:a"]["seq"] = b"2"  # a is watched no more: no update for it
        await asyncio.sleep(0.2)
        redis.hashes["cert:b"]["seq"] = b"3"
        assert await _updates(response, 1) == ["a=2 b=3"]  # the next is b's
        assert set(hub.watchers) == {("cert:b", "seq")}
        response.close()
