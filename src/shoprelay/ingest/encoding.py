"""Compressed request bodies: `Content-Encoding: gzip` and `deflate`, inflated within the limit.

Server libraries compress by default (rudder-sdk-python gzips every batch), so every ingest
route reads them. The size limits are the contract's limits on the *message*, so they apply to
the inflated body, and they are enforced while inflating: zlib is asked for at most one byte
more than is still allowed, so a small body that inflates to gigabytes is refused after at most
`limit + 1` bytes were ever produced. The compressed bytes themselves are bounded by the same
limit (JSON compresses; a compressed body larger than its inflated limit is not a real client).
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

from shoprelay.ingest.validation import BadRequest

#: The encodings read, and zlib's window bits for each ("deflate" is settled on the first bytes).
_GZIP = 16 + zlib.MAX_WBITS
ENCODINGS = ("gzip", "x-gzip", "deflate", "identity")


def content_encoding(header: str | None) -> str:
    """The one encoding named by a Content-Encoding header ("" for none); 415 otherwise."""
    names = [n.strip().lower() for n in (header or "").split(",") if n.strip()]
    names = [n for n in names if n != "identity"]
    if not names:
        return ""
    if len(names) > 1 or names[0] not in ENCODINGS:
        raise BadRequest(415, f"Content-Encoding {header!r} is not supported; "
                              "send the body as is, gzip or deflate")
    return "gzip" if names[0] == "x-gzip" else names[0]


async def read_body(chunks: AsyncIterator[bytes], encoding: str, limit: int) -> bytes:
    """The body, inflated when `encoding` says so; 413 past `limit` bytes read or produced,
    400 when the compressed data is corrupt or cut short."""
    parts: list[bytes] = []
    read = 0
    produced = 0
    inflater: zlib._Decompress | None = None
    async for chunk in chunks:
        read += len(chunk)
        if read > limit:
            raise BadRequest(413, f"body is larger than the limit of {limit} bytes")
        if not encoding:
            parts.append(chunk)
            continue
        if inflater is None:
            if not chunk:
                continue
            inflater = zlib.decompressobj(_window_bits(encoding, chunk))
        try:
            # At most one byte past the limit: having it means the body is too large.
            out = inflater.decompress(chunk, limit - produced + 1)
        except zlib.error as exc:
            raise BadRequest(400, f"the {encoding} body cannot be decompressed: {exc}") from None
        produced += len(out)
        if produced > limit:
            raise BadRequest(413, f"decompressed body is larger than the limit of {limit} bytes")
        if inflater.unused_data:
            raise BadRequest(400, f"data after the end of the {encoding} stream")
        parts.append(out)
    if not encoding:
        return b"".join(parts)
    if inflater is None:
        return b""
    if not inflater.eof:
        raise BadRequest(400, f"the {encoding} body is cut short")
    return b"".join(parts)


def _window_bits(encoding: str, first: bytes) -> int:
    if encoding == "gzip":
        return _GZIP
    # HTTP's "deflate" is the zlib format (RFC 9110 §8.4.1.2), but some clients send raw
    # deflate: a zlib stream starts with a header whose 16 bits are a multiple of 31.
    if len(first) >= 2 and first[0] & 0x0F == 8 and ((first[0] << 8) | first[1]) % 31 == 0:
        return zlib.MAX_WBITS
    return -zlib.MAX_WBITS
