"""Progress at a glance: a :class:`StatusReport` per night, from reduce views only.

- :mod:`.report`: what a report holds (the ``status --json`` shape) and its arithmetic.
- :mod:`.gather`: reading it from the views, with a cached overview and, on a
  cluster, a check that the open counts are settled.
- :mod:`.render`: the rich layout ``gridxfer status`` prints.

This package prints nothing; the CLI prints what :mod:`.render` builds.
"""

from GRID_XFER.status.gather import (
    BUCKET,
    CACHE_ID,
    CACHE_VERSION,
    CHANGES_LIMIT,
    SETTLE_TRIES,
    SETTLE_WAIT,
    SHARE,
    VERIFY_MAX,
    WINDOW,
    gather,
    state_counts,
)
from GRID_XFER.status.report import (
    HELD_STATES,
    OPEN_STATES,
    ErrorCode,
    Holder,
    NightStatus,
    StatusReport,
)

__all__ = [
    "BUCKET",
    "CACHE_ID",
    "CACHE_VERSION",
    "CHANGES_LIMIT",
    "HELD_STATES",
    "OPEN_STATES",
    "SETTLE_TRIES",
    "SETTLE_WAIT",
    "SHARE",
    "VERIFY_MAX",
    "WINDOW",
    "ErrorCode",
    "Holder",
    "NightStatus",
    "StatusReport",
    "gather",
    "state_counts",
]
