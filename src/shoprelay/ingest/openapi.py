"""The OpenAPI document of the ingestion routes (CONTRACT §1), served at `/openapi.json`."""

from __future__ import annotations

from typing import Any

from shoprelay import __version__
from shoprelay.ingest.validation import MESSAGE_TYPES, SHORT_TYPES

_CONTEXT = {
    "type": "object",
    "properties": {
        "page": {"type": "object", "properties": {
            k: {"type": "string"} for k in ("url", "path", "referrer", "title", "search")}},
        "userAgent": {"type": "string"},
        "locale": {"type": "string"},
        "campaign": {"type": "object", "additionalProperties": {"type": "string"}},
        "consent": {"type": "object", "additionalProperties": {"type": "boolean"}},
    },
}
_MESSAGE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": sorted(MESSAGE_TYPES)},
        "messageId": {"type": "string", "maxLength": 100},
        "timestamp": {"type": "string", "format": "date-time"},
        "anonymousId": {"type": "string"},
        "userId": {"type": "string"},
        "event": {"type": "string", "minLength": 1},
        "name": {"type": "string"},
        "category": {"type": "string"},
        "properties": {"type": "object"},
        "traits": {"type": "object"},
        "context": _CONTEXT,
    },
}
_ANSWER = {
    "type": "object",
    "required": ["success", "accepted", "rejected"],
    "properties": {
        "success": {"type": "boolean"},
        "accepted": {"type": "integer"},
        "error": {"type": "string"},
        "code": {"type": "string"},
        "message": {"type": "string"},
        "rejected": {"type": "array", "items": {"type": "object", "properties": {
            "index": {"type": "integer"}, "messageId": {"type": ["string", "null"]},
            "error": {"type": "string"}}}},
    },
}


def _responses() -> dict[str, Any]:
    json_answer = {"application/json": {"schema": _ANSWER}}
    return {
        "200": {"description": "Stored durably; rejected ones listed", "content": json_answer},
        "400": {"description": "Malformed JSON, or no message was valid", "content": json_answer},
        "401": {"description": "Unknown or missing write key", "content": json_answer},
        "403": {"description": "Origin not allowed for this write key", "content": json_answer},
        "408": {"description": "The body arrived too slowly", "content": json_answer},
        "413": {"description": "Over 32 KB a message or 500 KB a batch (after inflating a "
                               "gzip or deflate body)", "content": json_answer},
        "415": {"description": "A Content-Encoding other than gzip or deflate",
                "content": json_answer},
        "429": {"description": "Too many requests from this address (Retry-After)",
                "content": json_answer},
    }


def _operation(summary: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "summary": summary,
        "parameters": [{"name": "writeKey", "in": "query", "required": False,
                        "schema": {"type": "string"}}],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": schema}, "text/plain": {"schema": schema}}},
        "responses": _responses(),
        "security": [{}, {"basic": []}],
    }


def document() -> dict[str, Any]:
    batch = {"type": "object", "required": ["batch"], "properties": {
        "batch": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "sentAt": {"type": "string", "format": "date-time"},
        "writeKey": {"type": "string"},
        "context": _CONTEXT,
    }}
    single = {**_MESSAGE, "properties": {**_MESSAGE["properties"],
                                         "writeKey": {"type": "string"}}}
    paths: dict[str, Any] = {
        "/v1/batch": {"post": _operation("A batch of messages (what the tracker sends)", batch)},
        "/v1/b": {"post": _operation("A batch of messages (short form)", batch)},
        "/beacon/v1/batch": {"post": _operation("A batch of messages (RudderStack's beacon "
                                                "transport)", batch)},
    }
    for short, kind in SHORT_TYPES.items():
        paths[f"/v1/{kind}"] = {"post": _operation(f"One {kind} message", single)}
        paths[f"/v1/{short}"] = {"post": _operation(f"One {kind} message (short form)", single)}
    return {
        "openapi": "3.1.0",
        "info": {"title": "shoprelay ingestion API", "version": __version__,
                 "description": "Segment's HTTP tracking API shape. The write key goes in the "
                                "body, as the HTTP Basic user name, or as ?writeKey=."},
        "paths": paths,
        "components": {"securitySchemes": {"basic": {"type": "http", "scheme": "basic"}}},
    }
