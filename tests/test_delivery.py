"""Relay → vendor sandboxes over real HTTP: forwarding, dedup, resume after restart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from relay_fixtures import WRITE_KEY, relay_stack, track
from servers import free_port, wait_for


def post(url: str, batch: list[dict], cookies: dict | None = None) -> httpx.Response:
    answer = httpx.post(f"{url}/v1/batch", json={"batch": batch, "writeKey": WRITE_KEY},
                        cookies=cookies)
    assert answer.status_code == 200, answer.text
    return answer


def test_events_are_forwarded_once_even_when_resent(tmp_path: Path) -> None:
    with relay_stack(tmp_path, vendors=["retailrocket"]) as stack:
        batch = [track("Product Viewed", "view-1", product_id=11),
                 track("Product List Viewed", "cat-1", category_id=7),
                 track("Products Searched", "search-1", query="boots"),
                 track("Product Added", "add-1", product_id=11),
                 track("Order Completed", "order-1", order_id="o-1",
                       products=[{"product_id": 11, "price": 5, "quantity": 1},
                                 {"product_id": 12, "price": 2.5, "quantity": 2}])]
        first = post(stack.relay_url, batch)
        post(stack.relay_url, batch, cookies=dict(first.cookies))  # a client retry
        stack.wait_received("retailrocket", 6)
        time.sleep(1.0)  # a duplicate would have been sent by now
        records = stack.received("retailrocket")
        paths = [r["path"].rsplit("/", 1)[-1] for r in records]
        assert paths == ["view", "categoryView", "search", "addToBasket", "order", "order"]
        assert stack.refused("retailrocket") == []


def test_undelivered_work_resumes_after_restart(tmp_path: Path) -> None:
    sandbox_port = free_port()
    with relay_stack(tmp_path, vendors=["retailrocket"], forward=False,
                     sandbox_port=sandbox_port) as stack:
        post(stack.relay_url, [track("Product Viewed", f"v{i}", product_id=i) for i in range(5)])
        assert stack.received("retailrocket") == []
    # Same spool file, now with delivery running.
    with relay_stack(tmp_path, vendors=["retailrocket"], sandbox_port=sandbox_port) as stack:
        records = stack.wait_received("retailrocket", 5)
        assert sorted(r["body"]["productId"] for r in records) == [0, 1, 2, 3, 4]


def test_a_refused_request_goes_to_the_dead_letter_with_its_reason(tmp_path: Path) -> None:
    with relay_stack(tmp_path, vendors=["retailrocket"]) as stack:
        post(stack.relay_url, [track("Product Viewed", "bad-id", product_id="sku-x"),
                               track("Product Viewed", "good", product_id=3)])
        stack.wait_received("retailrocket", 1)
        spool = stack.app.state.spool

        def dead() -> list:
            return asyncio.run(spool.dead_letters(vendor="retailrocket"))

        [letter] = wait_for(dead)
        assert letter.event.message_id == "bad-id"
        assert "product_id must be an integer" in letter.error
