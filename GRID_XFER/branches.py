"""Which branch of a conflicted token is the token, and who steps aside.

On a CouchDB cluster each copy of a document checks ``_rev`` on its own, so two
writes from the same revision can both be kept, one per copy, and survive as a
conflict: a document with several live leaf revisions. CouchDB shows one of them
(the *winner*: highest generation, then highest revision hash), which says
nothing about which writer won a race. These pure functions decide, from the
leaves that every reachable copy holds (``Couch.leaves``), what a claimant, a
token's owner and the sweeper do. Each rule deletes leaves only where another
live leaf is sure to remain, so a token never disappears; the argument is in
docs/tokens.md ("Exactly once on a cluster").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

Leaf = dict[str, Any]

HELD = frozenset({"locked", "archiving"})
FINAL = frozenset({"done", "error"})
# A claimant settles its claim within seconds (Pool.claim); a held leaf claimed
# longer ago than this is no claimant in progress: an owner, a stray, or a
# claimant that gave up. Clocks of workers must agree to well within this.
SETTLE_AGE = 30.0


def rank(rev: str) -> tuple[int, str]:
    """CouchDB's order of revisions: generation, then the hash as a string."""
    gen, _, digest = rev.partition("-")
    return (int(gen) if gen.isdigit() else 0, digest)


def live(leaves: Iterable[Leaf]) -> list[Leaf]:
    return [leaf for leaf in leaves if not leaf.get("_deleted")]


def path(leaf: Leaf) -> list[str]:
    """The leaf's revision and its ancestors, newest first."""
    revs = leaf.get("_revisions") or {}
    start, ids = revs.get("start"), revs.get("ids")
    if not isinstance(start, int) or not isinstance(ids, list):
        return [leaf["_rev"]]
    return [f"{start - i}-{rev_id}" for i, rev_id in enumerate(ids)]


def descends(leaf: Leaf, rev: str) -> bool:
    """Is ``rev`` the leaf itself or one of its ancestors?"""
    return rev in path(leaf)


def winner(leaves: Iterable[Leaf]) -> Leaf | None:
    """The leaf CouchDB shows: live before deleted, then by :func:`rank`."""
    return max(
        leaves, key=lambda leaf: (not leaf.get("_deleted"), rank(leaf["_rev"])), default=None
    )


def held(leaf: Leaf, now: float) -> bool:
    """A claim that may still be worked on: held state, lease not run out."""
    expires = leaf.get("lease_expires")
    return leaf.get("state") in HELD and isinstance(expires, (int, float)) and expires > now


def final(leaf: Leaf) -> bool:
    return leaf.get("state") in FINAL


def progressed(leaf: Leaf) -> bool:
    """A live claim whose holder wrote again after claiming: it went ahead."""
    start = leaf.get("claimed_from")
    return isinstance(start, int) and rank(leaf["_rev"])[0] > start + 1


def _young(leaf: Leaf, now: float) -> bool:
    claimed = leaf.get("claimed")
    return held(leaf, now) and isinstance(claimed, (int, float)) and now - claimed < SETTLE_AGE


def preference(leaf: Leaf, now: float) -> tuple[int, tuple[int, str]]:
    """Which branch is the token when branches disagree (the sweeper keeps the highest):
    done, then error (work finished), then a live claim (someone may be at work),
    then the rest (todo, staging, a lease run out); ties by :func:`rank`."""
    state = leaf.get("state")
    level = 4 if state == "done" else 3 if state == "error" else 2 if held(leaf, now) else 1
    return (level, rank(leaf["_rev"]))


def preferred(leaves: list[Leaf], now: float) -> Leaf | None:
    """The live leaf that is the token (what the sweeper keeps), or None if none is live."""
    return max(live(leaves), key=lambda leaf: preference(leaf, now), default=None)


@dataclass
class Verdict:
    """What to do: ``outcome`` and the leaf revisions to delete first."""

    outcome: Literal["own", "lost", "wait", "overridden", "skip"]
    delete: list[str] = field(default_factory=list)
    current: Leaf | None = None  # the owner's leaf to go on from


def judge_claim(leaves: list[Leaf], claim_id: str, now: float) -> Verdict:
    """A claimant whose write was not a sure win looks at every leaf.

    It owns the token once its leaf is the only live one. It steps aside
    (deleting its leaf) for a finished branch, for a live claim that went ahead
    or ranks higher; a lower live claim is waited for (that claimant steps aside,
    or it is an owner that went ahead quietly, and then this one gives up
    without deleting anything). Leaves that are neither (todo, staging, a lease
    run out) are removed by the claimant: its own leaf stays, so the token stays.
    """
    alive = live(leaves)
    mine = [leaf for leaf in alive if leaf.get("claim") == claim_id]
    if not mine:
        return Verdict("lost")
    me = max(mine, key=lambda leaf: rank(leaf["_rev"]))
    others = [leaf for leaf in alive if leaf is not me]
    rivals = [leaf for leaf in others if held(leaf, now) and leaf.get("claim") != claim_id]
    if any(final(leaf) for leaf in others) or any(
        progressed(r) or rank(r["_rev"]) > rank(me["_rev"]) for r in rivals
    ):
        return Verdict("lost", [me["_rev"]])
    garbage = [leaf["_rev"] for leaf in others if leaf not in rivals]
    return Verdict("wait" if rivals else "own", garbage, current=me)


def judge_owner(
    leaves: list[Leaf], claim_id: str, claim_rev: str, my_rev: str, dropped: Iterable[str] = ()
) -> Verdict:
    """An owner checks that the token is still its own, and tidies it.

    A leaf that branched off the owner's claim and is not the owner's (a reset,
    a reaper, a delete), or a finished branch elsewhere, means the token is no
    longer its to work on: ``overridden``. Other live leaves (claimants that
    lost, strays) and the owner's own stale branches are garbage, deleted.
    ``dropped`` are revisions whose children the owner deleted itself: their
    tombstones are its own.
    """
    alive = live(leaves)
    current = next((leaf for leaf in alive if leaf["_rev"] == my_rev), None)
    if current is None:  # our last write is on no reachable copy: go on from the newest we have
        ours = [
            leaf for leaf in alive if leaf.get("claim") == claim_id and descends(leaf, claim_rev)
        ]
        current = max(ours, key=lambda leaf: rank(leaf["_rev"]), default=None)
    if current is None:
        return Verdict("overridden")
    if deleted_under(leaves, claim_rev, dropped):
        return Verdict("overridden", current=current)
    for leaf in alive:
        if leaf is current:
            continue
        mine = descends(leaf, claim_rev)
        if (mine and leaf.get("claim") != claim_id) or (not mine and final(leaf)):
            return Verdict("overridden", current=current)
    garbage = [leaf["_rev"] for leaf in alive if leaf is not current]
    return Verdict("own", garbage, current=current)


def deleted_under(leaves: list[Leaf], claim_rev: str, dropped: Iterable[str] = ()) -> bool:
    """Someone deleted the token under a claim: a tombstone on the claim's branch
    whose parent is not one the owner deleted itself (``dropped``)."""
    dropped = set(dropped)
    return any(
        leaf.get("_deleted")
        and descends(leaf, claim_rev)
        and path(leaf)[1:2] != []
        and path(leaf)[1] not in dropped
        for leaf in leaves
    )


def judge_conflict(leaves: list[Leaf], now: float) -> Verdict:
    """The sweeper's rule for a conflicted token nobody is settling.

    The :func:`preference` branch stays and the other live leaves go, except
    claims made in the last :data:`SETTLE_AGE` seconds (claimants settle those
    themselves). Two or more older live claims are left alone unless a finished
    branch stays: one of them may be an owner at work.
    """
    alive = live(leaves)
    keep = preferred(alive, now)
    if keep is None or len(alive) < 2:
        return Verdict("own", [], current=keep)
    others = [leaf for leaf in alive if leaf is not keep and not _young(leaf, now)]
    if not final(keep) and any(held(leaf, now) for leaf in others):
        return Verdict("skip", current=keep)
    return Verdict("own", [leaf["_rev"] for leaf in others], current=keep)
