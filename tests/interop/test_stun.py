"""Our STUN codec against aioice's (another implementation of the same wire format): each reads
what the other writes."""

from __future__ import annotations

from aioice import stun as aioice_stun

from nat.stun import decode, encode_binding_request, encode_binding_success, encode_error_response
from tests.unit.test_stun import TXID


def test_aioice_reads_ours():
    data = encode_binding_success(TXID, ("198.18.0.7", 40000), response_origin=("198.18.1.2", 3478),
                                  other_address=("198.18.1.3", 3479))
    theirs = aioice_stun.parse_message(data)
    assert theirs.message_method == aioice_stun.Method.BINDING
    assert theirs.message_class == aioice_stun.Class.RESPONSE
    assert theirs.transaction_id == TXID
    assert theirs.attributes["XOR-MAPPED-ADDRESS"] == ("198.18.0.7", 40000)
    assert theirs.attributes["RESPONSE-ORIGIN"] == ("198.18.1.2", 3478)
    assert theirs.attributes["OTHER-ADDRESS"] == ("198.18.1.3", 3479)
    request = aioice_stun.parse_message(encode_binding_request(TXID, change_ip=True, change_port=True))
    assert request.attributes["CHANGE-REQUEST"] == 0x6
    error = aioice_stun.parse_message(encode_error_response(TXID, 420, unknown_attributes=[0x0024]))
    assert error.error_code == 420


def test_we_read_aioice():
    msg = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.RESPONSE, TXID)
    msg.attributes["XOR-MAPPED-ADDRESS"] = ("2001:db8::5", 5000)
    msg.attributes["OTHER-ADDRESS"] = ("198.18.1.3", 3479)
    msg.attributes["SOFTWARE"] = "aioice"
    msg.add_fingerprint()
    m = decode(bytes(msg))
    assert (m.mapped_address, m.other_address, m.software, m.fingerprint) == (
        ("2001:db8::5", 5000), ("198.18.1.3", 3479), "aioice", True)
    req = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.REQUEST, TXID)
    req.attributes["CHANGE-REQUEST"] = 0x2
    m = decode(bytes(req))
    assert (m.change_ip, m.change_port) == (False, True)
