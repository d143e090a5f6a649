"""Durable storage between ingest and delivery: accepted events, their work, visitor state."""

from shoprelay.spool.base import DeadLetter, IngestResult, OutboxRow, SpoolStats
from shoprelay.spool.sqlite import SqliteSpool

__all__ = ["DeadLetter", "IngestResult", "OutboxRow", "SpoolStats", "SqliteSpool"]
