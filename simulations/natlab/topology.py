"""The NAT lab's topology: a small internet of network namespaces with real iptables NATs.

The simulator models NATs; this lab runs the kernel's own NAT so that NAT traversal can be tested
against the real thing (recipe and measured pitfalls: docs/natlab.md). A `Lab` only builds and tears
down the network and the processes started in it; what runs there is up to the caller.

    srv    198.18.1.2 + 198.18.1.3 -----------+
    home K (NAT): host 100.64.K.2 -- lan 100.64.K.1 | router | wan 198.18.K+1.2 --+-- inet
    home K (public): host 198.18.K+1.2 -------------------------------------------+
    home K with neighbours: hosts 100.64.K.2, .3, ... -- bridge 100.64.K.1 | router | ...

`inet` is the core router: 198.18.1.1 and 198.18.K+1.1, one /24 per link, ip_forward on, and no
default route. Routers, `srv` and public hosts route by default to `inet`, hosts behind a NAT to
their router. The hard address rules: public side only in 198.18.0.0/15, behind NATs only in
100.64.0.0/10; no link to the root namespace, so nothing reaches the lab from outside it or leaves
the machine from inside it. IPv6 is off in every namespace, unless the lab is built with
`ipv6=True`: then every link also carries IPv6 inside 2001:db8::/32 (`ipv6_of` maps each IPv4
address to its IPv6 one), homes get global addresses (no NAT: 2001:db8:K::N on home K's LAN) and
each home router is a stateful firewall instead (`firewall6_rules`: what the home sent is
answered, nothing new from outside gets in).

A public home is a host directly on `inet`, not a router routing a public /24: one namespace and
one link fewer, and nothing on the path can filter.

A home behind a NAT can have neighbours (`lan_hosts`): further hosts on its LAN, which is then a
bridge on the router, as two machines in one home are. The routers do not hairpin: a host's
packet to its own router's WAN address ends at the router (its NAT rules match only what leaves
or enters on the WAN side), so neighbours reach each other only at their LAN addresses.

Names: every namespace and interface starts with the lab's prefix (`nl`, the PID and a per-process
counter in base 36), so two labs (two test runs) never collide and a lab's leftovers can be
found by name. Interface names stay within the kernel's 15 characters.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import itertools
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PUBLIC_NET = ipaddress.ip_network("198.18.0.0/15")
PRIVATE_NET = ipaddress.ip_network("100.64.0.0/10")
IPV6_NET = ipaddress.ip_network("2001:db8::/32")
LAB_NETS = (PUBLIC_NET, PRIVATE_NET, IPV6_NET)

SRV_ADDRS = ("198.18.1.2", "198.18.1.3")
MAX_HOMES = 99
COMMAND_TIMEOUT = 10.0
STOP_GRACE = 3.0

_HOME_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,23}")
_RESERVED = frozenset({"srv", "inet"})
_IFNAMSIZ = 15


class LabError(Exception):
    """The lab could not be built, or a command inside it failed."""


class NatType(enum.StrEnum):
    """The behaviour of a home's router; `nat_rules` says what each one does in RFC 4787's terms.
    Also accepted: "pub", "full", "prc", "sym"."""

    PUBLIC = "public"
    FULL_CONE = "full-cone"
    PORT_RESTRICTED = "port-restricted"
    SYMMETRIC = "symmetric"

    @classmethod
    def _missing_(cls, value: object) -> NatType | None:
        aliases = {"pub": cls.PUBLIC, "full": cls.FULL_CONE, "prc": cls.PORT_RESTRICTED, "sym": cls.SYMMETRIC}
        return aliases.get(value) if isinstance(value, str) else None


@dataclass(frozen=True)
class LabHost:
    """One place in the lab where processes run: a host, `srv`, or a router (`lab.router`)."""

    name: str
    ns: str
    addr: str
    public_ip: str
    nat: NatType
    iface: str
    addrs: tuple[str, ...] = ()
    router_ns: str | None = None

    def __post_init__(self) -> None:
        if not self.addrs:
            object.__setattr__(self, "addrs", (self.addr,))


@dataclass(frozen=True)
class _Home:
    index: int
    host: LabHost
    router: LabHost | None
    inet_iface: str
    inet_addr: str
    lan_gateway: str | None
    neighbours: tuple[LabHost, ...] = ()


@dataclass
class _Owned:
    """What a lab made, kept apart from the `Lab` so that its finalizer holds no reference to it."""

    prefix: str
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)


_counter = itertools.count(1)
_counter_lock = threading.Lock()


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def _new_prefix() -> str:
    """A prefix no namespace on this machine has now (a dead run with our PID may have left one)."""
    taken = _list_namespaces()
    while True:
        with _counter_lock:
            n = next(_counter)
        prefix = f"nl{_base36(os.getpid())}-{_base36(n)}"
        if not any(ns.startswith(prefix + "-") for ns in taken):
            return prefix


def _run(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT, input: str | None = None) -> str:
    try:
        done = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise LabError(f"{argv[0]}: not found") from e
    except subprocess.TimeoutExpired as e:
        raise LabError(f"`{' '.join(argv)}` did not finish within {timeout}s") from e
    if done.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _ip(*args: str) -> str:
    return _run(["ip", *args])


def _in_ns(ns: str, *argv: str) -> str:
    return _run(["ip", "netns", "exec", ns, *argv])


def _list_namespaces() -> list[str]:
    """Names from `ip netns list` (lines like `NAME (id: 3)`); none if `ip` is missing."""
    try:
        out = _ip("netns", "list")
    except LabError:
        return []
    return [line.split()[0] for line in out.splitlines() if line.strip()]


# ip_forward is 0 and IPv6 on in every new namespace; /proc/sys/net is per namespace, so this runs
# inside it. `default` covers interfaces made later, `all` the loopback already there.
_SYSCTL_SCRIPT = """set -e
if [ "$2" = 1 ]; then
  for c in all default; do
    echo 0 > /proc/sys/net/ipv6/conf/$c/disable_ipv6
    echo 0 > /proc/sys/net/ipv6/conf/$c/accept_ra
  done
  echo "$1" > /proc/sys/net/ipv6/conf/all/forwarding
elif [ -d /proc/sys/net/ipv6 ]; then
  echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
  echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6
fi
echo "$1" > /proc/sys/net/ipv4/ip_forward
"""


def ipv6_of(ipv4: str) -> str:
    """A lab address's IPv6 twin: 198.18.K.N -> 2001:db8:0:K::N (`inet`'s links, srv, WANs),
    100.64.K.N -> 2001:db8:K::N (home K's LAN), K and N written as they are (valid hex digits)."""
    a, b, c, d = ipv4.split(".")
    if (a, b) == ("198", "18"):
        return f"2001:db8:0:{c}::{d}"
    if (a, b) == ("100", "64"):
        return f"2001:db8:{c}::{d}"
    raise ValueError(f"{ipv4} is not a lab address")


def firewall6_rules(wan: str) -> list[list[str]]:
    """The ip6tables arguments of a home router on IPv6: no NAT, a stateful firewall as home
    routers have (RFC 6092's simple security): replies to what the home sent come in, anything
    new from outside is dropped, for the router itself too (but not neighbour discovery)."""
    return [
        ["-A", "FORWARD", "-i", wan, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
        ["-A", "FORWARD", "-i", wan, "-j", "DROP"],
        ["-A", "INPUT", "-i", wan, "-p", "tcp", "--syn", "-j", "DROP"],
        ["-A", "INPUT", "-i", wan, "-p", "udp", "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"],
    ]


def nat_rules(nat: NatType, wan: str, wan_ip: str, host_ip: str) -> list[list[str]]:
    """The iptables arguments that make a router with WAN interface `wan` behave as `nat`.

    Exactly the rules of docs/natlab.md. The INPUT drop applies to every type: without it, a
    port-restricted cone's router answers a peer's early check, the rejected flow's conntrack
    entry survives, and the host's own packet to that peer is then mapped to a new port
    (prc<->prc failed 6 of 6).
    """
    drop_unsolicited = ["-A", "INPUT", "-i", wan, "-m", "conntrack", "--ctstate", "NEW,INVALID", "-j", "DROP"]
    if nat is NatType.PORT_RESTRICTED:
        # endpoint-independent mapping (source port kept), address-and-port-dependent filtering
        rules = [["-t", "nat", "-A", "POSTROUTING", "-o", wan, "-j", "MASQUERADE"]]
    elif nat is NatType.SYMMETRIC:
        # a new random port for every new destination
        rules = [["-t", "nat", "-A", "POSTROUTING", "-o", wan, "-j", "MASQUERADE", "--random-fully"]]
    elif nat is NatType.FULL_CONE:
        # endpoint-independent mapping and filtering: every UDP packet to the WAN address goes to the host
        rules = [
            ["-t", "nat", "-A", "POSTROUTING", "-o", wan, "-s", host_ip, "-j", "SNAT", "--to-source", wan_ip],
            ["-t", "nat", "-A", "PREROUTING", "-i", wan, "-d", wan_ip, "-p", "udp", "-j", "DNAT", "--to-destination", host_ip],
        ]
    else:
        raise ValueError(f"no NAT rules for {nat}")
    return rules + [drop_unsolicited]


@functools.cache
def _available() -> tuple[bool, str]:
    return check_available()


def check_available() -> tuple[bool, str]:
    """Whether namespaces, veth pairs and every iptables feature the lab uses work here (uncached).

    Tried for real on a throwaway namespace: root, the tools and the kernel modules each can be
    missing, and only trying tells which.
    """
    if os.geteuid() != 0:
        return False, "not root: network namespaces and iptables need CAP_NET_ADMIN"
    for tool, package in (("ip", "iproute2"), ("iptables", "iptables")):
        if shutil.which(tool) is None:
            return False, f"`{tool}` not found on PATH (Debian package {package})"
    ns = f"{_new_prefix()}-probe"
    try:
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "add", "probe-wan", "type", "veth", "peer", "name", "probe-lan")
        for nat in (NatType.FULL_CONE, NatType.SYMMETRIC):
            for rule in nat_rules(nat, "probe-wan", "198.18.0.2", "100.64.0.2"):
                _in_ns(ns, "iptables", "-w", "5", *rule)
    except LabError as e:
        return False, str(e)
    finally:
        if ns in _list_namespaces():
            _ip("netns", "delete", ns)
    return True, "network namespaces, veth pairs and iptables NAT work here"


def _stop(procs: list[subprocess.Popen[Any]], grace: float = STOP_GRACE) -> None:
    """SIGTERM each process still running, wait `grace` s in all, then SIGKILL the rest.

    Popen only signals a process it has not reaped, so a PID reused by someone else is never hit.
    """
    live = [p for p in procs if p.poll() is None]
    for p in live:
        p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in live:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            try:
                p.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                pass
    for p in procs:
        for stream in (p.stdin, p.stdout, p.stderr):
            if stream is not None:
                stream.close()
    procs.clear()


def _teardown(owned: _Owned) -> None:
    """Stop the lab's processes, then delete its namespaces, and any other with its prefix (one may
    have been made by an `ip netns add` that was interrupted before it returned)."""
    try:
        _stop(owned.procs)
    finally:
        names = list(reversed(owned.namespaces))
        names += [ns for ns in _list_namespaces() if ns.startswith(owned.prefix + "-") and ns not in names]
        for ns in names:
            try:
                _ip("netns", "delete", ns)
            except LabError:
                pass
        owned.namespaces.clear()


class Lab:
    """A NAT lab: `inet`, `srv` and one home per entry of `homes` (name -> NAT type).

    Use as a context manager, or call `build()` and later `close()`; a finalizer closes a lab that
    was dropped or left open at exit. A `build()` that fails removes what it made.
    """

    def __init__(self, homes: Mapping[str, NatType | str] | None = None, lan_hosts: Mapping[str, str] | None = None,
                 ipv6: bool = False) -> None:
        """`lan_hosts`: further hosts by name -> the home (behind a NAT) whose LAN they are on;
        `ipv6`: every link carries IPv6 too (see the module's docstring)."""
        self.ipv6 = ipv6
        homes = dict(homes or {})
        lan_hosts = dict(lan_hosts or {})
        if len(homes) > MAX_HOMES:
            raise ValueError(f"at most {MAX_HOMES} homes, got {len(homes)}")
        for name in homes:
            if not _HOME_NAME.fullmatch(name) or name in _RESERVED:
                raise ValueError(f"bad home name {name!r}: lowercase letters, digits, '-'; not srv/inet")
        self.prefix = _new_prefix()
        p = self.prefix
        self.inet_ns = f"{p}-inet"
        self.srv = LabHost(
            name="srv", ns=f"{p}-srv", addr=SRV_ADDRS[0], public_ip=SRV_ADDRS[0], nat=NatType.PUBLIC,
            iface=f"{p}-s0", addrs=SRV_ADDRS,
        )
        self._srv_inet_iface = f"{p}-i0"
        for name, home in lan_hosts.items():
            if home not in homes or NatType(homes[home]) is NatType.PUBLIC:
                raise ValueError(f"lan host {name!r}: {home!r} is not a home behind a NAT in this lab")
            if not _HOME_NAME.fullmatch(name) or name in _RESERVED or name in homes:
                raise ValueError(f"bad lan host name {name!r}")
        self._homes = {name: self._plan_home(i, name, NatType(nat), [n for n, h in lan_hosts.items() if h == name])
                       for i, (name, nat) in enumerate(homes.items(), start=1)}
        for ifname in self._interface_names():
            if len(ifname) > _IFNAMSIZ:
                raise ValueError(f"interface name {ifname!r} is longer than {_IFNAMSIZ} characters")
        self._owned = _Owned(prefix=p)
        self._finalizer = weakref.finalize(self, _teardown, self._owned)
        self._built = False

    def _plan_home(self, i: int, name: str, nat: NatType, neighbours: Sequence[str] = ()) -> _Home:
        p = self.prefix
        wan_ip, inet_addr = f"198.18.{i + 1}.2", f"198.18.{i + 1}.1"
        if nat is NatType.PUBLIC:
            host = LabHost(name=name, ns=f"{p}-h-{name}", addr=wan_ip, public_ip=wan_ip, nat=nat, iface=f"{p}-h{i}")
            return _Home(i, host, None, f"{p}-i{i}", inet_addr, None)
        router_ns = f"{p}-r-{name}"
        host = LabHost(
            name=name, ns=f"{p}-h-{name}", addr=f"100.64.{i}.2", public_ip=wan_ip, nat=nat, iface=f"{p}-h{i}",
            router_ns=router_ns,
        )
        router = LabHost(
            name=f"{name}-router", ns=router_ns, addr=wan_ip, public_ip=wan_ip, nat=nat, iface=f"{p}-w{i}",
            addrs=(wan_ip, f"100.64.{i}.1"),
        )
        others = tuple(
            LabHost(name=n, ns=f"{p}-h-{n}", addr=f"100.64.{i}.{j}", public_ip=wan_ip, nat=nat, iface=f"{p}-h{i}n{j}",
                    router_ns=router_ns)
            for j, n in enumerate(neighbours, start=3)
        )
        return _Home(i, host, router, f"{p}-i{i}", inet_addr, f"100.64.{i}.1", others)

    def _interface_names(self) -> list[str]:
        names = [self.srv.iface, self._srv_inet_iface]
        for home in self._homes.values():
            names += [home.host.iface, home.inet_iface]
            if home.router is not None:
                names += [home.router.iface, self._lan_iface(home)]
            for n in home.neighbours:
                names += [n.iface, self._port(home, n)]
        return names

    def _lan_iface(self, home: _Home) -> str:
        """The router's LAN interface: the veth to its host, or the bridge of a home with neighbours."""
        return f"{self.prefix}-{'b' if home.neighbours else 'l'}{home.index}"

    def _port(self, home: _Home, host: LabHost) -> str:
        """The router's end of a host's veth on a bridged LAN."""
        return f"{self.prefix}-l{home.index}" if host is home.host else f"{self.prefix}-l{home.index}n{host.addr.split('.')[-1]}"

    # -- building

    def build(self) -> Lab:
        """Make every namespace, link, address, route and NAT rule; on any failure (or interrupt)
        remove what was made and re-raise."""
        if self._built or not self._finalizer.alive:
            raise LabError("a Lab is built once; make a new one")
        self._built = True
        try:
            self._add_namespace(self.inet_ns, forward=True)
            self._add_namespace(self.srv.ns, forward=False)
            self._link(self.inet_ns, self._srv_inet_iface, "198.18.1.1/24", self.srv.ns, self.srv.iface, "198.18.1.2/24")
            _ip("-n", self.srv.ns, "addr", "add", "198.18.1.3/24", "dev", self.srv.iface)
            _ip("-n", self.srv.ns, "route", "add", "default", "via", "198.18.1.1")
            for home in self._homes.values():
                self._build_home(home)
            if self.ipv6:
                self._build_ipv6()
        except BaseException:
            self.close()
            raise
        return self

    def _build_home(self, home: _Home) -> None:
        host = home.host
        if home.router is None:
            self._add_namespace(host.ns, forward=False)
            self._link(self.inet_ns, home.inet_iface, f"{home.inet_addr}/24", host.ns, host.iface, f"{host.addr}/24")
            _ip("-n", host.ns, "route", "add", "default", "via", home.inet_addr)
            return
        router = home.router
        assert home.lan_gateway is not None
        self._add_namespace(router.ns, forward=True)
        self._add_namespace(host.ns, forward=False)
        self._link(self.inet_ns, home.inet_iface, f"{home.inet_addr}/24", router.ns, router.iface, f"{router.addr}/24")
        _ip("-n", router.ns, "route", "add", "default", "via", home.inet_addr)
        if not home.neighbours:
            self._link(router.ns, self._lan_iface(home), f"{home.lan_gateway}/24", host.ns, host.iface, f"{host.addr}/24")
        else:
            bridge = self._lan_iface(home)
            _ip("-n", router.ns, "link", "add", bridge, "type", "bridge")
            _ip("-n", router.ns, "addr", "add", f"{home.lan_gateway}/24", "dev", bridge)
            _ip("-n", router.ns, "link", "set", bridge, "up")
            for lan_host in (host, *home.neighbours):
                if lan_host is not host:
                    self._add_namespace(lan_host.ns, forward=False)
                port = self._port(home, lan_host)
                _ip("link", "add", port, "netns", router.ns, "type", "veth", "peer", "name", lan_host.iface, "netns", lan_host.ns)
                _ip("-n", router.ns, "link", "set", port, "master", bridge, "up")
                _ip("-n", lan_host.ns, "addr", "add", f"{lan_host.addr}/24", "dev", lan_host.iface)
                _ip("-n", lan_host.ns, "link", "set", lan_host.iface, "up")
        for lan_host in (host, *home.neighbours):
            _ip("-n", lan_host.ns, "route", "add", "default", "via", home.lan_gateway)
        for rule in nat_rules(host.nat, router.iface, router.addr, host.addr):
            _in_ns(router.ns, "iptables", "-w", "5", *rule)

    def _build_ipv6(self) -> None:
        """The IPv6 layer over the built IPv4 lab: an address per interface (`ipv6_of`, no
        duplicate detection to wait for), routes like the IPv4 ones, and the home routers'
        firewalls."""
        def add(ns: str, dev: str, ipv4: str) -> None:
            _ip("-n", ns, "-6", "addr", "add", f"{ipv6_of(ipv4)}/64", "dev", dev, "nodad")

        def default(ns: str, via_ipv4: str) -> None:
            _ip("-n", ns, "-6", "route", "add", "default", "via", ipv6_of(via_ipv4))

        add(self.inet_ns, self._srv_inet_iface, "198.18.1.1")
        for ip in SRV_ADDRS:
            add(self.srv.ns, self.srv.iface, ip)
        default(self.srv.ns, "198.18.1.1")
        for home in self._homes.values():
            add(self.inet_ns, home.inet_iface, home.inet_addr)
            if home.router is None:
                add(home.host.ns, home.host.iface, home.host.addr)
                default(home.host.ns, home.inet_addr)
                continue
            router, lan = home.router, f"2001:db8:{home.index}::/64"
            add(router.ns, router.iface, router.addr)
            default(router.ns, home.inet_addr)
            _ip("-n", self.inet_ns, "-6", "route", "add", lan, "via", ipv6_of(router.addr))
            assert home.lan_gateway is not None
            add(router.ns, self._lan_iface(home), home.lan_gateway)
            for lan_host in (home.host, *home.neighbours):
                add(lan_host.ns, lan_host.iface, lan_host.addr)
                default(lan_host.ns, home.lan_gateway)
            for rule in firewall6_rules(router.iface):
                _in_ns(router.ns, "ip6tables", "-w", "5", *rule)

    def _add_namespace(self, ns: str, forward: bool) -> None:
        self._owned.namespaces.append(ns)  # before it exists: an interrupted add is still removed
        _ip("netns", "add", ns)
        _in_ns(ns, "sh", "-c", _SYSCTL_SCRIPT, "sysctl", "1" if forward else "0", "1" if self.ipv6 else "0")
        _ip("-n", ns, "link", "set", "lo", "up")

    def _link(self, ns_a: str, if_a: str, cidr_a: str, ns_b: str, if_b: str, cidr_b: str) -> None:
        """A veth pair made directly inside both namespaces, never in the root one."""
        _ip("link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns", ns_b)
        for ns, ifname, cidr in ((ns_a, if_a, cidr_a), (ns_b, if_b, cidr_b)):
            _ip("-n", ns, "addr", "add", cidr, "dev", ifname)
            _ip("-n", ns, "link", "set", ifname, "up")

    # -- using

    def __enter__(self) -> Lab:
        if not self._built:
            self.build()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def available() -> tuple[bool, str]:
        """(True, ...) if a lab can be built here, else (False, why); tried once per process."""
        return _available()

    @property
    def homes(self) -> dict[str, LabHost]:
        """Each home's host by name, in the order given."""
        return {name: home.host for name, home in self._homes.items()}

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Every namespace this lab made and has not removed yet."""
        return tuple(self._owned.namespaces)

    def host(self, name: str) -> LabHost:
        """The host of home `name`, a neighbour on a home's LAN by its name, or `srv`."""
        if name == "srv":
            return self.srv
        if name in self._homes:
            return self._homes[name].host
        for home in self._homes.values():
            for neighbour in home.neighbours:
                if neighbour.name == name:
                    return neighbour
        raise KeyError(f"no home or lan host {name!r} in this lab (homes: {', '.join(self._homes)})")

    def router(self, name: str) -> LabHost:
        """The NAT router of home `name`: to inspect its rules or conntrack table."""
        router = self._homes[name].router
        if router is None:
            raise KeyError(f"home {name!r} is public: it has no router")
        return router

    def lan_iface(self, name: str) -> str:
        """The LAN-side interface of home `name`'s router (where its hosts are)."""
        home = self._homes[name]
        if home.router is None:
            raise KeyError(f"home {name!r} is public: it has no router")
        return self._lan_iface(home)

    def reboot_router(self, name: str) -> None:
        """What a home router's reboot does to the connections through it: it forgets every flow
        (the conntrack table flushed), and the packets of a flow it no longer knows are dropped
        (no mid-stream pick-up: `nf_conntrack_tcp_loose=0` and INVALID dropped), so every TCP
        connection through it dies and every UDP flow needs a new mapping. Needs `conntrack`."""
        router = self.router(name)
        _in_ns(router.ns, "sh", "-c", "echo 0 > /proc/sys/net/netfilter/nf_conntrack_tcp_loose")
        rule = ["FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"]
        if subprocess.run(["ip", "netns", "exec", router.ns, "iptables", "-w", "5", "-C", *rule],
                          capture_output=True).returncode != 0:
            _in_ns(router.ns, "iptables", "-w", "5", "-I", *rule)
        _in_ns(router.ns, "conntrack", "-F")

    def change_wan_address(self, name: str, address: str) -> None:
        """Give home `name`'s router a new WAN address in its link's /24 (what an ISP does), the
        old one removed and unreachable, every flow through the router forgotten (the reconnect
        that brings a new address resets the modem's NAT state); MASQUERADE follows. Only for port-restricted and symmetric routers (a full cone's rules name the address)."""
        home = self._homes[name]
        router = self.router(name)
        if home.host.nat is NatType.FULL_CONE:
            raise LabError("a full-cone router's NAT rules name its WAN address; change those instead")
        new = ipaddress.ip_address(address)
        if new not in ipaddress.ip_network(f"{home.inet_addr}/24", strict=False) or str(new) == home.inet_addr:
            raise ValueError(f"{address} is not a free address of {name}'s WAN link")
        current = [line.split()[3] for line in _ip("-n", router.ns, "-4", "-o", "addr", "show", "dev", router.iface).splitlines()]
        for cidr in current:  # first: deleting a primary address deletes the secondaries of its subnet
            _ip("-n", router.ns, "addr", "del", cidr, "dev", router.iface)
        _ip("-n", router.ns, "addr", "add", f"{address}/24", "dev", router.iface)
        _ip("-n", router.ns, "route", "replace", "default", "via", home.inet_addr)
        # Nothing may reach the old address any more: without these, `inet` would still send its
        # frames to the router's MAC, and a flow DNATed to a mapped port would carry on.
        _in_ns(router.ns, "conntrack", "-F")
        for cidr in current:
            _ip("-n", self.inet_ns, "neigh", "flush", "to", cidr.split("/")[0])

    def _ns(self, where: LabHost | str) -> str:
        if not self._built or not self._finalizer.alive:
            raise LabError("the lab is not built, or already closed")
        if isinstance(where, LabHost):
            return where.ns
        return where if where in self._owned.namespaces else self.host(where).ns

    def popen(self, where: LabHost | str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start `argv` in `where` (a LabHost, a home's name, "srv", or one of `namespaces`);
        `close()` stops it.

        `ip netns exec` execs `argv` in place (no shell), so the PID kept is the process itself
        and stopping it hits exactly that process. stdin defaults to /dev/null.
        """
        ns = self._ns(where)
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)
        self._owned.procs.append(proc)
        return proc

    def run(self, where: LabHost | str, argv: Sequence[str], timeout: float = COMMAND_TIMEOUT, **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run `argv` in `where` (as for `popen`) to completion (output captured as text unless `kw` says
        otherwise); killed and `subprocess.TimeoutExpired` raised after `timeout` s."""
        ns = self._ns(where)
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        if "input" not in kw:
            kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(["ip", "netns", "exec", ns, *argv], timeout=timeout, **kw)

    def close(self) -> None:
        """Stop the processes started with `popen` (SIGTERM, then SIGKILL), remove every namespace.
        Safe to call more than once."""
        self._finalizer()

    def describe(self) -> str:
        """The topology as a table, for logs and failure reports."""
        rows = [("name", "namespace", "addresses", "public ip", "nat")]
        inet_addrs = ", ".join(["198.18.1.1", *(h.inet_addr for h in self._homes.values())])
        rows.append(("inet", self.inet_ns, inet_addrs, "-", "core router"))
        rows.append(("srv", self.srv.ns, ", ".join(self.srv.addrs), self.srv.public_ip, "public"))
        for home in self._homes.values():
            h = home.host
            if home.router is not None:
                rows.append((h.name + " router", home.router.ns, ", ".join(home.router.addrs), h.public_ip, h.nat.value))
            for lan_host in (h, *home.neighbours):
                rows.append((lan_host.name, lan_host.ns, lan_host.addr, h.public_ip, h.nat.value))
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        return "\n".join("  ".join(r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4] for r in rows)

    def __repr__(self) -> str:
        return f"Lab({self.prefix}, homes={ {n: h.nat.value for n, h in self.homes.items()} })"

