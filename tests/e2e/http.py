"""HTTP helpers for the API tests: bounded, JSON in and out."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request


def get(port: int, path: str, token: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())



def page(port: int, path: str, token: str | None = None) -> tuple[int, str]:
    """A web page as the browser of ``token``'s session (its cookie): (status, HTML)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Cookie", f"session={token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def wait_for(port: int, path: str, check, timeout_s: float = 60, pipeline=None,
             token: str | None = None) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        if pipeline is not None:
            pipeline.assert_running()
        try:
            status, body = get(port, path, token)
            if status == 200 and check(body):
                return body
        except OSError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: not as expected after {timeout_s}s")
        time.sleep(0.5)



def call(port: int, method: str, path: str, body=None, token: str | None = None,
         raw: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, dict]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)



def login(port: int, account: str) -> str:
    status, body, _ = call(port, "POST", "/login",
                           {"account_id": account, "password": f"demo-{account}"})
    assert status == 200, body
    return body["token"]



def outcome(port: int, token: str, command_id: str) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _, body, _ = call(port, "GET", f"/commands/{command_id}", token=token)
        if body["status"] != "pending":
            return body
        time.sleep(0.3)
    raise AssertionError(f"{command_id} still pending")


def live_updates(port: int, path: str, token: str | None):
    """The ``update`` events of a live page's stream (Server-Sent Events), as the
    visitor's browser gets them: (the open response, an iterator of their data)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Cookie", f"session={token}")
    stream = urllib.request.urlopen(req, timeout=30)
    assert stream.headers["Content-Type"].startswith("text/event-stream")

    def updates():
        name, data = "", []
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif not line:
                if name == "update":
                    yield "\n".join(data)
                name, data = "", []

    return stream, updates()
