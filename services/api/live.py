"""Pages that update themselves (issue #27.4): Server-Sent Events from the read model.

A page that wants live updates puts its changing part in an element with
``data-live="<stream URL>"``; the site script (services/api/assets.py: no inline
script, the CSP allows none) opens an ``EventSource`` on it and replaces the
element's content with each ``update`` event's HTML. The stream's handler calls
:func:`stream` with what to watch (``Probe``: a read-model hash and field, e.g. a
certificate page's ``seq``, a command outcome's ``status``) and a ``render`` that
returns the element's HTML as the page itself would, for the same session: a
visitor's stream shows exactly what its page would, so others' amounts stay hidden
and a command's outcome shows only to its sender (the page's own checks).

Cheap with many watchers: ONE poller per API process (:class:`LiveHub`) reads every
watched probe in one pipelined round trip every ``POLL_S`` (0.5 s), however many
browsers watch, and wakes only the streams whose probe changed. Their renders share
one read of what changed (:meth:`LiveHub.shared`: one load per certificate version,
whatever the number of watchers). A poll rather than a pub/sub channel: it needs
nothing from the read model (which another issue is making faster) and works the
same on one Redis and on a Redis Cluster; the price is up to 0.5 s more latency and
one round trip every 0.5 s while anyone watches. A probe reads a hash's field, the
whole hash (a small one: an account's earnings counters), or only a size (``HLEN``
of a hash that only grows, ``ZCARD`` of an index: a new entry is the change). A
render may change the probes it is watched by (the console: a new offer's copies);
a render may be spaced (``every_s``) when it is costly. Each stream ends after
``STREAM_MAX_S`` (the browser reconnects, and its session is checked again), sends a
comment every ``HEARTBEAT_S`` (a gone browser is noticed, proxies keep it open), and
at most ``MAX_STREAMS`` are open per process, ``MAX_STREAMS_PER_ADDRESS`` per client
address (503 beyond: the page still works, it just does not update).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from html import escape as html_escape
from urllib.parse import urlencode

from aiohttp import web

from services.api.errors import Problem

log = logging.getLogger("commission.api.live")

POLL_S = 0.5
HEARTBEAT_S = 15.0
STREAM_MAX_S = 600.0
MAX_STREAMS = 2_000
MAX_STREAMS_PER_ADDRESS = 32  # one client cannot take every stream of a process
MAX_SHARED = 10_000  # loads kept for sharing between watchers

Probe = tuple[str, str | None]  # a hash's key and field (None: the whole hash)
HLEN = "\x00hlen"  # as a probe's field: the hash's number of fields
ZCARD = "\x00zcard"  # as a probe's field: the key is a sorted set, its size
_UNSEEN = object()


class Watch:
    """One stream's wake-up call: set when one of its probes changed."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()
        self.closed = False


class LiveHub:
    def __init__(self, redis, poll_s: float = POLL_S) -> None:
        self.redis = redis
        self.poll_s = poll_s
        self.watchers: dict[Probe, set[Watch]] = {}
        self.values: dict[Probe, object] = {}
        self.loads: OrderedDict[tuple, tuple[object, asyncio.Future]] = OrderedDict()
        self.streams = 0
        self.by_address: dict[str, int] = {}
        self.polls = 0  # round trips made (tests: one per interval, not per watcher)
        self.task: asyncio.Task | None = None
        self.closing = False

    @contextlib.contextmanager
    def watch(self, probes: list[Probe]) -> Iterator[Watch]:
        w = Watch()
        for probe in probes:
            self.watchers.setdefault(probe, set()).add(w)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())
        try:
            yield w
        finally:
            for probe in probes:
                left = self.watchers.get(probe)
                if left is not None:
                    left.discard(w)
                    if not left:
                        del self.watchers[probe]
                        self.values.pop(probe, None)

    def version(self, probe: Probe) -> object:
        """The probe's value at the last poll (None: not polled yet)."""
        value = self.values.get(probe)
        return None if value is _UNSEEN else value

    async def shared(self, name: tuple, version: object, load: Callable[[], Awaitable]):
        """``load()``'s result, shared by every render asking for ``name`` at the same
        ``version`` (a version of None is never shared: it is not known yet)."""
        if version is None:
            return await load()
        found = self.loads.get(name)
        if found is None or found[0] != version:
            future = asyncio.ensure_future(load())
            self.loads[name] = (version, future)
            while len(self.loads) > MAX_SHARED:
                self.loads.popitem(last=False)
            found = self.loads[name]
        self.loads.move_to_end(name)
        try:
            return await asyncio.shield(found[1])
        except Exception:
            self.loads.pop(name, None)  # not kept: the next render tries again
            raise

    async def poll_once(self) -> None:
        probes = list(self.watchers)
        if not probes:
            return
        async with self.redis.pipeline(transaction=False) as p:
            for key, field in probes:
                if field is None:
                    p.hgetall(key)
                elif field == HLEN:
                    p.hlen(key)
                elif field == ZCARD:
                    p.zcard(key)
                else:
                    p.hget(key, field)
            got = await p.execute()
        self.polls += 1
        for probe, value in zip(probes, got, strict=True):
            if isinstance(value, dict):
                value = tuple(sorted(value.items()))
            if self.values.get(probe, _UNSEEN) != value:
                self.values[probe] = value
                for w in self.watchers.get(probe, ()):
                    w.changed.set()

    async def _run(self) -> None:
        while self.watchers and not self.closing:
            try:
                await self.poll_once()
            except Exception:  # Redis away for a moment: the pages keep what they show
                log.warning("live poll failed", exc_info=True)
            await asyncio.sleep(self.poll_s)

    async def close(self) -> None:
        """At shutdown: every stream ends now, not after the server's grace period."""
        self.closing = True
        for watches in list(self.watchers.values()):
            for w in watches:
                w.closed = True
                w.changed.set()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


_COUNTDOWN_TEXT = re.compile(r"(<span class='countdown'[^>]*>)[^<]*(</span>)")


def fingerprint(html: str) -> str:
    """What a render shows, less the countdowns' text (the script ticks those): a page
    and its stream's first render agree unless something really changed, so the
    browser replaces nothing then."""
    return hashlib.sha256(_COUNTDOWN_TEXT.sub(r"\1\2", html).encode()).hexdigest()[:16]


def event(name: str, data: str) -> bytes:
    """One SSE event; each line of ``data`` its own ``data:`` line."""
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"event: {name}\n{lines}\n".encode()


async def stream(request: web.Request, probes: list[Probe],
                 render: Callable[[], Awaitable[str | None]],
                 every_s: float = 0.0) -> web.StreamResponse:
    """Sends ``render()`` as an ``update`` event now and after every change of one of
    ``probes`` (only when it shows something else than the last one, or than the page
    the browser has: the ``v`` its live block carries); render returning None ends
    the stream with a ``gone`` event (the browser stops listening). ``render`` may
    change the list ``probes`` in place: the stream then watches the new ones. At most
    one render every ``every_s`` seconds (changes meanwhile make one render after)."""
    hub: LiveHub = request.app["live"]
    trust = request.get("trust")
    address = trust.client_address(request) if trust is not None else request.remote or ""
    if (hub.streams >= MAX_STREAMS or hub.closing
            or hub.by_address.get(address, 0) >= MAX_STREAMS_PER_ADDRESS):
        raise Problem(503, "too_many_watchers", "live updates are at capacity; reload the "
                      "page to see the latest")
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-store",
        "X-Accel-Buffering": "no"})  # a buffering proxy would hold the events back
    await response.prepare(request)
    hub.streams += 1
    hub.by_address[address] = hub.by_address.get(address, 0) + 1
    loop = asyncio.get_running_loop()
    ends = loop.time() + STREAM_MAX_S
    last = request.query.get("v")
    try:
        await response.write(b"retry: 3000\n\n")
        changed, gone = True, False
        while changed and not gone:  # again after a render changed the probes
            watched = list(probes)
            changed = False
            with hub.watch(watched) as w:
                while loop.time() < ends and not w.closed:
                    w.changed.clear()
                    html = await render()
                    if html is None:
                        await response.write(event("gone", ""))
                        gone = True
                        break
                    shown = fingerprint(html)
                    if shown != last:
                        await response.write(event("update", html))
                        last = shown
                    if probes != watched:
                        changed = True
                        break
                    if every_s:
                        await asyncio.sleep(every_s)
                    try:
                        await asyncio.wait_for(w.changed.wait(), HEARTBEAT_S)
                    except TimeoutError:
                        await response.write(b": ping\n\n")
    except (ConnectionResetError, ConnectionError):
        pass  # the browser went away
    finally:
        hub.streams -= 1
        hub.by_address[address] -= 1
        if not hub.by_address[address]:
            del hub.by_address[address]
    return response


def install(app: web.Application, redis) -> LiveHub:
    hub = LiveHub(redis)
    app["live"] = hub

    async def on_shutdown(app: web.Application) -> None:
        await hub.close()

    app.on_shutdown.append(on_shutdown)
    return hub


def block(url: str, html: str, params: dict[str, str] | None = None) -> str:
    """A page's live part: the site script streams ``url`` (with ``params``, e.g. the
    page's own query) into it. Without script it is simply the page as rendered."""
    query = urlencode({**{k: v for k, v in (params or {}).items() if v},
                       "v": fingerprint(html)})
    src = f"{url}?{query}"
    return (f"<div id='live' data-live='{html_escape(src, quote=True)}' "
            f"aria-live='polite'>{html}</div>")
