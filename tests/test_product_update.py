"""Catalogue updates: the backend's `Product Updated` becomes Yespo's ProductUpdate.

vendor-docs/yespo-tracker-rest.md, ProductUpdate: "an optional event that updates product data
in Yespo in real-time, regardless of the scheduled feed update. Pass product properties that
need constant updating — price, discount, availability, etc." It is the only catalogue call in
the five documents, so the other vendors get nothing; a browser copy is refused, since only the
shop's backend speaks for its catalogue.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from relay_fixtures import ORIGIN, WRITE_KEY, relay_stack, track
from servers import wait_for

from shoprelay import events as ev
from shoprelay.events import Enrichment, StoredEvent
from shoprelay.sandbox.yespo import check_event
from shoprelay.vendors.base import MappingError
from shoprelay.vendors.yespo import VENDOR, YespoConfig

SERVER_KEY = "sk_backend_secret_0123456789"
CONFIG = YespoConfig(site_id="site_id")
IPHONE = {"product_id": "430738", "name": "iPhone 7", "price": 201.95, "currency": "uah",
          "in_stock": True, "category": "level1 > level2 > level3",
          "url": "https://domain.com/apple/product_page_example.html",
          "image_url": "https://domain.com/apple/product_large.png", "brand": "Apple"}


def updated(props: dict[str, Any], source: str = "server") -> StoredEvent:
    message = {"type": "track", "event": ev.PRODUCT_UPDATED, "properties": props,
               "messageId": "m-u", "timestamp": "2026-01-01T00:00:00.000Z"}
    return StoredEvent("shop", message, Enrichment(visitor_id="v" * 32, source=source))


def test_product_updated_is_the_documents_product_update() -> None:
    (request,) = VENDOR.requests_for(updated(IPHONE), CONFIG)
    # The document's example, first product (its tag_* fields have no Segment counterpart).
    assert request.json == {
        "GeneralInfo": {"eventName": "ProductUpdate", "siteId": "site_id"},
        "ProductUpdate": [{
            "brand": "Apple", "name": "iPhone 7", "product_id": "430738",
            "imgurl": "https://domain.com/apple/product_large.png",
            "url": "https://domain.com/apple/product_page_example.html",
            "unit_price": "201.95", "isInStock": "1", "price_currency_code": "UAH",
            "category": "level1 > level2 > level3"}]}
    assert check_event(request.json, frozenset({"site_id"})) == "ProductUpdate"
    # "If the product has not a discount, than": product_id, unit_price, isInStock, currency.
    (short,) = VENDOR.requests_for(updated({"product_id": 1111, "price": 270, "in_stock": 0,
                                            "currency": "UAH"}), CONFIG)
    assert short.json["ProductUpdate"] == [{"product_id": "1111", "unit_price": "270",
                                            "isInStock": "0", "price_currency_code": "UAH"}]


def test_product_update_needs_stock_and_comes_only_from_the_backend() -> None:
    # isInStock: "Required, can be 0 or 1".
    with pytest.raises(MappingError, match="in_stock"):
        VENDOR.requests_for(updated({"product_id": "1", "price": 5}), CONFIG)
    assert VENDOR.requests_for(updated(IPHONE, source="browser"), CONFIG) == []
    for name, module in [("goshops", "goshops"), ("advisable", "advisable"),
                         ("alana", "alana"), ("retailrocket", "retailrocket")]:
        vendor = __import__(f"shoprelay.vendors.{module}", fromlist=["VENDOR"]).VENDOR
        assert ev.PRODUCT_UPDATED not in vendor.handles, name


def with_server_key(table: dict[str, Any]) -> None:
    table["sites"]["demo"]["server_key"] = SERVER_KEY


def test_backend_update_reaches_yespo_only_and_a_browser_copy_is_refused(tmp_path: Path
                                                                          ) -> None:
    with relay_stack(tmp_path, adjust=with_server_key) as stack:
        auth = {"Authorization": "Basic " + base64.b64encode(f"{SERVER_KEY}:".encode()).decode()}
        answer = httpx.post(f"{stack.relay_url}/v1/track", headers=auth, json={
            "event": "Product Updated", "anonymousId": "catalogue", "properties": IPHONE})
        assert answer.status_code == 200, answer.text

        browser = httpx.post(f"{stack.relay_url}/v1/batch", headers={"Origin": ORIGIN}, json={
            "writeKey": WRITE_KEY, "batch": [
                track("Product Updated", "b-1", **{**IPHONE, "price": 0.01}),
                track("Product Viewed", "b-2", product_id="101", price=89, currency="USD")]})
        assert browser.status_code == 200
        assert browser.json()["accepted"] == 1
        assert browser.json()["rejected"] == [{
            "index": 0, "messageId": "b-1",
            "error": "Product Updated is a catalogue update: only the shop's backend may send "
                     "it (server API, server key)"}]
        alone = httpx.post(f"{stack.relay_url}/v1/track?writeKey={WRITE_KEY}",
                           json={"event": "Product Updated", "properties": IPHONE})
        assert alone.status_code == 400

        vendors = ["yespo", "goshops", "retailrocket", "alana", "advisable"]
        # The browser's Product Viewed reaches every vendor: they are all live.
        for vendor in vendors:
            wait_for(lambda v=vendor: stack.received(v), timeout=30)
        time.sleep(1.0)  # anything extra would have been delivered by now
        yespo = [r["body"] for r in stack.received("yespo")]
        updates = [b for b in yespo if b["GeneralInfo"]["eventName"] == "ProductUpdate"]
        assert [u["ProductUpdate"][0]["unit_price"] for u in updates] == ["201.95"]
        assert stack.refused("yespo") == []
        for vendor in vendors[1:]:
            assert "430738" not in json.dumps(stack.received(vendor, accepted_only=False)), vendor
