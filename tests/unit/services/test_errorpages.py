"""Errors for people (issue #27.5), in-process: the browser's routes answer errors as
an HTML page with words, the code and a way back; the JSON API keeps its JSON; an
address matching no route gets HTML only when a browser asks for HTML."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.api import errorpages
from services.api.__main__ import json_errors
from services.api.errors import Problem


async def _throttled(request: web.Request) -> web.Response:
    raise Problem(429, "rate_limited", "at most 20 writes per second", **{"Retry-After": "3"})


async def _missing(request: web.Request) -> web.Response:
    raise web.HTTPNotFound(text="no such certificate")


def _app() -> web.Application:
    app = web.Application(middlewares=[errorpages.middleware, json_errors])
    app.router.add_get("/page/certificates/{id}", _missing)
    app.router.add_post("/page/certificates/{id}/circulate", _throttled)
    app.router.add_post("/certificates/{id}/circulate", _throttled)
    app.router.add_get("/certificates/{id}", _missing)
    return app


def _run(check) -> None:
    async def go() -> None:
        async with TestClient(TestServer(_app())) as client:
            await check(client)
    asyncio.run(go())


def test_page_routes_answer_errors_as_pages_with_a_way_back_and_the_api_stays_json():
    async def check(client: TestClient) -> None:
        answer = await client.get("/page/certificates/nope")
        text = await answer.text()
        assert answer.status == 404 and answer.content_type == "text/html"
        assert "Certificate not found" in text and 'data-error="unknown_certificate"' in text
        assert "id='way-back' href='/'" in text

        # a refused form, sent from a page of this site: back to that page, with the wait
        host = f"{client.host}:{client.port}"
        answer = await client.post("/page/certificates/x/circulate",
                                   headers={"Referer": f"http://{host}/page/certificates/x"})
        text = await answer.text()
        assert answer.status == 429 and answer.headers["Retry-After"] == "3"
        assert "Try again in 3 s." in text and 'data-error="rate_limited"' in text
        assert "href='/page/certificates/x'" in text
        # another site's Referer is never a way back
        answer = await client.post("/page/certificates/x/circulate",
                                   headers={"Referer": "https://evil.example/page/x"})
        assert "evil" not in await answer.text()

        # the JSON API: JSON, whatever the client asks for
        for accept in ("application/json", "text/html"):
            answer = await client.get("/certificates/nope", headers={"Accept": accept})
            assert answer.status == 404 and answer.content_type == "application/json"
        answer = await client.post("/certificates/x/circulate")
        assert (answer.status, (await answer.json())["error"]) == (429, "rate_limited")

        # no such address: a page for a browser, JSON for anyone else
        answer = await client.get("/nowhere", headers={"Accept": "text/html,*/*"})
        assert answer.status == 404 and "Page not found" in await answer.text()
        answer = await client.get("/nowhere")
        assert answer.status == 404 and (await answer.json())["error"] == "not_found"

    _run(check)
