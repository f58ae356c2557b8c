"""An example Degas client: connects to a node's `WS /gateway`, authenticates with an Ethereum
key (EIP-191 personal_sign of the gateway's challenge), sends one message to a service instance
and prints the answer.

    python examples/degas_client.py [--api 127.0.0.1:4080] [--data-dir DIR | --token T] [--degas-id HEX32] [--key HEX] MESSAGE

Without --key it makes a throwaway account.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio
from eth_account import Account
from eth_account.messages import encode_defunct
from trio_websocket import open_websocket_url

from overlay.node.apiauth import TOKEN_ENV, auth_headers, client_token
from overlay.node.config import default_data_dir
from overlay.core.errors import OverlayError
from overlay.gateway import degas_pb2 as pb

DEFAULT_DEGAS_ID = "00112233445566778899aabbccddeeff"


async def receive(ws) -> pb.GatewayMessage:
    message = pb.GatewayMessage()
    message.ParseFromString(await ws.get_message())
    if message.WhichOneof("payload") == "error":
        sys.exit(f"gateway: {pb.GatewayErrorMessage.ERROR_CODE.Name(message.error.code)}: {message.error.reason}")
    return message


async def run(api: str, token: str, degas_id: bytes, account, text: str) -> None:
    async with open_websocket_url(f"ws://{api}/gateway", extra_headers=auth_headers(token)) as ws:
        signer = pb.EthereumSingerMessage(address=account.address)
        hello = pb.ClientHelloMessage(account_id=bytes.fromhex(account.address[2:]), ethereum_signer=signer)
        await ws.send_message(pb.ClientMessage(hello=hello).SerializeToString())
        challenge = (await receive(ws)).auth_request.ethereum_auth.challenge
        signature = bytes(account.sign_message(encode_defunct(text=challenge)).signature)
        await ws.send_message(pb.ClientMessage(eth_auth=pb.ClientEthAuthMessage(signature=signature)).SerializeToString())
        await receive(ws)  # auth_ok
        print(f"authenticated as {account.address}", flush=True)
        message = pb.ClientDegasMessage(degas_id=degas_id, payload=text.encode())
        await ws.send_message(pb.ClientMessage(degas=message).SerializeToString())
        with trio.fail_after(30):
            answer = (await receive(ws)).degas
        print(f"{answer.degas_id.hex()}: {answer.payload.decode(errors='replace')}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("message")
    p.add_argument("--api", default="127.0.0.1:4080", help="the node's local API")
    p.add_argument("--data-dir", type=Path, default=default_data_dir(), help="the node's data dir (its API token)")
    p.add_argument("--token", help=f"the API token (default: ${TOKEN_ENV}, else the data dir's)")
    p.add_argument("--degas-id", default=DEFAULT_DEGAS_ID, help="16 bytes in hex")
    p.add_argument("--key", help="Ethereum private key in hex (default: a new throwaway one)")
    args = p.parse_args()
    try:
        token = client_token(args.token, args.data_dir)
    except OverlayError as e:
        sys.exit(f"{p.prog}: {e}")
    account = Account.from_key(args.key) if args.key else Account.create()
    trio.run(run, args.api, token, bytes.fromhex(args.degas_id), account, args.message)


if __name__ == "__main__":
    main()
