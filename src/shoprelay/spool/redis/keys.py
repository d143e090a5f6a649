"""Where the Redis spool keeps what: key naming, stream ids, and the Lua scripts.

- **Work: one entry per stored message, each vendor's progress beside it.** Per site a fixed
  number of partition streams `q:SITE:pN`; a visitor always hashes to the same partition, so
  its events are in one stream in the order they were accepted. Each stored event is one
  entry there, naming the vendors it is for (`d`, comma-separated, in routing order) and the
  first of its work ids (`w`: the work of the i-th vendor named is `w + i`, the `OutboxRow.id`),
  with the event key (`e`), the visitor (`v`), the arrival time (`t`) and, for a replayed part
  letter, the part (`p`). Every vendor has a consumer group of its own on the stream (named
  after the vendor): its last-delivered id and pending list *are* that vendor's progress, kept
  beside the one entry. A group reading an entry that does not name its vendor acknowledges
  it at once (`partitions`). The group of every vendor an entry names exists before the entry
  is written (`RedisContext.ensure_groups`), so `prune` trims an entry (XTRIM MINID) only once
  every group is past it. `queued` (hash, field SITE|VENDOR) counts the entries naming a
  vendor and not yet acknowledged by its group, written in the same script as each XADD and
  each XACK (`ACK`): the queue figures without reading the streams. Retry state lives in a
  small hash per work id, written only when a row is retried or half-sent.
- **Before (until 2026-12-03): one stream per (site, vendor, partition)**, `q:SITE:VENDOR:pN`,
  each event XADDed once per vendor. Such streams, listed in `queues`, are still read by the
  holder of the (site, vendor, partition) lease before the new stream's entries (they are
  older, so each visitor's order holds), and deleted once drained; nothing writes them now.

Every key starts with the spool's prefix (`redis_prefix`, default "shoprelay:"):

- `st:SITE:VISITOR` visitor state (JSON), `alias:SITE:ANONYMOUS_ID` and `user:SITE:USER_ID`
  the visitor they belong to; `msg:SITE:MESSAGE_ID` and `ord:SITE:ORDER_ID` dedup keys;
  `ev:SITE:ID` a stored event (JSON);
- `q:SITE:pN` a partition stream (one group per vendor), `streams` the set of them, `queued`
  the per (site, vendor) count of entries not yet acknowledged, `pruned` each (stream,
  vendor)'s last entry `prune` counted as forgotten (field STREAM|VENDOR); `q:SITE:VENDOR:pN` and
  `queues` the layout before (above), read until empty;
  `lease:SITE:VENDOR:pN` a vendor's lease on a partition (value = the holder's `proc_id`);
- `work:ID` a work id's retry state, `seq` the id counter, `counts` the state counters;
- `dead` dead-letter records by work id, `dead:time` their failure times;
- `tr:SITE:MESSAGE_ID` a message's trace (hash: vendor → its work's state and last exchange),
  `note:SITE:MESSAGE_ID` notes on copies not stored, `vm:SITE:VISITOR` a visitor's messages
  and `hist:SITE` a site's events (sorted sets by arrival time), `on:SITE:ORDER_ID` the order
  copies dropped as duplicates: for `shoprelay trace` and `backfill`, all with the event TTL;
- `in:pN` the intake (one entry per accepted request, group `rules`), `inlease:pN` its
  partition's rules lease, `in:failed` entries the rules stage could not fold,
  `ires:TICKET` the fold's answer kept for a server request that waits for it, `wakein` the
  pub/sub channel that announces new intake;
- `hc:MINUTE` per-minute fate counters (field SITE|VENDOR|FATE), `hm:SITE:VENDOR` the work
  rows answered in the last minute (sorted set by answer time), `hl:SITE:VENDOR` the last
  error and delivery: a vendor's health figures;
- `procs` the live processes (a sorted set of heartbeat deadlines), `wake` the pub/sub channel
  that announces new work; `rl:…` belongs to the shared vendor limiter.
"""

from __future__ import annotations

import zlib

#: Compare-and-renew / compare-and-delete of a lease: only the holder may touch it.
RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
#: Renew the leases (KEYS) this process (ARGV[1]) holds for ARGV[2] ms, taking back any that
#: lapsed and nobody took meanwhile; one reply per lease: 1 renewed, 2 taken back, 0 held by
#: another process. Taking back is safe: a lapsed lease nobody took means no other process
#: started on the partition, so a relay too busy to renew in time has lost nothing.
KEEP = """
local kept = {}
for i, lease in ipairs(KEYS) do
  local holder = redis.call('get', lease)
  if holder == ARGV[1] then
    redis.call('pexpire', lease, ARGV[2])
    kept[i] = 1
  elseif not holder then
    redis.call('set', lease, ARGV[1], 'PX', ARGV[2])
    kept[i] = 2
  else
    kept[i] = 0
  end
end
return kept
"""
RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
#: An ingest's writes, as a flat list of operations (run inside MULTI, after the WATCH check):
#: S key value ttl (SET, ttl 0 = none) | X stream work event visitor time vendors queued site
#: (XADD, and HINCRBY of the `queued` hash's field SITE|VENDOR for each vendor) |
#: H key field n (HINCRBY) | A key member (SADD) | P channel message (PUBLISH) |
#: F key field value ttl (HSET) | Z key score member ttl (ZADD) | L key value ttl (RPUSH) |
#: K stream group id (XACK) | D stream id (XDEL);
#: F, Z and L renew the key's TTL when ttl is not 0.
COMMIT = """
local i, n = 1, #ARGV
while i <= n do
  local op = ARGV[i]
  if op == 'S' then
    if ARGV[i + 3] ~= '0' then
      redis.call('SET', ARGV[i + 1], ARGV[i + 2], 'EX', ARGV[i + 3])
    else
      redis.call('SET', ARGV[i + 1], ARGV[i + 2])
    end
    i = i + 4
  elseif op == 'X' then
    redis.call('XADD', ARGV[i + 1], '*', 'w', ARGV[i + 2], 'e', ARGV[i + 3], 'v', ARGV[i + 4],
               't', ARGV[i + 5], 'd', ARGV[i + 6])
    for vendor in string.gmatch(ARGV[i + 6], '[^,]+') do
      redis.call('HINCRBY', ARGV[i + 7], ARGV[i + 8] .. '|' .. vendor, 1)
    end
    i = i + 9
  elseif op == 'H' then
    redis.call('HINCRBY', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  elseif op == 'A' then
    redis.call('SADD', ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'P' then
    redis.call('PUBLISH', ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'F' or op == 'Z' then
    if op == 'F' then
      redis.call('HSET', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
    else
      redis.call('ZADD', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
    end
    if ARGV[i + 4] ~= '0' then
      redis.call('EXPIRE', ARGV[i + 1], ARGV[i + 4])
    end
    i = i + 5
  elseif op == 'K' then
    redis.call('XACK', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  elseif op == 'D' then
    redis.call('XDEL', ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'L' then
    redis.call('RPUSH', ARGV[i + 1], ARGV[i + 2])
    if ARGV[i + 3] ~= '0' then
      redis.call('EXPIRE', ARGV[i + 1], ARGV[i + 3])
    end
    i = i + 4
  else
    return redis.error_reply('unknown op ' .. tostring(op))
  end
end
return 1
"""


#: Acknowledge one entry for one group; when it was still pending there (a second XACK of the
#: same entry, e.g. after a lost lease, returns 0), count it off `queued` (KEYS[2], field
#: ARGV[3]; none for an entry of the streams before).
ACK = """
local n = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if n == 1 and ARGV[3] ~= '' then
  redis.call('HINCRBY', KEYS[2], ARGV[3], -1)
end
return n
"""

#: Count a vendor's entries (those whose `d` names ARGV[1]) on a stream (KEYS[1]) after its
#: mark (field ARGV[3] of KEYS[2]) and before id ARGV[2], at most ARGV[4] entries, and move
#: the mark to the last entry looked at: {entries of the vendor, entries looked at}.
PRUNED = """
local mark = redis.call('HGET', KEYS[2], ARGV[3])
local from = '-'
if mark then from = '(' .. mark end
local entries = redis.call('XRANGE', KEYS[1], from, '(' .. ARGV[2], 'COUNT', ARGV[4])
local n = 0
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for j = 1, #fields, 2 do
    if fields[j] == 'd' then
      for vendor in string.gmatch(fields[j + 1], '[^,]+') do
        if vendor == ARGV[1] then n = n + 1 end
      end
    end
  end
end
if #entries > 0 then
  redis.call('HSET', KEYS[2], ARGV[3], entries[#entries][1])
end
return {n, #entries}
"""


class KeySpace:
    """The names of one spool's keys: its prefix and its number of partitions per queue."""

    def __init__(self, prefix: str, partitions: int) -> None:
        self.prefix = prefix
        self.partitions = max(1, partitions)

    def k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def stream_key(self, site: str, partition: int) -> str:
        """A site's partition stream: one entry per stored message, one group per vendor."""
        return self.k("q", site, f"p{partition}")

    def legacy_key(self, site: str, vendor: str, partition: int) -> str:
        """A (site, vendor) partition stream of the layout before, read until empty."""
        return self.k("q", site, vendor, f"p{partition}")

    def partition_of(self, visitor: str) -> int:
        # crc32 is stable across processes and releases (Python's hash() is salted).
        return zlib.crc32(visitor.encode()) % self.partitions


def vendor_of(stream: str) -> str:
    """The vendor of a legacy (site, vendor) stream's key (also the name of its group)."""
    return stream.split(":")[-2]


def site_of(stream: str) -> str:
    """The site of a legacy (site, vendor) stream's key."""
    return stream.split(":")[-3]


def queued_field(site: str, vendor: str) -> str:
    """A (site, vendor)'s field in the `queued` hash."""
    return f"{site}|{vendor}"


def names(entry_vendors: str, vendor: str) -> int | None:
    """Where `vendor` is among an entry's vendors (`d`), or None if the entry is not for it."""
    for index, name in enumerate(entry_vendors.split(",")):
        if name == vendor:
            return index
    return None


def id_time(entry_id: str) -> float:
    """When a stream entry was added (its id's milliseconds), in seconds."""
    return int(entry_id.split("-", 1)[0]) / 1000.0


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable (milliseconds, sequence) pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
