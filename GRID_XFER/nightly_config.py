"""The nightly service's settings (``nightly:`` in the config file): streams, alerts, logs.

Kept apart from :mod:`GRID_XFER.config` so each stays readable; validated with it,
so a typo in a stream fails before the service starts, with the key named.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from GRID_XFER.errors import InvalidInput
from GRID_XFER.urls import PlainURL


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ReadyConfig(_Section):
    """When an exposure is complete enough to become a token."""

    # Its manifest exists and no file in it (nor the directory) changed for this long...
    quiet_seconds: float = Field(60.0, ge=0)
    # ...or, when set, once this file exists in it (``{exposure}`` is replaced).
    marker: str | None = None


class StreamConfig(_Section):
    """One flow of nights: where they come from, where they go, when each is due."""

    name: str
    source: PlainURL
    destination: PlainURL
    template: Path | None = None
    # The night is the date in the observatory's time zone, changing at the rollover
    # hour: with 12, everything from noon to noon belongs to the evening's date.
    timezone: str = "UTC"
    rollover_hour: int = Field(12, ge=0, le=23)
    # The token set's name (strftime); streams sharing a database need different ones.
    night_format: str = "%Y%m%d"
    # The night's directory under ``source`` (strftime).
    directory_format: str = "%Y%m%d"
    ready: ReadyConfig = ReadyConfig()
    # Besides tonight, look for new and late files in the K nights before.
    catch_up_nights: int = Field(2, ge=0, le=60)
    # A night not finished this long after it ends (the next rollover) is overdue.
    deadline_hours: float = Field(12.0, ge=0)
    # Tape settings for this stream's workers (None: the config's ``staging``).
    tape_destination: bool | None = None
    staging_check: bool | None = None
    # Workers: at least min while work remains, at most max, one per tokens_per_worker.
    backend: Literal["local", "slurm"] = "local"
    min_workers: int = Field(1, ge=0)
    max_workers: int = Field(4, ge=1)
    tokens_per_worker: int = Field(20, ge=1)
    time_limit: str = "4h"
    partition: str | None = None
    account: str | None = None
    workdir: Path | None = None

    @model_validator(mode="after")
    def _workers(self) -> StreamConfig:
        if self.min_workers > self.max_workers:
            raise ValueError("min_workers is more than max_workers")
        # A night stays in the window catch_up_nights days after it ends: its report
        # and its deadline alert must come before it leaves.
        if self.deadline_hours >= 24 * self.catch_up_nights:
            raise ValueError(
                f"deadline_hours ({self.deadline_hours:g}) must be less than 24 x "
                f"catch_up_nights ({self.catch_up_nights}): a night leaves the window "
                "before its deadline"
            )
        return self

    @field_validator("time_limit")
    @classmethod
    def _time_limit(cls, v: str) -> str:
        s = v.strip().lower()
        if not (
            re.fullmatch(r"\d+(\.\d+)?\s*[smhd]?", s) or re.fullmatch(r"(\d+-)?\d+(:\d+){1,2}", s)
        ) or not any(c in "123456789" for c in s):
            raise ValueError(f"invalid duration {v!r} (e.g. 3600, 90m, 4h, 04:00:00, 1-00:00:00)")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", v):
            raise ValueError("must be 1-64 of A-Z a-z 0-9 _ . - (starting with a letter or digit)")
        return v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (e.g. UTC, Europe/Amsterdam)") from None
        return v

    @field_validator("night_format", "directory_format")
    @classmethod
    def _format(cls, v: str) -> str:
        sample = dt.date(2026, 12, 1).strftime(v)
        if sample == v or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", sample):
            raise ValueError("must be a strftime pattern with a date giving a plain name")
        return v


class SMTPConfig(_Section):
    """Mail alerts. The password comes from GRIDXFER_SMTP_PASSWORD or a 0600 file."""

    host: str
    port: int = Field(587, ge=1, le=65535)
    starttls: bool = True
    user: str | None = None
    password_file: Path | None = None
    sender: str = "gridxfer@localhost"
    to: list[str]
    timeout: float = Field(30.0, gt=0)
    # The CA that signed the server's certificate, where it is not the system's.
    ca_file: Path | None = None


class WebhookConfig(_Section):
    """Chat alerts: a JSON POST that Mattermost and Slack accept. The URL holds the
    hook's secret, so it comes from GRIDXFER_WEBHOOK_URL or a 0600 file, never here."""

    url_file: Path | None = None
    timeout: float = Field(15.0, gt=0)
    ca_file: Path | None = None


class AlertsConfig(_Section):
    smtp: SMTPConfig | None = None
    webhook: WebhookConfig | None = None
    # No token finished for this long while work remains: an alert.
    stall_minutes: float = Field(60.0, gt=0)
    # An alert still true is repeated after this long; at most this many per hour.
    repeat_hours: float = Field(24.0, gt=0)
    max_per_hour: int = Field(20, ge=1)
    # Sample messages per error code in an alert and in the morning report.
    samples: int = Field(3, ge=1, le=20)


class NightlyConfig(_Section):
    """`gridxfer nightly`: the unattended service (docs/operations.md)."""

    streams: list[StreamConfig] = []
    interval: float = Field(60.0, gt=0)
    # One active service per database: the leader's lease, renewed every cycle.
    leader_lease: float = Field(300.0, gt=0)
    # Present: the service finishes its step, stops its workers and exits 0.
    kill_file: Path | None = None
    log_file: Path | None = None
    log_json: bool = False
    log_max_bytes: int = Field(10_000_000, ge=10_000)
    log_backups: int = Field(5, ge=0)
    # Exposures whose directory did not change are not rescanned, except this often.
    rescan_seconds: float = Field(3600.0, gt=0)
    alerts: AlertsConfig = AlertsConfig()

    @field_validator("streams")
    @classmethod
    def _streams(cls, v: list[StreamConfig]) -> list[StreamConfig]:
        names = [s.name for s in v]
        if len(set(names)) != len(names):
            raise ValueError("two streams have the same name")
        formats = [s.night_format for s in v]
        if len(set(formats)) != len(formats):
            raise ValueError(
                "two streams have the same night_format: their nights would share token sets"
            )
        return v

    def stream(self, name: str) -> StreamConfig:
        for s in self.streams:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.streams) or "none configured"
        raise InvalidInput(f"unknown stream {name!r} (nightly.streams: {known})")
