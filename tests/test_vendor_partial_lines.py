"""Lines a vendor cannot take are left out, not the order (issue 20), over real HTTP: the relay
and the vendor sandboxes on 127.0.0.1, batching on (the default). What a user checks: what the
sandbox received, the note in the live debugger, the counter, the dead letter and the trace.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
from relay_fixtures import Stack, relay_stack
from servers import wait_for

from shoprelay.demo import DEMO_WRITE_KEY

TOKEN = "adm-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextmanager
def stack_for(tmp_path: Path, vendors: list[str]) -> Iterator[Stack]:
    def adjust(table: dict[str, Any]) -> None:
        table["relay"]["admin_token"] = TOKEN

    with relay_stack(tmp_path, vendors=vendors, adjust=adjust) as stack:
        yield stack


@contextmanager
def debugger(stack: Stack, until: str) -> Iterator[list[dict[str, Any]]]:
    """What the live debugger shows while the block runs, up to the "dropped" line whose
    notes mention `until` (then the stream is closed: the relay does not wait for it at
    shutdown)."""
    seen: list[dict[str, Any]] = []

    def listen() -> None:
        with httpx.stream("GET", f"{stack.relay_url}/debug/stream", headers=AUTH,
                          timeout=30) as stream:
            for line in stream.iter_lines():
                if line.startswith(": connected"):
                    seen.append({"kind": "connected"})
                elif line.startswith("data: "):
                    seen.append(orjson.loads(line[6:]))
                    entry = seen[-1]
                    if entry["kind"] == "dropped" and until in " ".join(entry["notes"]):
                        return

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    wait_for(lambda: seen)
    yield seen
    reader.join(timeout=20)


def send(stack: Stack, *messages: dict[str, Any]) -> None:
    answer = httpx.post(f"{stack.relay_url}/v1/batch",
                        json={"writeKey": DEMO_WRITE_KEY, "batch": list(messages)}, timeout=10)
    assert answer.status_code == 200 and not answer.json()["rejected"], answer.text


def track(event: str, visitor: str, **props: Any) -> dict[str, Any]:
    return {"type": "track", "event": event, "properties": props, "anonymousId": visitor,
            "messageId": str(uuid.uuid4())}


def dropped(seen: list[dict[str, Any]], vendor: str) -> list[str]:
    return [note for e in seen if e.get("kind") == "dropped" and e.get("vendor") == vendor
            for note in e["notes"]]


def counted(stack: Stack, vendor: str) -> float:
    text = httpx.get(f"{stack.relay_url}/metrics", headers=AUTH).text
    for line in text.splitlines():
        if line.startswith("shoprelay_vendor_fields_dropped_total{") and \
                f'vendor="{vendor}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def traces(stack: Stack, message_id: str) -> dict[str, Any]:
    answer = httpx.get(f"{stack.relay_url}/debug/trace", params={"message_id": message_id},
                       headers=AUTH)
    [found] = answer.json()["traces"]
    return found  # type: ignore[no-any-return]


def test_yespo_order_line_without_a_price_is_left_out_and_the_cart_still_emptied(
        tmp_path: Path) -> None:
    with stack_for(tmp_path, ["yespo"]) as stack, debugger(stack, "order line") as seen:
        send(stack, track("Product Added", "v-1", product_id="A", price=10, quantity=1),
             track("Product Added", "v-1", product_id="B", quantity=2))
        stack.wait_received("yespo", 2)
        order = track("Order Completed", "v-1", order_id="o-1", products=[
            {"product_id": "A", "price": 10, "quantity": 1},
            {"product_id": "B", "quantity": 2}])
        send(stack, order)
        records = stack.wait_received("yespo", 4)
        purchase, emptied = (r["body"] for r in records[2:4])
        # The paid line reaches Yespo; so does the emptied cart ("If the cart is empty, then
        # you need to send an empty cart event"): no abandoned-cart mail for a paid cart.
        assert purchase["PurchasedItems"]["Products"] == [
            {"product_id": "A", "unit_price": "10", "quantity": 1}]
        assert purchase["PurchasedItems"]["OrderNumber"] == "o-1"
        assert emptied["StatusCart"]["Products"] == []
        notes = wait_for(lambda: [n for n in dropped(seen, "yespo") if "order line" in n])
        assert "order line 1 left out" in notes[0] and "price" in notes[0]
        assert counted(stack, "yespo") >= 1
        assert not stack.refused("yespo")
        trace = traces(stack, order["messageId"])["vendors"]["yespo"]
        assert trace["outcome"] == "sent"
        assert any("order line 1 left out" in n for n in trace["notes"])


def test_yespo_order_with_no_priced_line_still_empties_the_cart(tmp_path: Path) -> None:
    with stack_for(tmp_path, ["yespo"]) as stack:
        send(stack, track("Product Added", "v-2", product_id="B", quantity=2))
        stack.wait_received("yespo", 1)
        order = track("Order Completed", "v-2", order_id="o-2",
                      products=[{"product_id": "B", "quantity": 2}])
        send(stack, order)
        [_, emptied] = stack.wait_received("yespo", 2)
        assert emptied["body"]["StatusCart"]["Products"] == []
        # The purchase itself could not go: dead-lettered alone, with the reason, in the trace.
        trace = wait_for(lambda: (t := traces(stack, order["messageId"])["vendors"]["yespo"])
                         .get("parts") and t)
        assert "dead-lettered alone" in trace["reason"] and "price" in trace["reason"]


def test_advisable_line_with_null_quantity_is_one_piece_with_a_note(tmp_path: Path) -> None:
    with stack_for(tmp_path, ["advisable"]) as stack, debugger(stack, "quantity") as seen:
        order = track("Order Completed", "v-3", order_id="o-3", products=[
            {"product_id": "a", "price": 10, "quantity": None},
            {"product_id": "b", "price": 5, "quantity": 2}])
        send(stack, order)
        [record] = stack.wait_received("advisable", 1)
        assert record["path"].endswith("/v1/purchases/batch")
        assert [(p["item_id"], p["amount"]) for p in record["body"]] == [("a", 1), ("b", 2)]
        notes = wait_for(lambda: dropped(seen, "advisable"))
        assert notes == ["products[0].quantity is null: sent as amount 1"]
        assert not stack.refused("advisable")
        trace = traces(stack, order["messageId"])["vendors"]["advisable"]
        assert trace["outcome"] == "sent" and trace["notes"] == notes


def test_retail_rocket_over_long_block_id_is_noted(tmp_path: Path) -> None:
    long_id = "home-recs-" + "x" * 50
    with (stack_for(tmp_path, ["retailrocket"]) as stack,
          debugger(stack, "recomBlockId") as seen):
        click = track("Product Clicked", "v-4", product_id=7, list_id=long_id,
                      recommendation_vendor="retailrocket")
        send(stack, click)
        [record] = stack.wait_received("retailrocket", 1)
        assert record["path"].endswith("/recomTap")
        assert record["body"]["recomBlockId"] == long_id[:50]
        [note] = wait_for(lambda: dropped(seen, "retailrocket"))
        assert "recomBlockId cut to 50 characters" in note and "60" in note
        trace = traces(stack, click["messageId"])["vendors"]["retailrocket"]
        assert trace["notes"] == [note]
