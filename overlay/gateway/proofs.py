"""Degas proofs: what lets a client's gateway node speak for the account at an instance's node.
A core without I/O: text and `now` (wall-clock seconds) in, a refusal reason or None out.

A proof is the text below, signed by the account's Ethereum key (EIP-191 personal_sign). The
gateway node makes the text when the client authenticates (session.py); the client's signature
of it is its authentication, and the gateway node hands both to the instance's node with each
message it forwards:

    overlay-node gateway <the gateway node's peer ID>
    account 0x<the account's 40 hex digits, lower case>
    degas any | degas <32 hex>[,<32 hex>...]
    challenge <64 hex: 32 random bytes, the proof's nonce>
    expires <unix seconds>

`ProofBook` is the instance node's side. It takes a forwarded message only if
- the text is exactly that form (nothing else that the account signed is a proof);
- the gateway named in it is the node that handed the message over (its Noise-authenticated
  INM source), so a captured proof is worth nothing to any other node;
- it names the message's account and degas_id, and has not expired (a clock skew of SKEW
  allowed) nor expires further ahead than MAX_TTL (a gateway cannot ask for a lasting proof);
- the signature recovers to the account (checked once per proof: what was verified is kept by
  (account, nonce), and a different proof under a nonce already seen is refused);
- the message's sequence number (numbered by the gateway node, per connection) was not taken
  before under this proof: a window of WINDOW numbers below the highest, as IPsec's
  anti-replay window, so reordering within it is no loss and a repeat is refused.

Memory: MAX_PROOFS proofs in all, MAX_PER_GATEWAY per forwarding node; past either, new proofs
are refused, never evicted (an evicted nonce could be replayed). A proof is forgotten once it
has expired, which is safe: it is refused by its time from then on.
"""

from __future__ import annotations

import hashlib
import heapq
import re
from collections.abc import Callable
from dataclasses import dataclass, field

PROOF_TTL = 600.0  # seconds a proof made at authentication lasts
MAX_TTL = PROOF_TTL  # the longest a proof may still have to live when an instance's node sees it
SKEW = 60.0  # seconds the nodes' wall clocks may differ
WINDOW = 1024  # sequence numbers below the highest still accepted once each
MAX_PROOFS = 10_000
MAX_PER_GATEWAY = 1_000
MAX_PROOF_TEXT = 1024
MAX_DEGAS_IDS = 8
MAX_SEQ = 2**53

MALFORMED = "malformed proof"
OTHER_NODE = "proof names another node"
OTHER_ACCOUNT = "proof of another account"
OUTSIDE = "degas_id outside the proof"
EXPIRED = "proof expired"
TOO_LONG = "proof lives too long"
BAD_SIGNATURE = "proof not signed by the account"
REUSED = "proof nonce reused"
REPLAYED = "replayed message"
FULL = "proof table full"
OVER_QUOTA = "node over proof quota"

Recover = Callable[[str, bytes], str]  # (text, signature) -> "0x..." address; raises ValueError

_LINES = re.compile(
    r"overlay-node gateway (?P<gateway>[1-9A-HJ-NP-Za-km-z]{1,128})\n"
    r"account 0x(?P<account>[0-9a-f]{40})\n"
    r"degas (?P<degas>any|[0-9a-f]{32}(?:,[0-9a-f]{32}){0,%d})\n"
    r"challenge (?P<nonce>[0-9a-f]{64})\n"
    r"expires (?P<expires>0|[1-9][0-9]{0,11})" % (MAX_DEGAS_IDS - 1)
)


@dataclass(frozen=True)
class Proof:
    gateway: str  # peer ID of the node allowed to use it
    account: bytes  # 20 bytes
    degas_ids: frozenset[bytes] | None  # None: any instance
    nonce: bytes  # 32 bytes
    expires: int  # unix seconds

    def text(self) -> str:
        degas = "any" if self.degas_ids is None else ",".join(sorted(d.hex() for d in self.degas_ids))
        return (f"overlay-node gateway {self.gateway}\naccount 0x{self.account.hex()}\ndegas {degas}\n"
                f"challenge {self.nonce.hex()}\nexpires {self.expires}")


def parse_proof(text: str) -> Proof:
    """The proof a text states; ValueError unless it is exactly the canonical form."""
    match = _LINES.fullmatch(text) if len(text) <= MAX_PROOF_TEXT else None
    if match is None:
        raise ValueError("not a proof text")
    degas = match["degas"]
    proof = Proof(match["gateway"], bytes.fromhex(match["account"]),
                  None if degas == "any" else frozenset(bytes.fromhex(d) for d in degas.split(",")),
                  bytes.fromhex(match["nonce"]), int(match["expires"]))
    if proof.text() != text:  # degas_ids repeated or out of order: one text per proof
        raise ValueError("not a canonical proof text")
    return proof


class SeqWindow:
    """Which sequence numbers of one proof were taken: the highest and a bitmask below it."""

    def __init__(self) -> None:
        self.highest = 0
        self._mask = 0  # bit i: highest - i was taken

    def take(self, seq: int) -> bool:
        """Whether `seq` is new (and now taken)."""
        if seq > self.highest:
            shift = seq - self.highest
            self._mask = 1 if shift >= WINDOW else ((self._mask << shift) | 1) & ((1 << WINDOW) - 1)
            self.highest = seq
            return True
        offset = self.highest - seq
        if offset >= WINDOW or self._mask >> offset & 1:
            return False
        self._mask |= 1 << offset
        return True


@dataclass
class _Held:
    gateway: str
    expires: int
    digest: bytes  # of the text and signature that were verified
    window: SeqWindow = field(default_factory=SeqWindow)


class ProofBook:
    """The proofs an instance's node has verified, and the sequence numbers each has carried."""

    def __init__(self, recover: Recover, max_proofs: int = MAX_PROOFS, max_per_gateway: int = MAX_PER_GATEWAY) -> None:
        self.recover = recover
        self.max_proofs = max_proofs
        self.max_per_gateway = max_per_gateway
        self._held: dict[tuple[bytes, bytes], _Held] = {}  # (account, nonce) ->
        self._by_expiry: list[tuple[int, bytes, bytes]] = []  # heap of (expires, account, nonce)
        self._per_gateway: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._held)

    def check(self, source: str, account: bytes, degas_id: bytes, text: str, signature: bytes, now: float,
              seq: int | None = None) -> str | None:
        """None if `source` may deliver message `seq` of `account` to `degas_id` under this proof
        (and the number is now taken); otherwise why not. `seq` None: only whether the proof
        vouches that the account is connected at `source`."""
        if seq is not None and not 0 < seq < MAX_SEQ:
            return MALFORMED
        try:
            proof = parse_proof(text)
        except ValueError:
            return MALFORMED
        if proof.gateway != source:
            return OTHER_NODE
        if proof.account != account:
            return OTHER_ACCOUNT
        if proof.degas_ids is not None and degas_id not in proof.degas_ids:
            return OUTSIDE
        if proof.expires + SKEW < now:
            return EXPIRED
        if proof.expires > now + MAX_TTL + SKEW:
            return TOO_LONG
        self._expire(now)
        key = (account, proof.nonce)
        digest = hashlib.sha256(text.encode() + b"\0" + signature).digest()
        held = self._held.get(key)
        if held is None:
            if len(self._held) >= self.max_proofs:
                return FULL
            if self._per_gateway.get(source, 0) >= self.max_per_gateway:
                return OVER_QUOTA
            try:
                signer = self.recover(text, signature)
            except ValueError:
                return BAD_SIGNATURE
            if signer.lower() != "0x" + account.hex():
                return BAD_SIGNATURE
            held = self._held[key] = _Held(source, proof.expires, digest)
            heapq.heappush(self._by_expiry, (proof.expires, account, proof.nonce))
            self._per_gateway[source] = self._per_gateway.get(source, 0) + 1
        elif held.digest != digest:
            return REUSED
        if seq is not None and not held.window.take(seq):
            return REPLAYED
        return None

    def _expire(self, now: float) -> None:
        while self._by_expiry and self._by_expiry[0][0] + SKEW < now:
            _, account, nonce = heapq.heappop(self._by_expiry)
            held = self._held.pop((account, nonce))
            self._per_gateway[held.gateway] -= 1
            if not self._per_gateway[held.gateway]:
                del self._per_gateway[held.gateway]
