"""Making a night's tokens: choosing source, destination and template, then scanning.

The order of precedence (command line, then template, then config) lives here
and nowhere else, so `tokens create` and the nightly service create the same
tokens for the same night. Re-running catches up: only what is new is written.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from GRID_XFER import scan
from GRID_XFER.config import Config
from GRID_XFER.errors import ConfigError, InvalidInput
from GRID_XFER.pool import CreateReport, Pool
from GRID_XFER.token import ExposureSpec, parse_spec
from GRID_XFER.urls import check_plain_url, join

log = logging.getLogger(__name__)


@dataclass
class CreateRequest:
    """One `tokens create`; ``None`` falls back to the template, then the config."""

    night: str
    source: str | None = None
    destination: str | None = None
    template: Path | None = None
    from_file: Path | None = None
    surls: Path | None = None
    group: int | None = None
    manifest: str | None = None


@dataclass
class CreateOutcome:
    night: str
    report: CreateReport
    manifest_problems: dict[str, str] = field(default_factory=dict)
    source_problems: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "night": self.night,
            **self.report.as_dict(),
            "manifest_problems": self.manifest_problems,
            "source_problems": self.source_problems,
        }


class _NamesLoader(yaml.SafeLoader):
    """YAML without implicit numbers: ``- 00012345`` stays that exposure, not octal 5349."""


_NamesLoader.yaml_implicit_resolvers = {
    first: [
        (tag, rx)
        for tag, rx in resolvers
        if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_text(path: Path) -> str:
    """A user's input file as text: one line saying why not, rather than a traceback."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None


def load_specs(path: Path) -> list[ExposureSpec]:
    """Exposures from a YAML or JSON list (or a mapping with ``exposures``)."""
    text = read_text(path)
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.load(text, _NamesLoader)
    except (ValueError, yaml.YAMLError) as exc:
        raise InvalidInput(
            f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}:"
            f" {str(exc).splitlines()[0]}"
        ) from None
    if isinstance(data, dict) and "exposures" in data:
        data = data["exposures"]
    if not isinstance(data, list):
        raise InvalidInput(f"{path}: expected a list of exposures (or a mapping with 'exposures')")
    return [parse_spec(raw, i) for i, raw in enumerate(data)]


def create_tokens(
    config: Config, pool: Pool, req: CreateRequest, storage_factory: Any
) -> CreateOutcome:
    """Create or catch up ``req.night``'s tokens; ``storage_factory()`` is called
    only when the source has to be read (a ``--from`` list needs no gfal2)."""
    if req.template:
        read_text(req.template)  # a file that is no UTF-8 text: exit 6 naming it
    t = scan.load_template(req.template) if req.template else scan.Template()
    source = req.source or t.source or config.source
    destination = req.destination or t.destination or config.destination
    for what, url in (("source", source), ("destination", destination)):
        if url:
            check_plain_url(url, what)
    pool.couch.require_db()
    if req.from_file:
        specs = load_specs(req.from_file)
        report = pool.create(req.night, specs, source=source, destination=destination)
        return CreateOutcome(req.night, report)
    if not destination:
        raise ConfigError(
            "no destination: give --dest, a template `destination` or config `destination`"
        )
    outcome = CreateOutcome(req.night, CreateReport())
    specs = _find_specs(config, req, t, source, destination, storage_factory, outcome)
    outcome.report = pool.create(req.night, apply_template(specs, t))
    return outcome


def apply_template(specs: list[ExposureSpec], t: scan.Template) -> list[ExposureSpec]:
    """The template's retry budget and payload, under what each exposure says itself."""
    if not (t.max_attempts or t.payload):
        return specs
    return [
        s.model_copy(
            update={
                "max_attempts": s.max_attempts or t.max_attempts,
                "payload": {**t.payload, **s.payload},
            }
        )
        for s in specs
    ]


def _find_specs(
    config: Config,
    req: CreateRequest,
    t: scan.Template,
    source: str | None,
    destination: str,
    storage_factory: Any,
    outcome: CreateOutcome,
) -> list[ExposureSpec]:
    """The night's exposures: grouped from a SURL list, or scanned at the source.

    A scan's problems (bad manifests, unreadable sources) go into ``outcome``.
    """
    tc = config.transfer
    surls = req.surls or t.surls
    if surls or t.layout == "surl-list":
        if not surls:
            raise InvalidInput("a surl-list template needs --surls FILE (or `surls:`)")
        return scan.group_surls(
            storage_factory(),
            scan.read_surl_list(surls),
            group=req.group or t.group or tc.group,
            destination=join(destination, req.night),
            threads=tc.scan_threads,
        )
    if not source:
        raise ConfigError(
            "no source: give --source, a template `source` or config "
            "`source` (or --from FILE / --surls FILE)"
        )
    found = scan.scan_night(
        storage_factory(),
        source,
        req.night,
        destination=destination,
        algo=req.manifest or t.manifest or tc.manifest,
        threads=tc.scan_threads,
    )
    outcome.manifest_problems = found.manifest_problems
    outcome.source_problems = found.source_problems
    for name in found.ignored:
        log.warning("ignored %s: not an exposure directory", name)
    return found.specs
