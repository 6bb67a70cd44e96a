from __future__ import annotations

import pytest

from tests.e2e.pipeline import Pipeline


@pytest.fixture
def pipeline(stack, names, tmp_path):
    p = Pipeline(stack.bootstrap, names.prefix, tmp_path / "logs",
                 extra_env={"REDIS_URL": stack.redis_url})
    try:
        yield p
    finally:
        p.stop_all()
        p.sender.close()
