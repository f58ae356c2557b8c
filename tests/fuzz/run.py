"""Run a fuzz harness under atheris (coverage-guided), or write the seed corpora.

    python -m tests.fuzz.run --list
    python -m tests.fuzz.run --write-seeds            # (re)write tests/fuzz/corpus/<name>/seed-*
    python -m tests.fuzz.run NAME [--runs N | --seconds S] [--grow] [--seed K]

A run starts from the committed corpus (and the crash regressions), and by default writes the
new inputs it finds to a temporary directory that is deleted afterwards; `--grow` keeps them in
the committed corpus instead (then commit them). An input that makes a harness raise anything
but its declared errors is written to `tests/fuzz/crashes/<name>/`, where the regression test
replays it for good: fix the decoder, commit the file. The exit status is libFuzzer's: 0 when no
crash was found. `--runs` is a fixed number of executions (what CI does); `--seconds` a time.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import sys
import tempfile



def write_seeds() -> int:
    from tests.fuzz.harnesses import CORPUS, HARNESSES
    count = 0
    for name, harness in HARNESSES.items():
        folder = CORPUS / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("seed-*"):
            old.unlink()
        for seed in harness.seeds():
            harness(seed)  # a seed must pass its own harness
            (folder / f"seed-{hashlib.sha1(seed).hexdigest()[:16]}").write_bytes(seed)
            count += 1
    print(f"{count} seeds in {len(HARNESSES)} corpora under {CORPUS}")
    return 0


def fuzz(name: str, runs: int | None, seconds: int | None, grow: bool, seed: int, max_len: int) -> int:
    import atheris

    with atheris.instrument_imports(include=["overlay", "signaling", "nat"]):
        _import_targets()
    from tests.fuzz.harnesses import CORPUS, CRASHES, HARNESSES
    if name not in HARNESSES:
        sys.exit(f"no harness {name!r}: one of {', '.join(sorted(HARNESSES))}")
    harness = HARNESSES[name]
    corpus, crashes = CORPUS / name, CRASHES / name
    crashes.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as scratch:
        # libFuzzer writes what it finds into the first directory and only reads the others.
        dirs = [str(corpus)] if grow else [scratch, str(corpus)]
        if any(crashes.iterdir()):
            dirs.append(str(crashes))
        args = [sys.argv[0], *dirs, f"-artifact_prefix={crashes}/", f"-seed={seed}", f"-max_len={max_len}",
                "-print_final_stats=1", "-rss_limit_mb=2048", "-timeout=10"]
        args.append(f"-runs={runs}" if runs is not None else f"-max_total_time={seconds}")
        atheris.Setup(args, harness)
        atheris.Fuzz()  # exits the process with libFuzzer's status
    return 0


TARGETS = (
    "nat.lan", "nat.natpmp", "nat.pcp", "nat.reachability", "nat.stun", "nat.webrtc_description", "nat.webrtc_stream",
    "overlay.channels.client", "overlay.channels.inm", "overlay.channels.relay", "overlay.channels.reservation",
    "overlay.core.framing", "overlay.core.jsonwire", "overlay.core.protobuf", "overlay.core.records",
    "overlay.gateway.hosts", "overlay.gateway.proofs", "overlay.gateway.session",
    "overlay.kademlia.core", "overlay.kademlia.store", "overlay.kademlia.wire",
    "overlay.messagenet.relayer", "overlay.peermsg.app", "overlay.peermsg.core", "overlay.peermsg.frames",
    "signaling.messages", "signaling.server",
)


def _import_targets() -> None:
    """Import every module a harness reaches, before the harnesses and inside instrument_imports,
    so that atheris sees their coverage (a module imported earlier is not instrumented)."""
    for module in TARGETS:
        importlib.import_module(module)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help="the harness (--list shows them)")
    parser.add_argument("--list", action="store_true", help="the harnesses and what each decodes")
    parser.add_argument("--write-seeds", action="store_true")
    parser.add_argument("--runs", type=int, help="a fixed number of executions")
    parser.add_argument("--seconds", type=int, default=60, help="how long to run, without --runs")
    parser.add_argument("--grow", action="store_true", help="keep new inputs in the committed corpus")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed (a fixed run is repeatable)")
    parser.add_argument("--max-len", type=int, default=8192, help="the longest input libFuzzer makes")
    options = parser.parse_args(argv)
    if options.list:
        from tests.fuzz.harnesses import HARNESSES
        for name, harness in sorted(HARNESSES.items()):
            print(f"{name:22} {harness.doc.splitlines()[0]}")
        return 0
    if options.write_seeds:
        return write_seeds()
    if options.name is None:
        parser.error("name a harness (--list shows them)")
    return fuzz(options.name, options.runs, options.seconds, options.grow, options.seed, options.max_len)


if __name__ == "__main__":
    sys.exit(main())
