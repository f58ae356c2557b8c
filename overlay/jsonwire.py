"""Fields of the JSON protocols on the local API (relayers, typed-message applications)."""

from __future__ import annotations

import base64
import binascii

from overlay.errors import DecodeError


def base64_field(obj: dict, key: str) -> bytes:
    """The bytes of a base64 text field; DecodeError naming the field otherwise."""
    value = obj.get(key)
    if not isinstance(value, str):
        raise DecodeError(f"{key} must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError(f"{key} is not valid base64") from None
