"""The token pool: create token sets, claim with leases, record outcomes, reap.

Safety rests on one CouchDB guarantee: a PUT carrying ``_rev`` succeeds only if
nobody changed the document since that revision (docs/tokens.md). :class:`Pool`
is put together from one mixin per concern:

- :mod:`.base`: settings, the database and clock, the reads every part uses.
- :mod:`.claim`: claiming a token under a lease (a :class:`GRID_XFER.lease.Lease`).
- :mod:`.create`: creating a night's tokens, and catching up on a re-run.
- :mod:`.reap`: upkeep: lost leases, conflicted tokens, resets and deletes.
"""

from GRID_XFER.lease import Lease
from GRID_XFER.pool.base import BATCH, PoolBase, PoolSettings, current_tokens
from GRID_XFER.pool.claim import CONFIRM_SECONDS, Claiming
from GRID_XFER.pool.create import CreateReport, Creating
from GRID_XFER.pool.reap import Maintenance


class Pool(Claiming, Creating, Maintenance):
    """A database's tokens: claim one under a lease, create a night's, keep them in order."""


__all__ = [
    "BATCH",
    "CONFIRM_SECONDS",
    "Claiming",
    "CreateReport",
    "Creating",
    "Lease",
    "Maintenance",
    "Pool",
    "PoolBase",
    "PoolSettings",
    "current_tokens",
]
