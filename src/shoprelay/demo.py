"""`shoprelay demo`: the relay, the demo shop and every vendor sandbox on 127.0.0.1.

The shop and the relay share one origin (the relay answers /s.js and /v1/* beside the shop's
pages), which is the deployment we recommend: the visitor cookie is first-party and no CORS is
involved. The sandboxes run on their own port, like real vendors would.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
from pathlib import Path
from typing import Any

import uvicorn

from shoprelay.app import create_app
from shoprelay.operate import admin
from shoprelay.sandbox import create_app as create_sandbox_app
from shoprelay.sandbox import demo_vendor_settings
from shoprelay.settings import Settings, parse

DEMO_WRITE_KEY = "pk_demo_shop"


def demo_table(*, shop_origin: str, sandbox_url: str, spool_file: str,
               vendors: list[str] | None = None, secret: str | None = None,
               forward_bots: bool = False, admin_token: str = "",
               identify_secret: str = "",
               shopify_webhook_secret: str | None = None) -> dict[str, Any]:
    """The demo's settings as a TOML-shaped table (tests adjust it before parsing)."""
    return {
        "relay": {"secret": secret or secrets.token_hex(16), "spool": f"sqlite://{spool_file}",
                  "spool_sync": "normal", "admin_token": admin_token,
                  # The vendors page links each request to its messages (demo only).
                  "vendor_message_id_header": True,
                  # Everything comes from 127.0.0.1 here (browser, tests, load tools).
                  "ingest_per_ip_per_minute": 0},
        "sites": {"demo": {"write_key": DEMO_WRITE_KEY, "allowed_origins": [shop_origin],
                           "forward_bots": forward_bots, "identify_secret": identify_secret,
                           # The demo shop's platform page signs Shopify order webhooks.
                           "shopify_webhook_secret": (shopify_webhook_secret
                                                      or secrets.token_hex(16)),
                           "vendors": demo_vendor_settings(sandbox_url, vendors)}},
    }


def demo_settings(**kwargs: Any) -> Settings:
    return parse(demo_table(**kwargs), source="<demo settings>", env={})


async def run_demo(*, host: str = "127.0.0.1", port: int = 8900, sandbox_port: int = 8901,
                   data_dir: str | None = None) -> None:
    from demo_shop.app import create_app as create_shop_app

    directory = Path(data_dir or tempfile.mkdtemp(prefix="shoprelay-demo-"))
    directory.mkdir(parents=True, exist_ok=True)
    shop_url = f"http://{host}:{port}"
    sandbox_url = f"http://{host}:{sandbox_port}"
    # A token made for this session only, so the live debugger is on out of the box (it
    # shows personal data, so it never runs without one) and dies with the process.
    token = secrets.token_urlsafe(24)
    settings = demo_settings(shop_origin=shop_url, sandbox_url=sandbox_url,
                             spool_file=str(directory / "spool.db"), admin_token=token)
    relay = create_app(settings)
    shop = create_shop_app(relay, write_key=DEMO_WRITE_KEY, sandbox_url=sandbox_url,
                           shopify_webhook_secret=settings.sites["demo"].shopify_webhook_secret)
    servers = [
        uvicorn.Server(uvicorn.Config(create_sandbox_app(), host=host, port=sandbox_port,
                                      log_level="warning", lifespan="off", access_log=False)),
        uvicorn.Server(uvicorn.Config(shop, host=host, port=port, log_level="warning",
                                      proxy_headers=False, access_log=False)),
    ]
    print(f"shoprelay demo\n"
          f"  shop (with the relay on the same origin): {shop_url}/\n"
          f"  what each vendor received:                {shop_url}/demo/vendors\n"
          f"  an order as Shopify's webhook reports it: {shop_url}/demo/platform\n"
          f"  live debugger (events in and out):        {admin.make_link(token, shop_url)}\n"
          f"    (open it within {admin.LINK_SECONDS // 60} minutes; the browser then keeps the "
          f"debugger for {admin.SESSION_SECONDS // 3600} hours)\n"
          f"  metrics:                                  curl -H 'Authorization: Bearer "
          f"{token}' {shop_url}/metrics\n"
          f"  admin token (this session only):          {token}\n"
          f"  vendor sandboxes:                         {sandbox_url}/_sandbox/requests\n"
          f"  spool:                                    {directory / 'spool.db'}\n"
          f"Press Ctrl+C to stop.", flush=True)
    await asyncio.gather(*(server.serve() for server in servers))
