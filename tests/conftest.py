from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Test helpers (servers.py, browser.py, ...) are imported as plain modules.
sys.path.insert(0, str(Path(__file__).parent))

#: The Redis .ci/redis makes sure answers (SHOPRELAY_TEST_REDIS_PORT, default 6379).
REDIS_URL = f"redis://127.0.0.1:{os.environ.get('SHOPRELAY_TEST_REDIS_PORT', '6379')}/0"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Debian Chromium per test module (starting one costs about a second)."""
    from browser import chromium

    with chromium() as (_, launched):
        yield launched


@pytest.fixture
def prefix() -> Iterator[str]:
    """A Redis key prefix of this test's own; its keys, and only they, are deleted after."""
    import redis

    name = f"shoprelay-test:{uuid.uuid4().hex}:"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=name + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
