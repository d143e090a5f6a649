"""Crawler and headless-tool detection by user agent.

The patterns come from the `crawler-user-agents` package (the community-kept list behind many
bot filters, released monthly), so keeping up with new crawlers is a dependency update, not our
code. A browser always sends a user agent; a missing one is treated as a tool.
"""

from __future__ import annotations

from functools import lru_cache

import crawleruseragents


@lru_cache(maxsize=4096)
def is_bot(user_agent: str | None) -> bool:
    # Each check runs ~600 regular expressions; real traffic has few distinct user agents, so
    # the cache makes the common case a dict lookup.
    if not user_agent or not user_agent.strip():
        return True
    return bool(crawleruseragents.is_crawler(user_agent))
