"""Ingest into Redis: read what the ingest rules ask for under WATCH, write their plan at once.

- **Ingest.** A request's messages are folded into their visitors' state (the same pure
  `identity.state.apply` as SQLite) inside one optimistic transaction: WATCH the visitors'
  state keys and the messageId / order_id dedup keys, read them, fold, then MULTI/EXEC the new
  states, the stored events, the dedup keys and one XADD per (event, vendor). Two processes
  ingesting for one visitor at once cannot lose a state update: the later EXEC fails
  (WatchError) and is folded again on the fresh state. The answer waits for EXEC.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import orjson
from redis.exceptions import WatchError

from shoprelay.identity.state import VisitorState
from shoprelay.rules import (
    IngestPlan,
    IngestRules,
    Keys,
    Missing,
    OrderRecord,
    RequestContext,
    UserBinding,
)
from shoprelay.spool.base import PENDING, STATE_NAMES, IngestResult
from shoprelay.spool.redis.context import RedisContext
from shoprelay.spool.redis.keys import COMMIT

#: A message's trace field for a vendor before delivery has touched it.
_QUEUED = orjson.dumps({"s": STATE_NAMES[PENDING]})

#: Given the fold's result: more operations (COMMIT's format) for the same transaction.
Finish = Callable[[IngestResult], list[Any]]

#: An ingest transaction that keeps failing on contention is tried this often before giving up.
_INGEST_TRIES = 100


class _Snapshot:
    """The ingest rules' view of Redis: the values read (under WATCH) so far. A key not read
    yet raises `Missing`, and the spool reads it and folds again."""

    def __init__(self, k: Callable[[str, str, str], str], site: str,
                 known: dict[str, str | None]) -> None:
        self._k = k
        self._site = site
        self._known = known

    def _get(self, kind: str, key: str) -> str | None:
        full = self._k(kind, self._site, key)
        if full not in self._known:
            raise Missing(kind, full)
        return self._known[full]

    def alias(self, anonymous_id: str) -> str | None:
        return self._get("alias", anonymous_id)

    def user(self, user_id: str) -> UserBinding | None:
        raw = self._get("user", user_id)
        return None if raw is None else UserBinding.decode(raw)

    def message_seen(self, message_id: str) -> bool:
        return self._get("msg", message_id) is not None

    def order(self, order_id: str) -> OrderRecord | None:
        raw = self._get("ord", order_id)
        return None if raw is None else OrderRecord.from_json(raw)

    def state(self, visitor_id: str) -> VisitorState:
        raw = self._get("st", visitor_id)
        # Parsed afresh on every fold: a fold that ran into `Missing` may have changed the
        # object it was given.
        return VisitorState.from_dict(orjson.loads(raw)) if raw else VisitorState()


class Ingest:
    """`RedisSpool.ingest`: the rules decide, this reads and writes."""

    def __init__(self, ctx: RedisContext, rules: IngestRules,
                 alias_for: Callable[[str, str], str]) -> None:
        self._ctx = ctx
        self._rules = rules
        self._alias_for = alias_for

    async def ingest(self, site: str, messages: list[dict[str, Any]],
                     context: RequestContext, received_at: float | None = None,
                     finish: Finish | None = None) -> IngestResult:
        """Store the messages as the ingest rules decide, in one Redis transaction; `finish`
        adds operations of the caller's to that same transaction (the rules stage removes
        the intake entry there)."""
        received_at = time.time() if received_at is None else received_at
        for _ in range(_INGEST_TRIES):
            try:
                return await self._ingest_once(site, messages, context, received_at, finish)
            except WatchError:
                # Another process changed one of these visitors (or stored one of these
                # messages) since we read it: fold again on what is there now.
                await asyncio.sleep(random.uniform(0, 0.002))
        raise RuntimeError("ingest: too much contention on the same visitors")

    async def _ingest_once(self, site: str, messages: list[dict[str, Any]],
                           context: RequestContext, received_at: float,
                           finish: Finish | None = None) -> IngestResult:
        keys = self._rules.keys(messages, context)
        k = self._ctx.keys.k
        wanted = [*(k("alias", site, a) for a in (*keys.anonymous_ids, *keys.tokens)),
                  *(k("user", site, u) for u in keys.user_ids),
                  *(k("msg", site, m) for m in keys.message_ids),
                  *(k("ord", site, o) for o in keys.order_ids),
                  *(k("st", site, v) for v in keys.visitors)]
        known: dict[str, str | None] = {}
        async with self._ctx.redis.pipeline(transaction=True) as pipe:
            await self._read(pipe, wanted, known)
            # Read ahead the states the aliases and bindings point to, and those new aliases
            # will make: most requests then fold in one pass.
            await self._read(pipe, [k("st", site, v)
                                    for v in self._likely_visitors(site, keys, known)], known)
            for _ in range(len(messages) * 3 + 1):
                try:
                    plan = self._rules.fold(site, messages, context, _Snapshot(k, site, known),
                                            received_at)
                    break
                except Missing as missing:
                    await self._read(pipe, [missing.key], known)
            else:  # pragma: no cover - the fold asks for at most a few keys per message
                raise RuntimeError("ingest: the fold kept asking for more keys")
            await self._commit(pipe, site, plan, received_at,
                               finish(plan.result) if finish is not None else [])
        if plan.work:
            self._ctx.on_new_work()
        return plan.result

    @staticmethod
    async def _read(pipe: Any, keys: list[str], known: dict[str, str | None]) -> None:
        """Read keys not read yet, WATCHing them: EXEC fails if any of them changes."""
        new = [key for key in dict.fromkeys(keys) if key not in known]
        if new:
            await pipe.watch(*new)
            known.update(zip(new, await pipe.mget(new), strict=True))

    def _likely_visitors(self, site: str, keys: Keys,
                         known: dict[str, str | None]) -> list[str]:
        k = self._ctx.keys.k
        found = [known.get(k("alias", site, a)) or self._alias_for(site, a)
                 for a in keys.anonymous_ids]
        found += [UserBinding.decode(v).visitor_id for u in keys.user_ids
                  if (v := known.get(k("user", site, u)))]
        return list(dict.fromkeys(found))

    async def _commit(self, pipe: Any, site: str, plan: IngestPlan, received_at: float,
                      extra: list[Any]) -> None:
        """Write the plan inside MULTI, as one script call: EXEC still runs it only if nothing
        WATCHed changed, and one command with one reply costs far less than ~10 a message
        (measured: the client's packing and reply parsing dominated)."""
        ctx, k = self._ctx, self._ctx.keys.k
        rows = plan.work
        last_id = 0
        if plan.stored:
            # Ids for the events and their work, reserved before MULTI (EXEC may still fail;
            # a failed try only leaves a gap in the numbering).
            last_id = int(await pipe.incrby(k("seq"), len(plan.stored) + rows))
        next_id = last_id - len(plan.stored) - rows + 1
        ops: list[Any] = []
        state_ttl, event_ttl = ctx.state_ttl, ctx.event_ttl or 0
        dedup_ttl = ctx.dedup_ttl or 0
        for anonymous_id, visitor in plan.aliases.items():
            ops += ("S", k("alias", site, anonymous_id), visitor, state_ttl)
        for user_id, binding in plan.users.items():
            ops += ("S", k("user", site, user_id), binding.encode(), state_ttl)
        for visitor, state in plan.states.items():
            ops += ("S", k("st", site, visitor), orjson.dumps(state.to_dict()), state_ttl)
        for order_id, record in plan.orders.items():
            ops += ("S", k("ord", site, order_id), record.to_json(), dedup_ttl)
        streams: set[str] = set()
        groups: set[tuple[str, str]] = set()
        queued = k("queued")
        stamp = repr(received_at)
        for stored in plan.stored:
            event = stored.event
            event_id, next_id = next_id, next_id + 1
            event_key = k("ev", site, str(event_id))
            ops += ("S", event_key, orjson.dumps(event.to_dict()), event_ttl,
                    "S", k("msg", site, event.message_id), event_key, dedup_ttl,
                    # For traces and backfill: the visitor's and the site's timelines.
                    "Z", k("vm", site, stored.visitor_id), stamp, event.message_id, event_ttl,
                    "Z", k("hist", site), stamp, str(event_id), 0)
            if not stored.vendors:
                continue
            # One entry for all its vendors (see `keys`): the i-th vendor's work id is
            # work_id + i, so the ids stay one per (event, vendor) as `OutboxRow.id` needs.
            work_id, next_id = next_id, next_id + len(stored.vendors)
            stream = ctx.keys.stream_key(site, ctx.keys.partition_of(stored.visitor_id))
            streams.add(stream)
            groups.update((stream, vendor) for vendor in stored.vendors)
            ops += ("X", stream, work_id, event_key, stored.visitor_id, stamp,
                    ",".join(stored.vendors), queued, site)
            trace = k("tr", site, event.message_id)
            for vendor in stored.vendors:
                ops += ("F", trace, vendor, _QUEUED, event_ttl)
        for message_id, note, noted_order in plan.notes:
            ops += ("L", k("note", site, message_id),
                    orjson.dumps([received_at, note]), event_ttl)
            if noted_order is not None:
                ops += ("L", k("on", site, noted_order), message_id, event_ttl)
        if plan.stored:
            ops += ("H", k("counts"), "messages", len(plan.stored))
        for stream in streams:
            ops += ("A", k("streams"), stream)
        if streams:
            ops += ("P", k("wake"), site)
        ops += extra
        await ctx.ensure_groups(groups)
        pipe.multi()
        if ops:
            pipe.eval(COMMIT, 0, *ops)
        await pipe.execute()
