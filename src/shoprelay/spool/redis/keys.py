"""Where the Redis spool keeps what: key naming, stream ids, and the Lua scripts.

- **Work.** Per (site, vendor) a fixed number of partition streams; a visitor always hashes to
  the same partition, so its events are in one stream in the order they were accepted. Each
  stream has a consumer group named after the vendor; entries carry the work id (an INCR
  counter, the `OutboxRow.id`), the event key and the visitor. Retry state lives in a small
  hash per work id, written only when a row is retried or half-sent.

Every key starts with the spool's prefix (`redis_prefix`, default "shoprelay:"):

- `st:SITE:VISITOR` visitor state (JSON), `alias:SITE:ANONYMOUS_ID` and `user:SITE:USER_ID`
  the visitor they belong to; `msg:SITE:MESSAGE_ID` and `ord:SITE:ORDER_ID` dedup keys;
  `ev:SITE:ID` a stored event (JSON);
- `q:SITE:VENDOR:pN` a partition stream (group = VENDOR), `queues` the set of every stream,
  `lease:SITE:VENDOR:pN` the partition's lease (value = the holder's `proc_id`);
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
RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
#: An ingest's writes, as a flat list of operations (run inside MULTI, after the WATCH check):
#: S key value ttl (SET, ttl 0 = none) | X stream work event visitor time (XADD) |
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
               't', ARGV[i + 5])
    i = i + 6
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


class KeySpace:
    """The names of one spool's keys: its prefix and its number of partitions per queue."""

    def __init__(self, prefix: str, partitions: int) -> None:
        self.prefix = prefix
        self.partitions = max(1, partitions)

    def k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def stream_key(self, site: str, vendor: str, partition: int) -> str:
        return self.k("q", site, vendor, f"p{partition}")

    def partition_of(self, visitor: str) -> int:
        # crc32 is stable across processes and releases (Python's hash() is salted).
        return zlib.crc32(visitor.encode()) % self.partitions


def vendor_of(stream: str) -> str:
    """The vendor of a partition stream's key (also the name of its consumer group)."""
    return stream.split(":")[-2]


def site_of(stream: str) -> str:
    return stream.split(":")[-3]


def id_time(entry_id: str) -> float:
    """When a stream entry was added (its id's milliseconds), in seconds."""
    return int(entry_id.split("-", 1)[0]) / 1000.0


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable (milliseconds, sequence) pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
