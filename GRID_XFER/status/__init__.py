"""Progress at a glance: a :class:`StatusReport` per night, from reduce views only.

- :mod:`.report`: what a report holds (the ``status --json`` shape) and its arithmetic.
- :mod:`.gather`: reading it from the views, with a cached overview and, on a
  cluster, a check that the open counts are settled.
- :mod:`.render`: the rich layout ``gridxfer status`` prints.
- :mod:`.prometheus`: a report as Prometheus metrics (``status --prometheus``,
  ``/metrics`` of ``status --serve``).
- :mod:`.reports`: the nightly service's morning reports, checked before shown.

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
from GRID_XFER.status.prometheus import CONTENT_TYPE, escape_label, prometheus_text
from GRID_XFER.status.report import (
    HELD_STATES,
    OPEN_STATES,
    ErrorCode,
    Holder,
    NightStatus,
    StatusReport,
)
from GRID_XFER.status.reports import (
    REPORT_PREFIX,
    REPORT_TYPE,
    night_report,
    report_problem,
    report_text,
    reports,
)

__all__ = [
    "BUCKET",
    "CACHE_ID",
    "CACHE_VERSION",
    "CHANGES_LIMIT",
    "CONTENT_TYPE",
    "HELD_STATES",
    "OPEN_STATES",
    "REPORT_PREFIX",
    "REPORT_TYPE",
    "SETTLE_TRIES",
    "SETTLE_WAIT",
    "SHARE",
    "VERIFY_MAX",
    "WINDOW",
    "ErrorCode",
    "Holder",
    "NightStatus",
    "StatusReport",
    "escape_label",
    "gather",
    "night_report",
    "prometheus_text",
    "report_problem",
    "report_text",
    "reports",
    "state_counts",
]
