from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shoprelay.settings import SettingsError, load, parse
from shoprelay.vendors.retailrocket import RetailRocketConfig

GOOD = """
[relay]
secret = "${SHOPRELAY_SECRET}"
spool = "sqlite:///var/lib/shoprelay/spool.db"
cookie_name = "sc"
trusted_proxies = ["127.0.0.1"]

[sites.myshop]
write_key = "pk_myshop"
allowed_origins = ["https://myshop.example"]

[sites.myshop.vendors.retailrocket]
partner_id = "p-1"
api_key = "${RR_API_KEY}"
base_url = "http://127.0.0.1:9001/1.0/"
events = ["Product Viewed"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shoprelay.toml"
    path.write_text(text)
    return path


def test_contract_example_loads_with_environment(tmp_path: Path) -> None:
    env = {"SHOPRELAY_SECRET": "s" * 32, "RR_API_KEY": "rr-secret"}
    settings = load(write(tmp_path, GOOD), env=env)
    site = settings.sites["myshop"]
    assert settings.relay.secret == "s" * 32
    assert settings.relay.trusted_proxies == ["127.0.0.1"]
    assert settings.site_for_key("pk_myshop") is site
    assert settings.site_for_key("nope") is None
    rr = site.vendors["retailrocket"]
    assert isinstance(rr, RetailRocketConfig)
    assert (rr.api_key, rr.partner_id, rr.events) == ("rr-secret", "p-1", ["Product Viewed"])
    assert rr.enabled is True


def test_every_problem_is_named_with_file_and_key(tmp_path: Path) -> None:
    bad = GOOD.replace('partner_id = "p-1"', "partner_id = 7").replace(
        'base_url = "http://127.0.0.1:9001/1.0/"', 'base_url = "not a url"')
    bad += '\n[sites.myshop.vendors.nosuchvendor]\nx = 1\n'
    path = write(tmp_path, bad)
    with pytest.raises(SettingsError) as caught:
        load(path, env={"SHOPRELAY_SECRET": "s" * 32})
    text = str(caught.value)
    assert str(path) in text
    keys = {p.key for p in caught.value.problems}
    assert "relay.secret" not in keys
    assert "sites.myshop.vendors.retailrocket.api_key" in keys  # RR_API_KEY unset
    assert "sites.myshop.vendors.retailrocket.partner_id" in keys
    assert "sites.myshop.vendors.retailrocket.base_url" in keys
    assert "sites.myshop.vendors.nosuchvendor" in keys


def test_missing_credential_and_unknown_key_are_refused() -> None:
    with pytest.raises(SettingsError) as caught:
        parse({"relay": {"secret": "x" * 20, "colour": "blue"},
               "sites": {"a": {"write_key": "k", "vendors": {"retailrocket": {"api_key": "k"}}}}})
    reasons = {str(p) for p in caught.value.problems}
    assert "relay.colour: unknown key" in reasons
    assert "sites.a.vendors.retailrocket.partner_id: required" in reasons


def test_short_secret_bad_origin_and_unknown_event() -> None:
    with pytest.raises(SettingsError) as caught:
        parse({"relay": {"secret": "short"},
               "sites": {"a": {"write_key": "wk", "allowed_origins": ["https://a.example/path"],
                               "vendors": {"retailrocket": {
                                   "api_key": "k", "partner_id": "p",
                                   "events": ["Product Reviewed"]}}}}})
    keys = {p.key for p in caught.value.problems}
    assert keys == {"relay.secret", "sites.a.allowed_origins[0]",
                    "sites.a.vendors.retailrocket.events"}


def test_null_is_the_one_origin_that_is_no_url() -> None:
    """"null" (sandboxed frames: a Shopify custom pixel) is taken; look-alikes are not."""
    table = {"relay": {"secret": "s" * 32},
             "sites": {"a": {"write_key": "wk", "allowed_origins": ["https://a.example", "null"]}}}
    assert parse(table).sites["a"].allowed_origins == ["https://a.example", "null"]
    table["sites"]["a"]["allowed_origins"] = ["NULL", "null/"]
    with pytest.raises(SettingsError) as caught:
        parse(table)
    assert {p.key for p in caught.value.problems} == {"sites.a.allowed_origins[0]",
                                                      "sites.a.allowed_origins[1]"}


def test_not_toml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not valid TOML"):
        load(write(tmp_path, "[relay\nsecret="))


def test_serve_refuses_a_bad_file_with_nonzero_exit(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    proc = subprocess.run([sys.executable, "-m", "shoprelay", "serve", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin"})
    assert proc.returncode == 2
    assert str(path) in proc.stderr
    assert "relay.secret: environment variable SHOPRELAY_SECRET is not set" in proc.stderr


def test_check_config_command(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    env = {"PATH": "/usr/bin", "SHOPRELAY_SECRET": "s" * 32, "RR_API_KEY": "k"}
    ok = subprocess.run([sys.executable, "-m", "shoprelay", "check-config", str(path)],
                        capture_output=True, text=True, timeout=60, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "ok (1 site(s), 1 vendor table(s))" in ok.stdout
    del env["RR_API_KEY"]
    bad = subprocess.run([sys.executable, "-m", "shoprelay", "check-config", str(path)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 1
    assert "RR_API_KEY is not set" in bad.stderr


def test_vendor_value_rules_are_checked_at_start() -> None:
    with pytest.raises(SettingsError) as caught:
        parse({"relay": {"secret": "x" * 20},
               "sites": {"a": {"write_key": "wk", "vendors": {
                   "goshops": {"project": "p", "api_key": "k", "date_format": "yyyy"},
                   "retailrocket": {"api_key": "k", "partner_id": "p",
                                    "rate_limit_per_second": 0},
                   "advisable": {"app_id": "i", "app_secret": "s"}}}}})
    keys = {p.key for p in caught.value.problems}
    assert keys == {"sites.a.vendors.goshops.date_format",
                    "sites.a.vendors.retailrocket.rate_limit_per_second",
                    "sites.a.vendors.advisable.base_url"}


@pytest.mark.parametrize("share", [0, -0.5, 1.5])
def test_backfill_share_must_be_a_share(share: float) -> None:
    with pytest.raises(SettingsError) as caught:
        parse({"relay": {"secret": "x" * 20, "backfill_share": share},
               "sites": {"a": {"write_key": "k"}}})
    assert [str(p) for p in caught.value.problems] == [
        "relay.backfill_share: must be more than 0 and at most 1"]


def test_a_vendor_key_equal_to_the_public_write_key_is_refused() -> None:
    # The write key is in every page: a vendor key equal to it is public too.
    with pytest.raises(SettingsError) as caught:
        parse({"relay": {"secret": "x" * 20},
               "sites": {"a": {"write_key": "same-value-123", "vendors": {
                   "retailrocket": {"api_key": "same-value-123", "partner_id": "p"}}},
                         "b": {"write_key": "other-value-456", "vendors": {
                   "retailrocket": {"api_key": "same-value-123", "partner_id": "p"}}}}})
    assert [p.key for p in caught.value.problems] == [
        "sites.a.vendors.retailrocket.api_key", "sites.b.vendors.retailrocket.api_key"]
