"""jsonwire.loads, the JSON parser of every decoder facing clients and peers: it refuses documents
nested deeper than MAX_JSON_DEPTH before json.loads (which recurses in C) sees them, counts only
brackets outside strings, and otherwise parses exactly as json.loads does (hypothesis). The decoders
that use it are checked in tests/loopback/test_jsonwire.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlay.core.errors import DecodeError
from overlay.core.jsonwire import MAX_JSON_DEPTH, loads, nesting

DEEP = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


def nested(levels: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


@pytest.mark.parametrize("limit", [0, 1, 4, MAX_JSON_DEPTH])
def test_the_limit_is_accepted_and_one_more_refused(limit):
    ok = json.dumps(nested(limit))
    assert loads(ok, "x", max_depth=limit) == json.loads(ok)
    with pytest.raises(DecodeError, match=f"^x: nested deeper than {limit}$"):
        loads(json.dumps(nested(limit + 1)), "x", max_depth=limit)


def test_the_default_limit_is_small_and_holds_for_bytes_too():
    assert 8 <= MAX_JSON_DEPTH <= 32
    assert loads(json.dumps(nested(MAX_JSON_DEPTH)).encode(), "x") == nested(MAX_JSON_DEPTH)
    for data in (DEEP, DEEP.encode(), bytearray(DEEP.encode()), DEEP.encode("utf-16"), DEEP.encode("utf-32-le")):
        with pytest.raises(DecodeError, match="nested deeper than"):
            loads(data, "x")


@pytest.mark.parametrize("text", [
    json.dumps(["[" * 1000, "{" * 1000]),
    json.dumps({"[[[[[[[[[[[[[[[[[[[[": "]]]]"}),
    '["\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[", "\\\\\\"{{{{{{{{{{{{{{{{{{{{{{{{{"]',
    json.dumps([nested(MAX_JSON_DEPTH - 1, "\\" * 3 + '"[[[[[[[[[[[[[[[[[[[[[[' + "\\")]),
    json.dumps("[" * 100_000, ensure_ascii=False),
])
def test_brackets_inside_strings_and_escaped_quotes_do_not_count(text):
    assert loads(text, "x") == json.loads(text)


@pytest.mark.parametrize("text", [
    '["\\\\", ' + DEEP + "]",  # an escaped backslash does not escape the closing quote
    '["\\u0022", ' + DEEP + "]",  # nor does a \u escape of a quote open a string
    '{"a": "\\"", "b": ' + DEEP + "}",
    "[" * 100 + '"',  # an unterminated string at the end hides nothing before it
])
def test_real_brackets_after_strings_are_counted(text):
    with pytest.raises(DecodeError, match="nested deeper than"):
        loads(text, "x")


def test_a_mebibyte_of_brackets_is_refused():
    for data in ("[" * (1 << 20), b"[" * (1 << 20), '{"a":' * (1 << 18), '["\\"[", ' * (1 << 17)):
        with pytest.raises(DecodeError, match="nested deeper than"):
            loads(data, "x")


def test_pathological_strings_are_not_json_not_slow_to_say_so():
    for text in ('["' + "[" * (1 << 20), '"\\"' * (1 << 18), '"' + "\\" * (1 << 20), '"' * (1 << 20), '["' + "\\[" * (1 << 19)):
        with pytest.raises(DecodeError, match="^x: not JSON$"):
            loads(text, "x")


@pytest.mark.parametrize("data", [b"\xff\xfe\xfd", b"{", "", b"", "[1,]", b"\xef\xbb\xbf", "1" * 5000])
def test_anything_json_refuses_is_not_json(data):
    with pytest.raises(DecodeError, match="^x: not JSON$"):
        loads(data, "x")
    with pytest.raises(DecodeError, match="^custom$"):
        loads(data, "x", not_json="custom")


def test_bytes_are_decoded_as_json_loads_decodes_them():
    value = {"é": ["\ud800", "ü", 1.5]}
    for data in (json.dumps(value).encode("utf-8-sig"), json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"),
                 json.dumps(value).encode("utf-16-be")):
        assert loads(data, "x") == json.loads(data)


_TEXT = st.text(st.one_of(st.sampled_from('[]{}"\\/ ,:ab\u00e9\u2028\U0001f600\ud800\x00\x1f'), st.characters()))
_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _TEXT
VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
                      max_leaves=40)


@given(VALUES, st.integers(0, 8), st.booleans(), st.sampled_from([None, 0, 2]), st.booleans())
def test_parses_as_json_loads_up_to_the_limit_and_refuses_beyond(value, limit, ascii_only, indent, as_bytes):
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    assert nesting(text) == depth(value)
    data = text.encode("utf-8", "surrogatepass") if as_bytes else text
    if depth(value) <= limit:
        assert loads(data, "x", max_depth=limit) == json.loads(data)
    else:
        with pytest.raises(DecodeError, match="nested deeper than"):
            loads(data, "x", max_depth=limit)

