"""Turning what is at the source into token specs: a night directory or a SURL list.

A night is ``<source>/<NIGHT>/<EXPOSURE>/...`` with the exposure's manifest
``checksum-<EXPOSURE>.sha256sum`` (or ``.adler32``) beside its files. The scan
records what it saw (every file at the source and every file the manifest
names, with sizes and expected checksums); the worker checks the source again
before it copies, because files keep arriving during the night. A missing or
unreadable manifest does not stop the scan: the token records the problem and
the worker reports 31 if it is still there when the token runs. A symbolic link
that leaves the exposure directory, dangles or loops is handled the same way: the
walk refuses it (nothing outside the exposure is listed or read), the token names
it, and the worker, walking the source again, fails the token with 34.

Listing is parallel (one thread per exposure, gfal2 releases the GIL), so a
night of a thousand exposures is a few seconds even over root://.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from GRID_XFER import srmlist
from GRID_XFER import token as tk
from GRID_XFER.checksum import manifest_name, normalise_algo, parse_manifest
from GRID_XFER.errors import Code, InvalidInput, InvalidToken, ManifestError, NotFound, StorageError
from GRID_XFER.storage import Stat, Storage
from GRID_XFER.urls import PlainURL, basename, join, redact

log = logging.getLogger(__name__)

DEFAULT_THREADS = 16


@dataclass
class ScanReport:
    specs: list[tk.ExposureSpec] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # entries that are not exposures
    manifest_problems: dict[str, str] = field(default_factory=dict)
    source_problems: dict[str, str] = field(default_factory=dict)  # links not followed


def read_manifest(
    storage: Storage, exposure_url: str, exposure: str, algo: str
) -> tuple[str, dict[str, str], str]:
    """(manifest file name, name -> checksum, sha256 of its bytes); ManifestError (31)
    if absent or unreadable."""
    name = manifest_name(exposure, algo)
    url = join(exposure_url, name)
    try:
        text = storage.read_text(url)
    except StorageError as err:
        if err.code == Code.SOURCE_MISSING:
            raise ManifestError(f"manifest {name} not found in {redact(exposure_url)}") from None
        if err.transient:
            raise
        raise ManifestError(f"manifest {name} unreadable: {err}") from None
    return name, parse_manifest(text, algo, source=name), hashlib.sha256(text.encode()).hexdigest()


def scan_exposure(
    storage: Storage,
    night_url: str,
    exposure: str,
    *,
    algo: str = "sha256",
    destination: str | None = None,
    listing: tuple[dict[str, Stat], dict[str, str]] | None = None,
) -> tk.ExposureSpec:
    """One exposure's spec: files at the source and in its manifest, with sizes and checksums.

    A link the walk refuses becomes an entry with a ``problem`` (and no size: it was
    not followed), so the token says what is wrong and a fixed link changes the work.
    ``listing`` is a walk of the exposure just made (files, refused), not made again.
    """
    algo = normalise_algo(algo)
    url = join(night_url, exposure)
    refused: dict[str, str] = {}
    if listing is not None:
        present, refused = listing
    else:
        present = storage.walk(url, refused=refused)
    manifest: dict[str, Any] = {"name": manifest_name(exposure, algo), "algo": algo}
    expected: dict[str, str] = {}
    if manifest["name"] in refused:  # never read through a link that leaves the exposure
        manifest["error"] = f"manifest {refused[manifest['name']]}"
    else:
        try:
            _, expected, _ = read_manifest(storage, url, exposure, algo)
        except ManifestError as err:
            manifest["error"] = str(err)
    files: list[dict[str, Any]] = []
    for name in sorted(set(present) | set(expected) | set(refused)):
        if name == manifest["name"] and name not in refused:
            continue
        entry: dict[str, Any] = {"name": name}
        if name in present:
            entry["size"] = present[name].size
        if name in expected:
            entry["checksums"] = {algo: expected[name]}
        if name in refused:
            entry["problem"] = refused[name]
        files.append(entry)
    if manifest["name"] in present:
        files.append(
            {"name": manifest["name"], "size": present[manifest["name"]].size, "role": "manifest"}
        )
    return tk.ExposureSpec(
        exposure=exposure,
        files=files,
        source=url,
        destination=join(destination, exposure) if destination else None,
        manifest=manifest,
    )


def scan_night(
    storage: Storage,
    source: str,
    night: str,
    *,
    destination: str | None = None,
    algo: str = "sha256",
    threads: int = DEFAULT_THREADS,
    progress: Callable[[int, int], None] | None = None,
) -> ScanReport:
    """Specs for every exposure directory of ``<source>/<night>``, listed in parallel."""
    tk.check_id_part(night, "night")
    night_url = join(source, night)
    try:
        entries = storage.scandir(night_url)
    except StorageError as err:
        if err.code == Code.SOURCE_MISSING:
            raise NotFound(f"night {night}: {redact(night_url)} does not exist") from None
        raise
    report = ScanReport()
    exposures = []
    for name, st in entries:
        if not st.is_dir:
            report.ignored.append(name)
            continue
        try:
            tk.check_id_part(name, "exposure")
        except InvalidToken:
            report.ignored.append(name)
            log.warning("ignoring %s: not a valid exposure name", name)
            continue
        exposures.append(name)
    night_dest = join(destination, night) if destination else None
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, threads)) as ex:
        futures = [
            ex.submit(scan_exposure, storage, night_url, e, algo=algo, destination=night_dest)
            for e in exposures
        ]
        for fut in futures:
            spec = fut.result()
            report.specs.append(spec)
            if spec.manifest and spec.manifest.get("error"):
                report.manifest_problems[spec.exposure] = spec.manifest["error"]
            problems = [p for f in spec.files if (p := (f.model_extra or {}).get("problem"))]
            if problems:
                more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
                report.source_problems[spec.exposure] = "; ".join(problems[:3]) + more
            done += 1
            if progress:
                progress(done, len(exposures))
    return report


# ------------------------------------------------------------------ SURL lists


def read_surl_list(path: Path) -> list[str]:
    """The URLs of a list file as GRID_LRT reads its srm lists (:mod:`GRID_XFER.srmlist`)."""
    return srmlist.read_list(path)


def _surl_entry(storage: Storage, url: str) -> dict[str, Any]:
    st = storage.stat(url)
    return {
        "name": basename(url),
        "url": url,
        "size": st.size,
        "checksums": {"adler32": storage.checksum(url, "ADLER32")},
    }


def group_surls(
    storage: Storage,
    urls: Iterable[str],
    *,
    group: int = 10,
    destination: str | None = None,
    prefix: str = "chunk",
    threads: int = DEFAULT_THREADS,
) -> list[tk.ExposureSpec]:
    """Specs of ``group`` files each, with sizes and ADLER32 from the storage."""
    urls = list(urls)
    if group < 1:
        raise InvalidInput("group must be at least 1")
    names = [basename(u) for u in urls]
    if len(set(names)) != len(names):
        raise InvalidInput("two URLs in the list end in the same file name")
    with ThreadPoolExecutor(max_workers=max(1, threads)) as ex:
        entries = list(ex.map(lambda u: _surl_entry(storage, u), urls))
    specs = []
    for i in range(0, len(entries), group):
        chunk = entries[i : i + group]
        # The id names the chunk's content, not only its place: a different or
        # edited list makes new tokens instead of rewriting pending ones.
        digest = hashlib.sha256("\n".join(e["url"] for e in chunk).encode()).hexdigest()[:8]
        specs.append(
            tk.ExposureSpec(
                exposure=f"{prefix}{i // group:05d}-{digest}", files=chunk, destination=destination
            )
        )
    return specs


# ------------------------------------------------------------------ templates


class Template(BaseModel):
    """A token-set template (tokens/*.yaml): defaults for ``tokens create``."""

    model_config = ConfigDict(extra="forbid")

    layout: Literal["night", "surl-list"] = "night"
    source: PlainURL | None = None
    destination: PlainURL | None = None
    manifest: Literal["sha256", "adler32"] | None = None
    surls: Path | None = None
    group: int | None = Field(None, ge=1)
    max_attempts: int | None = Field(None, ge=1)
    payload: dict[str, Any] = Field(default_factory=dict)
    description: str = ""


def load_template(path: Path) -> Template:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise InvalidInput(f"cannot read template {path}: {exc.strerror}") from None
    except yaml.YAMLError:
        raise InvalidInput(f"template {path} is not valid YAML") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"template {path}: top level must be a mapping")
    try:
        t = Template.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        msg = (
            "unknown key"
            if err["type"] == "extra_forbidden"
            else err["msg"].removeprefix("Value error, ")
        )
        raise InvalidInput(f"template {path}: {key}: {msg}") from None
    if t.surls is not None and not t.surls.is_absolute():
        t.surls = path.parent / t.surls
    return t
