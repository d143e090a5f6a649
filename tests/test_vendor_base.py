"""What the vendor base owns for every adapter: generic config typing, the common value
checks and declared, checked rate-limit scopes; and the registry that finds adapters."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from shoprelay.sandbox import demo_vendor_settings
from shoprelay.vendors import VENDORS
from shoprelay.vendors.base import RateLimit, Vendor, VendorConfig


@dataclass(kw_only=True)
class _Config(VendorConfig):
    api_key: str = "k"
    rate_limit_per_second: int = 10


class _Misspelt(Vendor[_Config]):
    name = "misspelt"
    title = "Misspelt"
    config_class = _Config

    def rate_limits(self, config: _Config) -> list[RateLimit]:
        return [RateLimit(config.rate_limit_per_second, 1.0, scope="apikey")]


def test_a_limit_scope_that_names_no_settings_key_is_refused() -> None:
    problems = _Misspelt().check_config(_Config())
    assert "names no settings key ['apikey']" in problems["rate_limit"]


def test_the_base_refuses_non_positive_limits_for_every_adapter() -> None:
    assert _Misspelt().check_config(_Config(rate_limit_per_second=0))[
        "rate_limit_per_second"] == "must be at least 1"


@pytest.mark.parametrize("name", sorted(VENDORS))
def test_every_registered_adapter_declares_valid_scopes_and_accepts_its_demo_settings(
        name: str) -> None:
    vendor = VENDORS[name]
    config = vendor.config_class(**demo_vendor_settings("http://127.0.0.1", [name])[name])
    assert vendor.check_config(config) == {}
    for limit in vendor.rate_limits(config):
        # Two sites sharing a credential share its bucket; another credential gets its own.
        assert vendor.scope_key(limit, config)
