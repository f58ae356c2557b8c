"""An example Degas service instance: registers on its node's `WS /service` and answers every
client message with the same payload in upper case.

    python examples/degas_service.py [--api 127.0.0.1:4080] [--data-dir DIR | --token T] [--degas-id HEX32]

Prints one line per message it answers. Stop it with Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio
from trio_websocket import open_websocket_url

from overlay.node.apiauth import TOKEN_ENV, auth_headers, client_token
from overlay.node.config import default_data_dir
from overlay.core.errors import OverlayError
from overlay.gateway import degas_pb2 as pb

DEFAULT_DEGAS_ID = "00112233445566778899aabbccddeeff"


async def serve(api: str, token: str, degas_id: bytes, count: int | None) -> None:
    async with open_websocket_url(f"ws://{api}/service", extra_headers=auth_headers(token)) as ws:
        await ws.send_message(pb.DegasMessage(register=pb.DegasRegisterMessage(degas_id=degas_id)).SerializeToString())
        answered = 0
        while count is None or answered < count:
            message = pb.GatewayInternalMessage()
            message.ParseFromString(await ws.get_message())
            kind = message.WhichOneof("payload")
            if kind == "registered":
                print(f"registered {degas_id.hex()}", flush=True)
            elif kind == "error":
                print(f"error {pb.GatewayErrorMessage.ERROR_CODE.Name(message.error.code)}: {message.error.reason}", flush=True)
            elif kind == "client_message":
                forward = message.client_message
                reply = pb.DegasToClientMessage(account_id=forward.account_id, payload=forward.payload.upper())
                await ws.send_message(pb.DegasMessage(degas_to_client=reply).SerializeToString())
                answered += 1
                print(f"0x{forward.account_id.hex()}: {forward.payload!r}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--api", default="127.0.0.1:4080", help="the node's local API")
    p.add_argument("--data-dir", type=Path, default=default_data_dir(), help="the node's data dir (its API token)")
    p.add_argument("--token", help=f"the API token (default: ${TOKEN_ENV}, else the data dir's)")
    p.add_argument("--degas-id", default=DEFAULT_DEGAS_ID, help="16 bytes in hex")
    p.add_argument("--count", type=int, help="stop after answering this many messages")
    args = p.parse_args()
    try:
        token = client_token(args.token, args.data_dir)
    except OverlayError as e:
        sys.exit(f"{p.prog}: {e}")
    try:
        trio.run(serve, args.api, token, bytes.fromhex(args.degas_id), args.count)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
