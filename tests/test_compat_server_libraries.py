"""The real server libraries send a shop backend's identifies and orders through the server API.

`segment-analytics-python` and `rudder-sdk-python` (PyPI, in the [test] extras; RudderStack's
gzips every body) and Node's `@segment/analytics-node` (npm, tests/js/), each with the site's
server key as its write key and the relay as its host. Judged by what the Retail Rocket and Go
Shops sandboxes received: the user's contact, and the order once though the backend sent it
twice.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from relay_fixtures import relay_stack
from servers import wait_for
from test_compat_analytics_next import JS, analytics_next_bundle

SERVER_KEY = "sk_backend_secret_0123456789"
LIBRARIES = ["segment-analytics-python", "rudder-sdk-python", "@segment/analytics-node"]


def with_server_key(table: dict[str, Any]) -> None:
    table["sites"]["demo"]["server_key"] = SERVER_KEY


def order_properties(order_id: str) -> dict[str, Any]:
    return {"order_id": order_id, "revenue": 25.0, "currency": "USD",
            "products": [{"product_id": "7", "price": 12.5, "quantity": 2}]}


def send_with_python(library: str, host: str, user: str, order_id: str) -> None:
    if library == "segment-analytics-python":
        from segment.analytics.client import Client as SegmentClient

        client: Any = SegmentClient(write_key=SERVER_KEY, host=host, sync_mode=True)
    else:
        from rudderstack.analytics.client import Client as RudderClient

        client = RudderClient(write_key=SERVER_KEY, host=host, sync_mode=True)
        assert client.gzip  # its default: the relay has to read gzip
    # sync_mode: each call is one request, and a refused one raises.
    client.identify(user, {"email": f"{user}@example.com", "name": "Ada"})
    client.track(user, "Order Completed", order_properties(order_id))
    client.track(user, "Order Completed", order_properties(order_id))  # a retry of the job


NODE_SCRIPT = """
import { Analytics } from '@segment/analytics-node';
const [host, writeKey, user, properties] = process.argv.slice(1);
const analytics = new Analytics({ writeKey, host, flushAt: 1, maxRetries: 0 });
analytics.on('error', (err) => { console.error('error', err); process.exitCode = 1; });
analytics.identify({ userId: user, traits: { email: `${user}@example.com`, name: 'Ada' } });
analytics.track({ userId: user, event: 'Order Completed', properties: JSON.parse(properties) });
analytics.track({ userId: user, event: 'Order Completed', properties: JSON.parse(properties) });
await analytics.closeAndFlush();
"""


def send_with_node(host: str, user: str, order_id: str) -> None:
    analytics_next_bundle()  # npm ci of tests/js (once per lockfile)
    proc = subprocess.run(
        ["node", "--input-type=module", "-e", NODE_SCRIPT, host, SERVER_KEY, user,
         json.dumps(order_properties(order_id))],
        cwd=JS, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"node failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.parametrize("library", LIBRARIES)
def test_server_library_sends_identify_and_order_once(tmp_path: Path, library: str) -> None:
    with relay_stack(tmp_path, vendors=["retailrocket", "goshops"],
                     adjust=with_server_key) as stack:
        user, order_id = "u-backend", f"o-{library.replace('/', '-')}"
        if library.startswith("@segment/analytics-node"):
            send_with_node(stack.relay_url, user, order_id)
        else:
            send_with_python(library, stack.relay_url, user, order_id)

        stack.wait_received("retailrocket", 2)
        wait_for(lambda: stack.received("goshops"))
        time.sleep(1.0)  # anything extra would have been delivered by now
        rr = stack.received("retailrocket")
        assert [r["path"].rsplit("/", 1)[-1] for r in rr] == ["setContact", "order"]
        assert rr[0]["body"]["email"] == "u-backend@example.com"
        assert rr[1]["body"]["transaction"] == order_id
        assert rr[0]["body"]["sessionExternalId"] == rr[1]["body"]["sessionExternalId"]
        goshops = [r["body"]["data"] for r in stack.received("goshops")]
        assert [(g["event"], g["customer"], str(g["item"])) for g in goshops] == [
            ("purchase", user, "7")]
        assert stack.refused("retailrocket") == [] and stack.refused("goshops") == []


def test_catalogue_update_from_a_server_library_reaches_yespo(tmp_path: Path) -> None:
    """`track('Product Updated', …)` through rudder-sdk-python (gzip) becomes ProductUpdate."""
    from rudderstack.analytics.client import Client as RudderClient

    with relay_stack(tmp_path, vendors=["yespo", "retailrocket"],
                     adjust=with_server_key) as stack:
        client = RudderClient(write_key=SERVER_KEY, host=stack.relay_url, sync_mode=True)
        client.track("catalogue", "Product Updated", {
            "product_id": "430738", "name": "iPhone 7", "price": 201.95, "currency": "UAH",
            "in_stock": False, "url": "https://shop.example/p/430738"})
        (record,) = stack.wait_received("yespo", 1)
        assert record["body"]["ProductUpdate"] == [{
            "product_id": "430738", "isInStock": "0", "unit_price": "201.95",
            "price_currency_code": "UAH", "name": "iPhone 7",
            "url": "https://shop.example/p/430738"}]
        time.sleep(1.0)
        assert stack.received("retailrocket") == []


def test_a_refusal_reaches_the_libraries_as_their_own_api_error(tmp_path: Path) -> None:
    """Both Python libraries read `code` and `message` of a non-200 answer (a KeyError
    without them): a wrong key is their APIError with the relay's reason."""
    from rudderstack.analytics.client import Client as RudderClient
    from rudderstack.analytics.request import APIError as RudderAPIError
    from segment.analytics.client import Client as SegmentClient
    from segment.analytics.request import APIError as SegmentAPIError

    with relay_stack(tmp_path, vendors=["retailrocket"], adjust=with_server_key) as stack:
        for client, error in [
                (RudderClient(write_key="sk_wrong_0123456789", host=stack.relay_url,
                              sync_mode=True, max_retries=0), RudderAPIError),
                (SegmentClient(write_key="sk_wrong_0123456789", host=stack.relay_url,
                               sync_mode=True, max_retries=0), SegmentAPIError)]:
            with pytest.raises(error) as refused:
                client.track("u-1", "Order Completed", order_properties("o-x"))
            assert refused.value.status == 401
            assert refused.value.code == "unknown_key"
            assert refused.value.message == "unknown or missing write key"
