"""Hiding a secret in text, in whatever encoding it took on the way there.

A vendor key reaches a debugger event or a dead letter inside a URL (percent-encoded, `+` for
a space, in either hex case, sometimes twice), inside a JSON body (`\\"`, `\\/`, `\\u00XX`),
inside an HTML page (`&amp;`, `&#43;`) or inside an `Authorization: Basic` header (base64, at
any offset after the user name). Replacing the key as written misses all of these — a Retail
Rocket `apiKey` with `+ / =` went out percent-encoded and unmasked — so a secret is matched
character by character, each character in any of its spellings, and its base64 forms besides.

Knowing the secret is not always enough: a vendor's answer may echo it cut short, or in a
form of its own, and a spool keeps answers it has no settings for. So whatever stands as the
value of a credential's name (`apiKey=…`, `"app_secret": "…"`, `Authorization: Bearer …`) is
masked whole too, whoever wrote it (`mask_credentials`): no character of such a value is kept,
short or long.
"""

from __future__ import annotations

import base64
import functools
import re

MASK = "***"
#: Base64 runs shorter than this are not masked (too likely to occur by chance).
_MIN_BASE64 = 8


#: Names under which a credential travels (compared without case, `-` and `_`).
_NAME = (r"(?:x[-_]?)?(?:api[-_]?key|app[-_]?secret|api[-_]?secret|client[-_]?secret|secret"
         r"|access[-_]?token|auth[-_]?token|token|password|passwd|signature|sig)")
#: `name=value` in a query or a form, and the same percent-encoded as a whole (a URL
#: echoed inside another: `%3FapiKey%3Dvalue%26`).
_QUERY = re.compile(rf"(?i)(?<![A-Za-z0-9])({_NAME})(=)([^&\s\"'<>#,;)]+)")
_QUERY_ENCODED = re.compile(rf"(?i)(?:(?<![A-Za-z0-9])|(?<=%3F)|(?<=%26))({_NAME})(%3D)"
                            rf"((?:(?!%26)[^&\s\"'<>#,;)])+)")
#: `"name": "value"` in JSON, and `name: value` in a header or prose.
_JSON = re.compile(rf'(?i)("{_NAME}"\s*:\s*)"(?:[^"\\]|\\.)*"')
_HEADER = re.compile(rf"(?im)^(\s*{_NAME}\s*:[ \t]*)(\S[^\r\n]*)")
_AUTHORIZATION = re.compile(r"(?i)\b(authorization\s*[:=]\s*\"?(?:bearer|basic|token)?\s*)"
                            r"([A-Za-z0-9+/=._~-]{4,})")


def mask_secrets(text: str, secrets: list[str]) -> str:
    """`text` with every spelling of each secret replaced by `***`, and every credential's
    value masked whole (`mask_credentials`)."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = _pattern(secret).sub(MASK, text)
    return mask_credentials(text)


def mask_credentials(text: str) -> str:
    """`text` with the whole value of every credential-named field replaced by `***`, in a
    query or form (`apiKey=…`), in JSON (`"api_key": "…"`), in a header line (`x-api-key: …`)
    or an Authorization value. No secret needs to be known: this is what a spool applies to
    every vendor exchange it keeps."""
    for query in (_QUERY, _QUERY_ENCODED):
        text = query.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    text = _JSON.sub(lambda m: f'{m.group(1)}"{MASK}"', text)
    text = _HEADER.sub(lambda m: f"{m.group(1)}{MASK}", text)
    return _AUTHORIZATION.sub(lambda m: f"{m.group(1)}{MASK}", text)


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
