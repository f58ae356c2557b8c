"""JSON from clients and peers: parsing with a depth limit, and fields of the local API's JSON
protocols (relayers, typed-message applications).

json.loads recurses once per nested array or object, in C, so a deep enough document (90,000
brackets fit in 96 KiB) overflows the C stack and kills the process once anything has raised the
interpreter's recursion limit, and raises RecursionError otherwise. `loads` measures the nesting
first, in linear time, and refuses a deep document before json ever sees it.

MAX_JSON_DEPTH is what our protocols need with room to spare. Their deepest messages: relayer
frames and SignedMessage 1 level; /connect frames, /peermsg frames and the INM link hello 2;
dialback and signalling 3 (message, body, candidate list); INM envelopes 4 (a list-channels
response: envelope, data, list, entry), which leaves other WSRelay nodes 12 levels of `data`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from itertools import accumulate
from typing import Any

from overlay.core.errors import DecodeError

MAX_JSON_DEPTH = 16

_ESCAPE = re.compile(r"\\.", re.S)
_STRING = re.compile(r'"[^"]*(?:"|\Z)')  # an unterminated string runs to the end, as json.loads reads it
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_CHUNK = 4096
_STEP = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))


def nesting(text: str, stop_above: int | None = None) -> int:
    """The deepest nesting of arrays and objects in `text`, brackets inside strings not counted;
    with `stop_above`, the count stops at the first depth beyond it.

    Exact for valid JSON; for invalid JSON it is at least the depth json.loads reaches before it
    finds the error (up to that point both read the text the same way)."""
    if "\\" in text:
        text = _ESCAPE.sub("", text)
    if '"' in text:
        text = _STRING.sub("", text)
    brackets = text.encode("utf-8", "surrogatepass").translate(None, _NOT_BRACKETS)
    deepest = depth = 0
    for start in range(0, len(brackets), _CHUNK):
        running = list(accumulate(map(_STEP.__getitem__, brackets[start:start + _CHUNK]), initial=depth))
        deepest, depth = max(deepest, max(running)), running[-1]
        if stop_above is not None and deepest > stop_above:
            break
    return deepest


def loads(data: bytes | bytearray | str, what: str, max_depth: int = MAX_JSON_DEPTH, not_json: str = "") -> Any:
    """json.loads for input from a client or a peer: DecodeError "<what>: nested deeper than N"
    for a document nested deeper than `max_depth`, and `not_json` (default "<what>: not JSON")
    for anything json.loads refuses. Callers bound the size first."""
    try:
        text = data if isinstance(data, str) else (raw := bytes(data)).decode(json.detect_encoding(raw), "surrogatepass")
    except UnicodeDecodeError:
        raise DecodeError(not_json or f"{what}: not JSON") from None
    if text.count("[") + text.count("{") > max_depth and nesting(text, stop_above=max_depth) > max_depth:
        raise DecodeError(f"{what}: nested deeper than {max_depth}")
    try:
        return json.loads(text)
    except ValueError:
        raise DecodeError(not_json or f"{what}: not JSON") from None


def base64_field(obj: dict, key: str) -> bytes:
    """The bytes of a base64 text field; DecodeError naming the field otherwise."""
    value = obj.get(key)
    if not isinstance(value, str):
        raise DecodeError(f"{key} must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError(f"{key} is not valid base64") from None
