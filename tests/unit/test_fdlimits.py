"""The local API's share of the open-file limit (overlay/core/fdlimits.py), as arithmetic; the
caps holding under a real storm of connections is tests/loopback/test_api_fd_limits.py."""

from __future__ import annotations

import resource

from overlay.core.fdlimits import MAX_CONNECTIONS, MIN_CONNECTIONS, ApiCaps, api_caps


def test_caps_leave_room_for_peers_and_a_reserve_for_http():
    assert api_caps(1024, 256) == ApiCaps(connections=192, websockets=168)
    assert api_caps(1024, 512).connections == MIN_CONNECTIONS  # nothing spare: the floor
    assert api_caps(resource.RLIM_INFINITY, 256).connections == MAX_CONNECTIONS
    assert api_caps(1 << 20, 256).connections == MAX_CONNECTIONS
    for soft in (64, 256, 1024, 4096, 65536):
        for peers in (0, 64, 256, 1024):
            caps = api_caps(soft, peers)
            assert MIN_CONNECTIONS <= caps.connections <= MAX_CONNECTIONS
            assert caps.connections - caps.websockets >= 4  # /health gets in when WebSockets fill theirs
            assert api_caps(soft * 2, peers).connections >= caps.connections
            assert api_caps(soft, peers + 64).connections <= caps.connections


