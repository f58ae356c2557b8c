"""A real home gateway's port mapping for the NAT lab: miniupnpd (UPnP-IGD v1 or v2, NAT-PMP and
PCP in one daemon, the IGD most routers run), not the project's code, on a lab router.

Why built here rather than installed: Debian's miniupnpd refuses to map ports when its WAN
address is in its list of reserved ranges (`reserved[]` in getifaddr.c), and that list holds the
lab's public range, 198.18.0.0/15. The lab's address rules stay as they are; instead `build()`
compiles Debian's own source package with exactly that entry removed and nothing else changed
(100.64.0.0/10 stays reserved: miniupnpd requires its LAN side to be private, and so it is):

    apt-get source miniupnpd   with a private deb-src list made from the machine's deb sources
                               (apt checks the files against the signed index)
    dpkg-source -x             unpacks it and applies Debian's patches
    getifaddr.c                the reserved[] entry above removed (fails if not found)
    ./configure --igd2 --leasefile --firewall=nftables && make -f Makefile.linux_nft miniupnpd

It takes ~10 s and is cached under $XDG_CACHE_HOME/overlay-node/natlab/. The build needs
pkg-config, libnftnl-dev and libmnl-dev, and `nft` (package nftables) makes the router's tables;
scripts/test.sh installs them. The nftables build is the one that fits the lab's routers, whose
iptables is the nf_tables one: miniupnpd's rules go into a table of their own (`inet miniupnpd`)
beside the NAT rules, and vanish with the router's namespace.

`start()` runs it in a home's router: the LAN side listens, the WAN side is mapped.
`force_igd_desc_v1` makes it describe itself as an IGDv1 device.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulations.natlab.topology import Lab, LabError

PATCH_ID = "lab2"  # bump when the change to the source changes: a new cache entry
BENCHMARKING_RANGE = re.compile(r"^\s*\{ IP\(198,\s*18,\s*0,\s*0\), MSK\(15\) \},.*\n", re.M)
HTTP_PORT = 5000
BUILD_TIMEOUT = 300.0
READY_TIMEOUT = 10.0

NFT_TABLE = """table inet miniupnpd {
    chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }
    chain miniupnpd { }
    chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }
    chain prerouting_miniupnpd { }
    chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; }
    chain postrouting_miniupnpd { }
}
"""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "overlay-node" / "natlab" / f"miniupnpd-{PATCH_ID}"


def _run(argv: list[str], cwd: Path, timeout: float = BUILD_TIMEOUT, **kw: Any) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw)
    except (FileNotFoundError, subprocess.TimeoutExpired) as e:
        raise LabError(f"miniupnpd build: `{' '.join(argv)}`: {e}") from None
    if done.returncode != 0:
        raise LabError(f"miniupnpd build: `{' '.join(argv)}` failed: {(done.stderr or done.stdout)[-1500:]}")
    return done.stdout


def _deb_src_lists(apt_dir: Path) -> None:
    """deb-src twins of this machine's deb sources, in `apt_dir` only (the system's stay as they are)."""
    parts = apt_dir / "sources.list.d"
    parts.mkdir(parents=True)
    n = 0
    for source in Path("/etc/apt/sources.list.d").glob("*.sources"):
        text = re.sub(r"^Types:\s*deb\s*$", "Types: deb-src", source.read_text(), flags=re.M)
        (parts / source.name).write_text(text)
        n += 1
    for listing in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.list")]:
        if listing.is_file():
            lines = [re.sub(r"^deb\s", "deb-src ", line) for line in listing.read_text().splitlines() if line.startswith("deb ")]
            (parts / f"src-{listing.name}.list").write_text("\n".join(lines) + "\n")
            n += bool(lines)
    if not n:
        raise LabError("miniupnpd build: this machine has no Debian package sources")


def build() -> Path:
    """The lab's miniupnpd binary, built once per machine (see the module docstring)."""
    binary = cache_dir() / "miniupnpd"
    if binary.is_file():
        return binary
    for tool, package in (("apt-get", "apt"), ("dpkg-source", "dpkg-dev"), ("make", "make"), ("cc", "gcc"),
                          ("pkg-config", "pkg-config")):
        if shutil.which(tool) is None:
            raise LabError(f"miniupnpd build: `{tool}` not found (Debian package {package})")
    with tempfile.TemporaryDirectory(prefix="miniupnpd-") as tmp:
        work = Path(tmp)
        apt = work / "apt"
        _deb_src_lists(apt)
        (apt / "lists" / "partial").mkdir(parents=True)
        (apt / "cache" / "archives" / "partial").mkdir(parents=True)
        options = ["-o", "Dir::Etc::SourceList=/dev/null", "-o", f"Dir::Etc::SourceParts={apt / 'sources.list.d'}",
                   "-o", f"Dir::State::Lists={apt / 'lists'}", "-o", f"Dir::Cache={apt / 'cache'}"]
        _run(["apt-get", *options, "update", "-qq"], work)
        _run(["apt-get", *options, "source", "--download-only", "miniupnpd"], work)
        dsc = next(work.glob("miniupnpd_*.dsc"))
        # --no-check: the files' hashes were checked by apt against the signed index already
        _run(["dpkg-source", "--no-check", "-x", dsc.name, "src"], work)
        src = work / "src"
        getifaddr = src / "getifaddr.c"
        text, n = BENCHMARKING_RANGE.subn("", getifaddr.read_text())
        if n != 1:
            raise LabError("miniupnpd build: 198.18.0.0/15 not found once in getifaddr.c's reserved[]; update the lab's patch")
        getifaddr.write_text(text)
        _run(["./configure", "--igd2", "--leasefile", "--firewall=nftables"], src)
        _run(["make", "-f", "Makefile.linux_nft", "miniupnpd"], src)
        binary.parent.mkdir(parents=True, exist_ok=True)
        staged = binary.with_suffix(".new")
        shutil.copy2(src / "miniupnpd", staged)
        (binary.parent / "SOURCE").write_text(f"{dsc.name}, reserved[] without 198.18.0.0/15\n")
        staged.rename(binary)
    return binary


@dataclass(frozen=True)
class Gateway:
    """What a home's router offers: UPnP-IGD (version 1 or 2) and/or NAT-PMP + PCP. `secure`
    (miniupnpd's secure_mode): a LAN host may map ports to itself only; off, as on many routers,
    one host can map a port to another (how a test makes a conflict with one host)."""

    upnp: bool = True
    natpmp_pcp: bool = True
    igd_version: int = 2
    secure: bool = True

    def config(self, wan: str, lan: str, root: Path) -> str:
        return "\n".join([
            f"ext_ifname={wan}", f"listening_ip={lan}", f"http_port={HTTP_PORT}",
            f"enable_upnp={'yes' if self.upnp else 'no'}", f"enable_natpmp={'yes' if self.natpmp_pcp else 'no'}",
            f"force_igd_desc_v1={'yes' if self.igd_version == 1 else 'no'}",
            f"secure_mode={'yes' if self.secure else 'no'}", "system_uptime=yes", "min_lifetime=120", "max_lifetime=86400",
            f"lease_file={root / 'leases'}", "uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b",
            "upnp_table_name=miniupnpd", "upnp_nat_table_name=miniupnpd",
            "allow 1024-65535 100.64.0.0/10 1024-65535", "deny 0-65535 0.0.0.0/0 0-65535", "",
        ])


def start(lab: Lab, home: str, gateway: Gateway, root: Path, binary: Path | None = None) -> subprocess.Popen[Any]:
    """miniupnpd on `home`'s router, ready when this returns; the lab stops it on close."""
    binary = binary or build()
    router = lab.router(home)
    root.mkdir(parents=True, exist_ok=True)
    done = lab.run(router, ["nft", "-f", "-"], input=NFT_TABLE)
    if done.returncode != 0:
        raise LabError(f"nft in {router.ns}: {done.stderr.strip()}")
    conf = root / "miniupnpd.conf"
    conf.write_text(gateway.config(router.iface, lab.lan_iface(home), root))
    log = open(root / "miniupnpd.log", "wb")
    proc = lab.popen(router, [str(binary), "-d", "-f", str(conf), "-P", str(root / "miniupnpd.pid")], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    wanted = [":5351"] * gateway.natpmp_pcp + [":1900"] * gateway.upnp
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"miniupnpd exited ({proc.returncode}): {(root / 'miniupnpd.log').read_text()[-1500:]}")
        listening = lab.run(router, ["ss", "-Hlun"]).stdout + lab.run(router, ["ss", "-Hltn"]).stdout
        if all(port in listening for port in wanted) and (not gateway.upnp or f":{HTTP_PORT}" in listening):
            return proc
        time.sleep(0.1)
    raise LabError(f"miniupnpd did not listen within {READY_TIMEOUT}s: {(root / 'miniupnpd.log').read_text()[-1500:]}")


def mappings(lab: Lab, home: str) -> str:
    """The DNAT rules miniupnpd keeps on `home`'s router now (one line each), for assertions."""
    done = lab.run(lab.router(home), ["nft", "list", "chain", "inet", "miniupnpd", "prerouting_miniupnpd"])
    return "\n".join(line.strip() for line in done.stdout.splitlines() if "dnat" in line)
