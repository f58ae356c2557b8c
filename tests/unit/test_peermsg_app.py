"""The WS /peermsg frame decoder: any frame decodes or raises DecodeError (hypothesis), and
oversized frames are refused."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.core.errors import DecodeError
from overlay.peermsg.app import OPS, decode_app


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(OPS), st.dictionaries(st.sampled_from(["peer", "type", "types", "body", "ref", "code", "result"]),
                                             st.none() | st.integers() | st.text(max_size=60) | st.lists(st.text(max_size=12), max_size=3)))
def test_any_app_frame_decodes_or_raises_decode_error(op, fields):
    try:
        request = decode_app(json.dumps({"op": op, **fields}))
    except DecodeError:
        return
    assert request.op == op


def test_oversized_app_frames_are_refused():
    with pytest.raises(DecodeError, match="larger than"):
        decode_app(" " * (3 << 20))
