"""Compressed bodies over real HTTP: gzip and deflate on every ingest route, limits on the
inflated bytes (a gzip bomb is a 413, not a gigabyte in memory), unknown encodings 415."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from relay_fixtures import WRITE_KEY, relay_stack, routed_db, track

from shoprelay.ingest.encoding import read_body
from shoprelay.ingest.validation import MAX_BATCH_BYTES, BadRequest

TOKEN = "encoding-admin-token-0123456789"


@pytest.fixture()
def stack(tmp_path: Path):
    def admin(table: dict) -> None:
        table["relay"]["admin_token"] = TOKEN

    with relay_stack(tmp_path, vendors=["retailrocket"], forward=False,
                     adjust=admin) as running:
        yield running


def refusals(stack, reason: str) -> float:
    """shoprelay_messages_rejected_total{reason} from /metrics: every refusal is visible."""
    text = httpx.get(f"{stack.relay_url}/metrics",
                     headers={"Authorization": f"Bearer {TOKEN}"}).text
    for line in text.splitlines():
        if line.startswith(f'shoprelay_messages_rejected_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


def stored_count(tmp_path: Path) -> int:
    with routed_db(tmp_path / "spool.db") as conn:
        return conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]


def deflate(data: bytes, raw: bool = False) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def bomb(inflated_size: int) -> bytes:
    """A gzip body of zeros that inflates to `inflated_size` bytes (about 1,000 times smaller)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"0" * (1 << 20)
    parts = [packer.compress(b'{"batch": ["')]
    for _ in range(inflated_size // len(block)):
        parts.append(packer.compress(block))
    parts.append(packer.compress(b'"]}'))
    return b"".join(parts) + packer.flush()


def test_gzip_and_deflate_bodies_are_read_on_every_route(stack, tmp_path: Path) -> None:
    batch = orjson.dumps({"batch": [track("Product Viewed", "g1", product_id=1),
                                    track("Product Viewed", "g2", product_id=2)],
                          "writeKey": WRITE_KEY})
    answer = httpx.post(f"{stack.relay_url}/v1/batch", content=gzip.compress(batch),
                        headers={"Content-Type": "application/json",
                                 "Content-Encoding": "gzip"})
    assert answer.status_code == 200 and answer.json()["accepted"] == 2
    single = orjson.dumps({**track("Product Viewed", "d1", product_id=3),
                           "writeKey": WRITE_KEY})
    for route, body, encoding in [("track", deflate(single), "deflate"),
                                  ("t", deflate(single.replace(b"d1", b"d2"), raw=True),
                                   "deflate"),
                                  ("b", gzip.compress(batch.replace(b'"g', b'"x')), "x-gzip")]:
        answer = httpx.post(f"{stack.relay_url}/v1/{route}", content=body,
                            headers={"Content-Encoding": encoding})
        assert answer.status_code == 200, (route, answer.text)
    assert stored_count(tmp_path) == 6


def test_a_gzip_bomb_is_refused_with_413_and_nothing_stored(stack, tmp_path: Path) -> None:
    body = bomb(200 << 20)  # 200 MB of zeros, about 200 KB on the wire: under the batch limit
    assert len(body) < MAX_BATCH_BYTES
    answer = httpx.post(f"{stack.relay_url}/v1/batch?writeKey={WRITE_KEY}", content=body,
                        headers={"Content-Encoding": "gzip"}, timeout=30)
    assert answer.status_code == 413
    assert answer.json()["error"] == "decompressed body is larger than the limit of 512000 bytes"
    assert stored_count(tmp_path) == 0
    assert refusals(stack, "too_large") == 1


def test_limits_hold_for_the_decompressed_body(stack, tmp_path: Path) -> None:
    # 600 messages of 1 KB: about 600 KB once inflated, a few KB compressed.
    batch = orjson.dumps({"batch": [track("X", blob="x" * 1000)] * 600, "writeKey": WRITE_KEY})
    packed = gzip.compress(batch)
    assert len(packed) < 20_000 < MAX_BATCH_BYTES < len(batch)
    answer = httpx.post(f"{stack.relay_url}/v1/batch", content=packed,
                        headers={"Content-Encoding": "gzip"})
    assert answer.status_code == 413 and "decompressed" in answer.json()["error"]
    big = orjson.dumps({**track("X", blob="x" * 33_000), "writeKey": WRITE_KEY})
    answer = httpx.post(f"{stack.relay_url}/v1/track", content=deflate(big),
                        headers={"Content-Encoding": "deflate"})
    assert answer.status_code == 413
    assert answer.json()["error"] == "decompressed body is larger than the limit of 32768 bytes"
    assert stored_count(tmp_path) == 0


def test_unknown_or_broken_encodings_are_refused_with_the_reason(stack, tmp_path: Path) -> None:
    body = orjson.dumps({"batch": [track("Product Viewed", product_id=1)],
                         "writeKey": WRITE_KEY})
    url = f"{stack.relay_url}/v1/batch"
    for encoding in ("br", "zstd", "gzip, br"):
        answer = httpx.post(url, content=body, headers={"Content-Encoding": encoding})
        assert answer.status_code == 415, encoding
        assert answer.json()["error"] == (f"Content-Encoding {encoding!r} is not supported; "
                                          "send the body as is, gzip or deflate")
    assert refusals(stack, "unsupported_encoding") == 3
    # What Segment's and RudderStack's libraries read of an error answer.
    assert answer.json()["code"] == "unsupported_encoding"
    assert answer.json()["message"] == answer.json()["error"]
    cut = httpx.post(url, content=gzip.compress(body)[:-12],
                     headers={"Content-Encoding": "gzip"})
    assert cut.status_code == 400 and cut.json()["error"] == "the gzip body is cut short"
    garbage = httpx.post(url, content=b"not gzip at all", headers={"Content-Encoding": "gzip"})
    assert garbage.status_code == 400 and "cannot be decompressed" in garbage.json()["error"]
    assert stored_count(tmp_path) == 0
    # "identity" is no encoding at all.
    plain = httpx.post(url, content=body, headers={"Content-Encoding": "identity"})
    assert plain.status_code == 200 and stored_count(tmp_path) == 1


def test_inflating_stops_at_the_limit_without_reading_further() -> None:
    """The reader never makes more than limit + 1 bytes and reads no chunk after that."""
    packed = bomb(50 << 20)
    pieces = [packed[i:i + 4096] for i in range(0, len(packed), 4096)]
    handed: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for index, piece in enumerate(pieces):
            handed.append(index)
            yield piece

    with pytest.raises(BadRequest) as refused:
        asyncio.run(read_body(chunks(), "gzip", 100_000))
    assert refused.value.status == 413
    # zeros inflate about 1,000 times: the limit is passed within the first few pieces
    assert len(handed) <= 2 < len(pieces)
