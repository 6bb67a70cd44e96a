"""The API's one error shape: {"error": code, "detail": text}, with the status."""

from __future__ import annotations

from aiohttp import web


def problem(status: int, code: str, detail: str, **headers: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status,
                             headers=headers or None)


class Problem(Exception):
    """Raised where returning is awkward; the error middleware answers with it."""

    def __init__(self, status: int, code: str, detail: str, **headers: str) -> None:
        super().__init__(code, detail)
        self.response = problem(status, code, detail, **headers)
