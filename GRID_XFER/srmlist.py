"""GRID_LRT users' srm lists, and the srm/gsiftp/https/root forms of LOFAR LTA URLs.

An LTA export or a GRID_LRT ``srm.txt`` holds one file per line, sometimes with
more fields (``SURL size``), and SURLs with a doubled slash before the path
(``srm://host:8443//pnfs/...``). GRID_LRT takes the first ``srm://`` field of a
line, strips that slash and drops duplicates; so does :func:`read_list`. The one
canonical SURL keeps a single slash (``srm://host:8443/pnfs/...``), the form the
LTA's stager and gfal2's srm plugin both take; the root form of the same file is
``root://host:1094//pnfs/...`` (XRootD's absolute path).

The site table (:data:`SITES`) was taken from GRID_LRT's own srmlist
(github.com/apmechev/GRID_LRT, GRID_LRT/Staging/srmlist.py: srm, gsiftp and the
``SRMFifoGet.py`` download service of SURFsara, Jülich and Poznań) and SURFsara's
user documentation (github.com/sara-nl/griddocs, storage_clients/webdav.rst: the
dCache WebDAV doors, port 2882 for a grid proxy; grid_storage.rst: the xroot door
``xrootd.grid.surfsara.nl:1094``). Jülich and Poznań publish no WebDAV or xroot
door there, so those forms are absent for them and asking for one is an error.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from GRID_XFER.errors import InvalidInput
from GRID_XFER.urls import check_plain_url, redact

log = logging.getLogger(__name__)

FORMS = ("srm", "gsiftp", "https", "root", "download")
_DOUBLED = re.compile(r"^(srm://[^/]+)//+")
_SFN = "/srm/managerv2?SFN="


@dataclass(frozen=True)
class Site:
    """One LTA site: the URL prefix (scheme://host:port) of each form it offers.

    The path (``/pnfs/...`` or ``/lofar/...``) is the same in every form; the
    root form writes it after a second slash, the download form passes the whole
    SURL as its ``surl`` parameter.
    """

    name: str
    prefixes: dict[str, str]

    def hosts(self) -> dict[str, str]:
        """host -> form, for recognising a URL of this site."""
        return {urlsplit(p).hostname or "": form for form, p in self.prefixes.items()}


SITES: tuple[Site, ...] = (
    Site(
        "SURFsara",
        {
            "srm": "srm://srm.grid.sara.nl:8443",
            "gsiftp": "gsiftp://gridftp.grid.sara.nl:2811",
            "https": "https://webdav.grid.surfsara.nl:2882",
            "root": "root://xrootd.grid.surfsara.nl:1094",
            "download": "https://lofar-download.grid.sara.nl/lofigrid/SRMFifoGet.py",
        },
    ),
    Site(
        "Jülich",
        {
            "srm": "srm://lofar-srm.fz-juelich.de:8443",
            "gsiftp": "gsiftp://lofar-gridftp.fz-juelich.de:2811",
            "download": "https://lofar-download.fz-juelich.de/webserver-lofar/SRMFifoGet.py",
        },
    ),
    Site(
        "Poznań",
        {
            "srm": "srm://lta-head.lofar.psnc.pl:8443",
            "gsiftp": "gsiftp://gridftp.lofar.psnc.pl:2811",
            "download": "https://lta-download.lofar.psnc.pl/lofigrid/SRMFifoGet.py",
        },
    ),
)


def normalise(url: str) -> str:
    """The canonical SURL: one slash before the path, no ``/srm/managerv2?SFN=``."""
    if url.startswith("srm://"):
        if _SFN in url:
            head, _, path = url.partition(_SFN)
            url = head + "/" + path.lstrip("/")
        url = _DOUBLED.sub(r"\1/", url)
    return url


def one_url(url: str) -> str:
    """A single URL given instead of a list: checked by the URL policy, then canonical."""
    return normalise(check_plain_url(url, "URL"))


def _site(url: str) -> tuple[Site, str]:
    host = urlsplit(url).hostname or ""
    for site in SITES:
        if (form := site.hosts().get(host)) is not None:
            return site, form
    raise InvalidInput(f"{redact(url)}: {host or 'no host'} is no known LOFAR LTA site")


def _path(url: str, form: str) -> str:
    """The site path (``/pnfs/...``) of a URL in ``form``."""
    if form == "download":
        surl = parse_qs(urlsplit(url).query).get("surl", [""])[0]
        if not surl.startswith("srm://"):
            raise InvalidInput(f"{redact(url)}: no surl=srm://... parameter")
        return _path(normalise(surl), "srm")
    path = urlsplit(normalise(url)).path
    return "/" + path.lstrip("/")


def convert(url: str, to: str) -> str:
    """The same file of an LTA site in form ``to``; InvalidInput naming the host when
    the site is unknown or does not offer that form."""
    if to not in FORMS:
        raise InvalidInput(f"unknown URL form {to!r} (one of {', '.join(FORMS)})")
    site, form = _site(url)
    path = _path(url, form)
    prefix = site.prefixes.get(to)
    if prefix is None:
        offered = ", ".join(site.prefixes)
        raise InvalidInput(f"{site.name} LTA site offers no {to} form ({offered})")
    if to == "root":
        return f"{prefix}/{path}"
    if to == "download":
        return f"{prefix}?surl={site.prefixes['srm']}{path}"
    return prefix + path


def line_url(line: str) -> str | None:
    """The URL a list line holds as GRID_LRT reads it; None for a line to skip.

    Blank and ``#`` lines hold none. Otherwise the first ``srm://`` field, or the
    line itself when it is a single field (a URL of any scheme). A line of
    several fields without an ``srm://`` one holds none either.
    """
    fields = line.split()
    if not fields or fields[0].startswith("#"):
        return None
    srm = next((f for f in fields if f.startswith("srm://")), None)
    if srm is not None:
        return normalise(srm)
    return fields[0] if len(fields) == 1 else ""


def read_list(path: Path) -> list[str]:
    """The URLs of an srm list, in order, duplicates dropped (one warning)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read URL list {path}: {exc}") from None
    urls: dict[str, int] = {}
    duplicates: list[tuple[int, str]] = []
    skipped: list[int] = []
    for n, raw in enumerate(lines, 1):
        url = line_url(raw)
        if url is None:
            continue
        if not url:
            skipped.append(n)
            continue
        url = check_plain_url(url, f"{path} line {n}: URL")
        if url in urls:
            duplicates.append((n, url))
        else:
            urls[url] = n
    if skipped:
        log.warning(
            "%s: %d line(s) without an srm:// URL skipped (first: line %d)",
            path,
            len(skipped),
            skipped[0],
        )
    if duplicates:
        n, url = duplicates[0]
        log.warning(
            "%s: %d duplicate URL(s) dropped (first: line %d, %s, as on line %d)",
            path,
            len(duplicates),
            n,
            redact(url),
            urls[url],
        )
    if not urls:
        raise InvalidInput(f"{path}: no URLs")
    return list(urls)
