"""`overlay-node`: run a node, or ask a running one (through its local API) what it knows.

Exit codes: 0 success, 1 the operation failed (peer not found, unreachable, API down),
2 bad input (flags, config, peer ID), with one clear line on stderr.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from overlay import __version__
from overlay.node.apiauth import TOKEN_ENV, TOKEN_FILE, auth_headers, client_token
from overlay.node.config import DEFAULT_API, Config, load_config, parse_host_port
from overlay.core.errors import ConfigError, DecodeError, OverlayError, RecordError
from overlay.core.records import peer_id_from_str

CLIENT_TIMEOUT = 60.0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every bad input
        raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="overlay-node", description="A peer-to-peer overlay node.")
    p.add_argument("--version", action="version", version=f"overlay-node {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a node (first node of a network when no --bootstrap)")
    run.add_argument("--config", type=Path, help="TOML file with the same keys as the flags")
    run.add_argument("--data-dir", help="where the identity key lives (default: XDG data dir)")
    run.add_argument("--listen", action="append", metavar="MADDR", help="listen multiaddr (repeatable)")
    run.add_argument("--bootstrap", action="append", metavar="MADDR", help="bootstrap peer .../p2p/ID (repeatable)")
    run.add_argument("--api", metavar="HOST:PORT", help=f"local API address (default {DEFAULT_API})")
    run.add_argument("--network", help="network name; nodes of different names never meet")
    run.add_argument("--dht-mode", choices=("auto", "server", "client"))
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    run.add_argument("--reachability", choices=("auto", "public", "private"), help="measured by dial-back unless forced")
    run.add_argument("--signaling-nodes", type=int, metavar="K", help="signalling nodes to register with behind NAT (default 3)")
    run.add_argument("--stun-server", action="append", metavar="IP:PORT", help="STUN server besides the overlay's public nodes")
    run.add_argument("--webrtc-interface", action="append", metavar="NAME|IP", help="gather WebRTC candidates here only")
    run.add_argument("--no-port-mapping", action="store_true", help="do not ask the gateway for a port mapping")
    run.add_argument("--no-mdns", action="store_true", help="do not announce this node on the LAN nor look for nodes there")

    natlab = sub.add_parser("natlab", help="connection matrix behind real NATs in network namespaces (root)")
    natlab.add_argument("--json", action="store_true", help="print JSON")
    natlab.add_argument("--trials", type=int, default=3, help="dials per pair")
    natlab.add_argument("--out", type=Path, help="also write the JSON here")
    natlab.add_argument("--portmap", action="store_true", help="the port-mapping rows: routers running a real IGD")
    natlab.add_argument("--ipv6", action="store_true", help="the IPv6 rows: homes behind stateful IPv6 firewalls")

    simulate = sub.add_parser("simulate", help="simulate a network of these nodes in virtual time, with a report")
    simulate.add_argument("scenario", nargs="?", type=Path, help="scenario TOML (default: the shipped one)")
    simulate.add_argument("--out", type=Path, default=Path("simulation"), help="report directory (default ./simulation)")
    simulate.add_argument("--seed", type=int, help="override the scenario's seed")
    simulate.add_argument("--sweep", metavar="KEY=V1,V2,...", help="run once per value, plot metrics against it")
    simulate.add_argument("--quiet", action="store_true", help="no progress bar, no summary")

    ident = sub.add_parser("id", help="print this node's peer ID")
    ident.add_argument("--data-dir", help="where the identity key lives")

    service = sub.add_parser("service", help="run the node as a systemd service (README: running as a service)")
    service.add_argument("action", choices=("install", "uninstall"))
    service.add_argument("--user", action="store_true", help="a user service (the owner's data dir), not a system one")
    service.add_argument("--config", type=Path, help="the service runs with this config file")
    service.add_argument("--print", action="store_true", help="print the unit and change nothing")

    def api_flags(c: argparse.ArgumentParser) -> None:
        c.add_argument("--api", default=DEFAULT_API, metavar="HOST:PORT", help="the node's local API")
        c.add_argument("--data-dir", help="the node's data dir, where its API token is (default: XDG data dir)")
        c.add_argument("--token", help=f"the API token (default: ${TOKEN_ENV}, else the data dir's {TOKEN_FILE})")

    def client(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help)
        api_flags(c)
        c.add_argument("--json", action="store_true", help="print JSON")
        return c

    client("status", help="the node's state")
    client("peers", help="connected peers")
    client("find", help="look a peer's record up in the DHT").add_argument("peer_id")
    client("netcheck", help="reachability, NAT type, public addresses, signalling registrations")
    ping = client("ping", help="dial a peer by ID and measure round trips")
    ping.add_argument("peer_id")
    ping.add_argument("--count", type=int, default=3)

    channel = sub.add_parser("channel", help="use a channel through the node's WS /connect")
    actions = channel.add_subparsers(dest="action", required=True, parser_class=_Parser)
    listen = actions.add_parser("listen", help="subscribe and print each message (one line each) until interrupted")
    send = actions.add_parser("send", help="subscribe, send one message, leave")
    for c in (listen, send):
        c.add_argument("channel")
        c.add_argument("--password", help="the channel's password (the first subscriber sets it)")
        api_flags(c)
    listen.add_argument("--json", action="store_true", help="print each message as the JSON the node sent")
    send.add_argument("message")
    return p


def _run(args: argparse.Namespace) -> int:
    config = load_config(
        args.config,
        {
            "data_dir": args.data_dir,
            "listen": args.listen,
            "bootstrap": args.bootstrap,
            "api": args.api,
            "network": args.network,
            "dht_mode": args.dht_mode,
            "log_level": args.log_level,
            "reachability": args.reachability,
            "signaling_nodes": args.signaling_nodes,
            "stun_servers": args.stun_server,
            "webrtc_interfaces": args.webrtc_interface,
            "port_mapping": False if args.no_port_mapping else None,
            "mdns": False if args.no_mdns else None,
        },
    )
    import trio  # the node's imports are heavy (~80 MB); client commands do without them

    from overlay.core.fdlimits import raise_fd_limit
    from overlay.core.log import setup_logging

    setup_logging(config.log_level)
    raise_fd_limit()  # for the process, before any socket: in-process nodes (tests) leave their runner's alone
    trio.run(_serve, config)
    return 0


async def _serve(config: Config) -> None:
    import trio

    from overlay.node.api import serve_api
    from overlay.node.node import Node

    node = Node(config)
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            await nursery.start(node.run)
            url = await nursery.start(serve_api, node)
            print(f"peer id: {node.peer_id}", flush=True)
            for addr in node.full_addrs():
                print(f"listening on {addr}", flush=True)
            print(f"api on {url}", flush=True)
            async for _ in signals:
                print("shutting down", file=sys.stderr, flush=True)
                nursery.cancel_scope.cancel()
                break


def _id(args: argparse.Namespace) -> int:
    from overlay.core.identity import load_or_create_key
    from overlay.core.records import peer_id_from_public_key, peer_id_to_str

    config = load_config(None, {"data_dir": args.data_dir})
    key = load_or_create_key(config.data_dir)
    print(peer_id_to_str(peer_id_from_public_key(key.public_key())))
    return 0


def _service(args: argparse.Namespace) -> int:
    from overlay.node import systemd

    if args.print:
        print(systemd.unit_text(systemd.executable(), args.user, args.config.resolve() if args.config else None), end="")
        return 0
    journal = f"journalctl {'--user ' if args.user else ''}-u overlay-node"
    if args.action == "install":
        path = systemd.install(args.user, args.config)
        print(f"installed {path}, enabled and started; logs: {journal}")
    else:
        path = systemd.uninstall(args.user)
        print(f"stopped, disabled and removed {path}" if path else f"no {systemd.unit_path(args.user)}: nothing to remove")
    return 0


def _token(args: argparse.Namespace) -> str:
    return client_token(args.token, load_config(None, {"data_dir": args.data_dir}).data_dir)


def _call(api: str, token: str, method: str, path: str) -> tuple[int, Any]:
    host, port = parse_host_port(api)
    url = f"http://{host}:{port}{path}"
    request = urllib.request.Request(url, method=method, headers=dict(auth_headers(token)))
    try:
        with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read())
        except ValueError:
            return e.code, {"error": e.reason}
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise OverlayError(f"cannot reach the node's API at {host}:{port} ({reason}); is `overlay-node run` running?") from None


def _client(args: argparse.Namespace) -> int:
    if args.command in ("find", "ping"):
        peer_id_from_str(args.peer_id)
    if args.command == "ping" and not 1 <= args.count <= 100:
        raise ConfigError("--count must be from 1 to 100")
    path = {
        "status": "/v1/status",
        "netcheck": "/v1/netcheck",
        "peers": "/v1/peers",
        "find": f"/v1/find/{getattr(args, 'peer_id', '')}",
        "ping": f"/v1/ping/{getattr(args, 'peer_id', '')}?count={getattr(args, 'count', 1)}",
    }[args.command]
    status, body = _call(args.api, _token(args), "POST" if args.command == "ping" else "GET", path)
    if status >= 400:
        print(f"overlay-node: {args.command}: {body.get('error', status)}", file=sys.stderr)
        return 2 if status == 400 else 1
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        print(_human(args.command, body))
    return 0


def _channel(args: argparse.Namespace) -> int:
    """`channel listen` / `channel send`: the WSRelay client protocol over WS /connect."""
    import trio
    from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError, open_websocket_url

    host, port = parse_host_port(args.api)
    headers = auth_headers(_token(args))

    async def request(ws, command: str, **data: str) -> dict:
        await ws.send_message(json.dumps({"command": command, "data": data, "nonce": command}))
        while True:
            reply = json.loads(await ws.get_message())
            if reply.get("type") == "response" and reply.get("nonce") == command:
                return reply["data"]

    async def run() -> int:
        async with open_websocket_url(f"ws://{host}:{port}/connect", extra_headers=headers) as ws:
            subscribe = {"topic": args.channel} | ({"password": args.password} if args.password else {})
            answer = await request(ws, "subscribe", **subscribe)
            if not answer.get("ok"):
                raise OverlayError(f"channel {args.channel}: {answer.get('reason')}")
            if args.action == "send":
                answer = await request(ws, "send", channel=args.channel, message=args.message)
                if not answer.get("ok"):
                    raise OverlayError(f"channel {args.channel}: {answer.get('reason')}")
                return 0
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with trio.open_nursery() as nursery:
                    async def stop() -> None:
                        async for _ in signals:
                            nursery.cancel_scope.cancel()
                    nursery.start_soon(stop)
                    while True:
                        text = await ws.get_message()
                        reply = json.loads(text)
                        if reply.get("type") == "message":
                            print(text if args.json else reply["data"]["message"], flush=True)
                        elif reply.get("type") == "response" and reply["data"].get("reason"):
                            print(f"overlay-node: channel {args.channel}: {reply['data']['reason']}", file=sys.stderr)
            return 0

    try:
        return trio.run(run)
    except ConnectionRejected as e:
        raise OverlayError(f"the node at {host}:{port} refused WS /connect (HTTP {e.status_code}): is the API token right?") from None
    except (OSError, HandshakeError, ConnectionClosed) as e:
        raise OverlayError(f"cannot use the node's WS /connect at {host}:{port} ({str(e) or type(e).__name__}); is `overlay-node run` running?") from None


def _duration(seconds: float) -> str:
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if days else f"{hours} h {minutes} min" if hours else f"{minutes} min {int(seconds) % 60} s"


def _port_mapping(state: dict[str, Any] | None) -> str:
    if not state:
        return "not tried (reachable, or turned off)"
    if state.get("state") == "mapped":
        udp = f", UDP {state['udp']}" if state.get("udp") else ""
        return f"{state['protocol']} on {state['gateway']}: TCP {state['external']}{udp}, lease {state['lifetime']} s"
    return state["state"] + (f" ({state['error']})" if state.get("error") else "")


def _ipv6(state: dict[str, Any] | None) -> str:
    if not state or not state["listening"]:
        return "not listening (IPv6 off here, or not in `listen`)"
    if state["global"]:
        return "listening, global " + ", ".join(state["global"])
    return "listening, no global address" + (f" (only {', '.join(state['addrs'])})" if state["addrs"] else "")


def _udp(udp: bool | None) -> str:
    return "not measured (no STUN server known)" if udp is None else "works" if udp else "blocked (no STUN answer over UDP)"


def _human(command: str, body: Any) -> str:
    if command == "status":
        lines = [f"peer id:       {body['peer_id']}", f"network:       {body['network']}",
                 f"version:       {body['version']}, up {_duration(body['uptime'])}",
                 f"health:        {body['health']['healthy']} ({body['health']['reason']})",
                 f"dht mode:      {body['dht_mode']}", f"routing table: {body['routing_table']} peers",
                 f"connected:     {body['peers']} peers"]
        for layer, reasons in body.get("refused", {}).items():
            if reasons:
                lines.append(f"refused:       {layer}: {sum(reasons.values())} "
                             f"({', '.join(f'{why} {n}' for why, n in sorted(reasons.items()))})")
        if lan := body.get("lan"):
            refused = sum(lan.get("refused", {}).values())
            lines.append(f"LAN (mDNS):    {lan['state']}" + (f", {lan['peers']} peers heard, {refused} announcements refused"
                                                            if lan["state"] == "on" else ""))
        if live := body.get("liveness"):
            lines.append(f"dead conns:    {live['closed']} closed, {live['redials']} redialed")
        lines += [f"address:       {a}" for a in body["addrs"]]
        for b in body["bootstraps"]:
            state = "reached" if b["in_routing_table"] else f"not reached: {b['last_error'] or 'trying'}"
            lines.append(f"bootstrap:     {b['addr']} {state}")
        return "\n".join(lines)
    if command == "peers":
        return "\n".join(f"{p['peer_id']} {p['path']:<10} {' '.join(p['addrs'])}" for p in body) or "no peers"
    if command == "netcheck":
        lines = [f"reachability:  {body['reachability']}", f"UDP:           {_udp(body['udp'])}",
                 f"NAT type:      {body['nat_type']} (mapping {body['mapping']}, filtering {body['filtering']})",
                 f"public addrs:  {', '.join(body['public_addrs'] + body['observed_addrs']) or '-'}",
                 f"STUN asked:    {', '.join(body['stun_servers']) or '-'}",
                 f"port mapping:  {_port_mapping(body['port_mapping'])}",
                 f"IPv6:          {_ipv6(body.get('ipv6'))}",
                 f"signalling:    {'serving, ' + str(body['signaling']['registered_peers']) + ' registered' if body['signaling']['serving'] else 'not serving'}"]
        lines += [f"registered at: {r['peer_id']} rtt {r['rtt_ms']} ms" for r in body["signaling"]["registered_with"]]
        lines += [f"note:          {n}" for n in body["notes"]]
        return "\n".join(lines)
    if command == "find":
        return "\n".join([body["peer_id"]] + [f"  {a}" for a in body["addrs"]])
    rtts = body["rtt_ms"]
    lines = [f"pong from {body['peer_id']}: time={r} ms" for r in rtts]
    lines += [f"error: {e}" for e in body["errors"]]
    lines.append(f"{len(rtts)} of {len(rtts) + len(body['errors'])} answered, min/avg/max = "
                 f"{min(rtts)}/{sum(rtts) / len(rtts):.3f}/{max(rtts)} ms")
    return "\n".join(lines)


def _simulate(args: argparse.Namespace) -> int:
    from simulations import report
    from simulations.scenario import ScenarioError, load

    try:
        scenario = load(args.scenario)
        if args.seed is not None:
            scenario = scenario.with_value("seed", str(args.seed))
        if args.sweep:
            key, _, values = args.sweep.partition("=")
            if not values:
                raise ConfigError("--sweep wants KEY=V1,V2,...")
            report.sweep(scenario, key.strip(), [v.strip() for v in values.split(",")], args.out, args.quiet)
        else:
            report.run(scenario, args.out, args.quiet)
    except ScenarioError as e:
        raise ConfigError(f"scenario: {e}") from None
    if not args.quiet:
        print(f"report in {args.out}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.command == "run":
            return _run(args)
        if args.command == "id":
            return _id(args)
        if args.command == "channel":
            return _channel(args)
        if args.command == "simulate":
            return _simulate(args)
        if args.command == "service":
            return _service(args)
        if args.command == "natlab":
            from simulations.natlab.matrix import main as natlab

            return natlab((["--json"] if args.json else []) + ["--trials", str(args.trials)]
                          + (["--out", str(args.out)] if args.out else []) + (["--portmap"] if args.portmap else [])
                          + (["--ipv6"] if args.ipv6 else []))
        return _client(args)
    except (ConfigError, DecodeError, RecordError) as e:
        print(f"overlay-node: error: {e}", file=sys.stderr)
        return 2
    except OverlayError as e:
        print(f"overlay-node: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
