"""Every decoder of client and peer JSON refuses documents nested deeper than jsonwire's limit, and
keeps its own message for input that is not JSON at all (codecs without I/O)."""

from __future__ import annotations

import json

import pytest

from nat import reachability
from overlay.channels import client as client_frames
from overlay.channels import inm
from overlay.channels import reservation
from overlay.channels.relay import ChannelRelay
from overlay.core.errors import DecodeError
from overlay.core.jsonwire import MAX_JSON_DEPTH
from overlay.messagenet import relayer
from overlay.peermsg.app import decode_app
from signaling import messages
from tests.unit.test_jsonwire import DEEP, nested


def test_every_decoder_of_client_and_peer_json_refuses_deep_documents():
    deep = DEEP.encode()
    for decode, message in (
        (inm.decode, "INM: nested deeper than"),
        (decode_app, "frame: nested deeper than"),
        (lambda raw: relayer.decode_request(b"\x01" + raw), "register: body: nested deeper than"),
        (relayer.verify, "SignedMessage: nested deeper than"),
        (reachability.decode_request, "dialback: nested deeper than"),
        (reachability.decode_response, "dialback: nested deeper than"),
        (messages.decode, "message: nested deeper than"),
        (reservation.decode, "reservation: nested deeper than"),
    ):
        with pytest.raises(DecodeError, match=message):
            decode(deep)
    with pytest.raises(client_frames.ClientError, match=f"^malformed json: nested deeper than {MAX_JSON_DEPTH}$"):
        client_frames.decode_request(DEEP)
    hello = json.dumps({"command": "handshake", "data": {"name": "peer", "x": nested(MAX_JSON_DEPTH)}})
    relay = ChannelRelay("me", lambda: 0, lambda inm: "", lambda inm: False, lambda r: r)
    assert not relay.accept_handshake("peer", hello.encode(), 0.0)
    assert relay.accept_handshake("peer", json.dumps({"command": "handshake", "data": {"name": "peer"}}).encode(), 0.0)


def test_shallow_input_keeps_each_decoders_own_error_message():
    with pytest.raises(client_frames.ClientError, match="^malformed json$"):
        client_frames.decode_request("{not json")
    for decode, message in ((decode_app, "^not JSON$"), (messages.decode, "^not a JSON document$"),
                            (inm.decode, "^INM: not JSON$"), (reachability.decode_request, "^dialback: not JSON$"),
                            (lambda raw: relayer.decode_request(b"\x03" + raw), "^SendToPeers: body is not JSON$"),
                            (relayer.verify, "^SignedMessage: not JSON$")):
        with pytest.raises(DecodeError, match=message):
            decode(b"{")
