"""Hiding a secret in text, in whatever encoding it took on the way there.

A vendor key reaches a debugger event or a dead letter inside a URL (percent-encoded, `+` for
a space, in either hex case, sometimes twice), inside a JSON body (`\\"`, `\\/`, `\\u00XX`),
inside an HTML page (`&amp;`, `&#43;`) or inside an `Authorization: Basic` header (base64, at
any offset after the user name). Replacing the key as written misses all of these — a Retail
Rocket `apiKey` with `+ / =` went out percent-encoded and unmasked — so a secret is matched
character by character, each character in any of its spellings, and its base64 forms besides.
"""

from __future__ import annotations

import base64
import functools
import re

MASK = "***"
#: Base64 runs shorter than this are not masked (too likely to occur by chance).
_MIN_BASE64 = 8


def mask_secrets(text: str, secrets: list[str]) -> str:
    """`text` with every spelling of each secret replaced by `***`."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = _pattern(secret).sub(MASK, text)
    return text


@functools.lru_cache(maxsize=256)
def _pattern(secret: str) -> re.Pattern[str]:
    spelled = "".join(_char(ch) for ch in secret)
    encoded = [re.escape(run) for run in _base64_runs(secret)]
    return re.compile("|".join([spelled, *encoded]))


def _char(ch: str) -> str:
    """A regex matching one character of a secret in any of its encodings."""
    forms = [re.escape(ch)]
    # Percent-encoding of its UTF-8 bytes, either hex case, possibly encoded twice (%252B).
    forms.append("".join(f"%(?:25)?{_hex(byte)}" for byte in ch.encode("utf-8")))
    if ch == " ":
        forms.append(r"\+")                          # application/x-www-form-urlencoded
    # JSON string escapes: \uXXXX (a surrogate pair beyond the BMP) and the short forms.
    units = ch.encode("utf-16-be")
    forms.append("".join(r"\\u" + _hex(units[i]) + _hex(units[i + 1])
                         for i in range(0, len(units), 2)))
    short = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f", "\n": "\\n",
             "\r": "\\r", "\t": "\\t"}.get(ch)
    if short:
        forms.append(re.escape(short))
    # HTML character references.
    forms.append(f"&#(?:0*{ord(ch)}|[xX]0*{ord(ch):x});?")
    named = {"&": "amp", "<": "lt", ">": "gt", '"': "quot", "'": "apos"}.get(ch)
    if named:
        forms.append(f"&{named};")
    return "(?:" + "|".join(forms) + ")"


def _hex(byte: int) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in f"{byte:02X}")


def _base64_runs(secret: str) -> list[str]:
    """The base64 characters that depend on the secret alone, at each of the three offsets
    it may start at (after "user:" in a Basic header), in both alphabets."""
    raw = secret.encode("utf-8")
    runs = set()
    for offset in range(3):
        padded = base64.b64encode(b"\0" * offset + raw).decode("ascii")
        first = 1 if offset else 0                   # groups holding only secret bytes
        last = (offset + len(raw)) // 3
        run = padded[4 * first:4 * last]
        if len(run) >= _MIN_BASE64:
            runs.add(run)
            runs.add(run.replace("+", "-").replace("/", "_"))
    return sorted(runs, key=len, reverse=True)
