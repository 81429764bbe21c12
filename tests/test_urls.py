"""The URL policy (GRID_XFER/urls.py): credentials are refused wherever a URL is accepted,
and redacted wherever text is shown (docs/configuration.md#urls-and-credentials).

Property tests build random URLs of the kinds the project meets (root://, davs://,
s3://, file://, http(s)://) with a random secret in each place a credential can hide,
and check that :func:`redact` never leaves it and the policy never accepts it; the
command-line tests check that every way in (config, --from, templates, URL lists,
the stager) refuses such URLs, stores nothing, and never prints the secret.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from GRID_XFER.config import load_config
from GRID_XFER.errors import ConfigError, InvalidInput
from GRID_XFER.urls import (
    basename,
    check_plain_url,
    http_url_problem,
    join,
    parent,
    public_url,
    redact,
    url_problem,
)
from tests.conftest import Database, gridxfer
from tests.nightgen import write_exposure

NIGHT = "20261129"
SECRET = "S3cr3tT0ken"

# ----------------------------------------------------------------------------- strategies

UNRESERVED = string.ascii_letters + string.digits + "-._~"
PCT = st.sampled_from(["%2F", "%40", "%3A", "%3D", "%26", "%3F", "%23", "%25", "%2B", "%20"])
SCHEMES = ["root", "xroot", "davs", "dav", "https", "http", "s3", "s3s", "gsiftp", "srm", "file"]
SECRET_NAMES = [
    "access_token",
    "authz",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
    "password",
    "passwd",
    "pass",
    "pwd",
    "token",
    "bearer_token",
    "sig",
    "Signature",
    "api_key",
    "key",
    "secret",
    "client_secret",
    "refresh_token",
    "id_token",
    "session",
    "macaroon",
    "scitoken",
    "jwt",
    "X-Goog-Signature",
    "xrd.gsiusrpxy_cert",
]


def _chars(alphabet: str, min_size: int = 0, max_size: int = 12) -> st.SearchStrategy[str]:
    return st.lists(
        st.one_of(st.sampled_from(alphabet), PCT), min_size=min_size, max_size=max_size
    ).map("".join)


# The secret itself: unreserved characters and percent-escapes, as a real token or password is sent.
secrets = _chars(UNRESERVED, min_size=8, max_size=40)
hosts = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,6}){0,2}", fullmatch=True)
ports = st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}"))
segments = st.lists(_chars(UNRESERVED, 1, 10), max_size=4).map(lambda s: "/".join(s))
benign_names = st.from_regex(r"[a-z][a-z0-9._]{0,8}", fullmatch=True).filter(
    lambda n: (
        not any(
            w in n
            for w in (
                "tok",
                "pass",
                "pw",
                "sec",
                "aut",
                "sig",
                "cred",
                "key",
                "sess",
                "bear",
                "cert",
                "prox",
                "mac",
                "jwt",
            )
        )
    )
)
# Query and fragment values may hold a raw "/", ":", "@" and "?" (RFC 3986).
benign_params = st.lists(st.tuples(benign_names, _chars(UNRESERVED + "/:@?")), max_size=3)


@st.composite
def secret_names(draw: st.DrawFn) -> str:
    """A secret-suggesting parameter name, in any case, sometimes with a letter percent-encoded."""
    name = "".join(
        c.upper() if draw(st.booleans()) else c.lower() for c in draw(st.sampled_from(SECRET_NAMES))
    )
    if draw(st.booleans()):
        i = draw(st.integers(0, len(name) - 1))
        name = f"{name[:i]}%{ord(name[i]):02X}{name[i + 1 :]}"
    return name


def _query(params: list[tuple[str, str]]) -> str:
    return "&".join(f"{k}={v}" for k, v in params)


@st.composite
def secret_urls(draw: st.DrawFn, schemes: list[str] = SCHEMES) -> tuple[str, str]:
    """(url, secret): a random URL with ``secret`` in one place a credential can hide."""
    scheme = draw(st.sampled_from(schemes))
    host, port, path = draw(hosts), draw(ports), draw(segments)
    secret = draw(secrets)
    params = draw(benign_params)
    where = draw(
        st.sampled_from(["password", "user", "query", "query-in-value", "fragment", "path-param"])
    )
    userinfo, query, fragment = "", _query(params), ""
    if where == "password":
        user = draw(_chars(UNRESERVED, 1, 8))
        userinfo = f"{user}:{secret}@"
    elif where == "user":
        userinfo = f"{secret}@"
    elif where in ("query", "query-in-value"):
        pair = f"{draw(secret_names())}={secret}"
        if where == "query-in-value":  # "?a=b?token=..." : a second "?" inside a value
            pair = f"{draw(benign_names)}={draw(_chars(UNRESERVED))}?{pair}"
        at = draw(st.integers(0, len(params)))
        parts = [f"{k}={v}" for k, v in params]
        query = "&".join(parts[:at] + [pair] + parts[at:])
    elif where == "fragment":
        fragment = f"{draw(secret_names())}={secret}"
    else:
        path = f"{path};{draw(secret_names())}={secret}"
    sep = "//" if scheme in ("root", "xroot") else "/"
    if scheme == "file":
        url = f"file://{userinfo}/{path}" if userinfo else f"file:///{path}"
    else:
        url = f"{scheme}://{userinfo}{host}{port}{sep}{path}"
    if query:
        url += f"?{query}"
    if fragment:
        url += f"#{fragment}"
    assume(url.count(secret) == 1)  # the secret shows nowhere else by chance
    return url, secret


@st.composite
def plain_urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(SCHEMES))
    sep = "//" if scheme in ("root", "xroot") else "/"
    url = f"{scheme}://{draw(hosts)}{draw(ports)}{sep}{draw(segments)}"
    query = _query(draw(benign_params))
    return f"{url}?{query}" if query else url


# ----------------------------------------------------------------------------- properties


@given(secret_urls())
@example(("root://host//data/a.MS?oss.asize=1?authz=S3cr3tT0ken", SECRET))
@example(("davs://host/x#access_token=S3cr3tT0ken", SECRET))
@example(("https://host/x?acc%65ss_t%6Fken=S3cr3tT0ken", SECRET))
@example(("http://127.0.0.1:5984/;password=S3cr3tT0ken", SECRET))
@example(("https://al;ce:S3cr3tT0ken@host/x", SECRET))
def test_redact_never_leaves_the_secret(case: tuple[str, str]) -> None:
    url, secret = case
    assert secret not in redact(url)
    assert secret not in redact(f"copy {url} -> file:///x failed: timeout [{url}]")
    assert secret not in redact(f"url_{url}")  # glued to other text


@given(secret_urls())
def test_the_policy_never_accepts_a_url_carrying_a_secret_and_never_shows_it(
    case: tuple[str, str],
) -> None:
    url, secret = case
    assert url_problem(url) is not None
    with pytest.raises(InvalidInput) as info:
        check_plain_url(url, "source")
    assert secret not in str(info.value) and "\n" not in str(info.value)


@settings(deadline=None)  # writes a file per example; a busy machine must not fail it
@given(secret_urls(schemes=["http", "https"]))
@example(("http://127.0.0.1:5984/;password=S3cr3tT0ken", SECRET))
@example(("https://db.example.org/couchdb#password=S3cr3tT0ken", SECRET))
def test_couchdb_url_policy_never_accepts_a_secret_and_never_prints_it(
    case: tuple[str, str],
) -> None:
    url, secret = case
    assert http_url_problem(url, "couchdb.password_file") is not None
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "gridxfer.yaml"
        cfg.write_text(yaml.safe_dump({"couchdb": {"url": url}}))
        with pytest.raises(ConfigError) as info:
            load_config(cfg, env={})
        assert secret not in str(info.value)
        with pytest.raises(ConfigError) as info:
            load_config(cfg, env={"GRIDXFER_COUCHDB_URL": url})
        assert secret not in str(info.value)


@given(plain_urls())
def test_plain_urls_are_accepted_and_shown_unchanged(url: str) -> None:
    assert url_problem(url) is None
    assert check_plain_url(url, "source") == url
    assert redact(url) == url


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_redact_is_idempotent_on_any_text(text: str) -> None:
    once = redact(text)
    assert redact(once) == once


@pytest.mark.parametrize(
    "url, expected",
    [
        ("root://alice:pw@host//data", "root://***@host//data"),
        ("davs://host/x?access_token=abc&x=1", "davs://host/x?access_token=***&x=1"),
        ("https://host/x?a=b?authz=abc", "https://host/x?a=b?authz=***"),
        ("https://host/x#id_token=abc", "https://host/x#id_token=***"),
        ("http://h:5984/;password=abc/more", "http://h:5984/;password=***"),
        (
            "s3://host/b/k?X-Amz-Credential=AK%2F1&X-Amz-Signature=f00",
            "s3://host/b/k?X-Amz-Credential=***&X-Amz-Signature=***",
        ),
        ("Authorization: Bearer abc.def", "Authorization: Bearer ***"),
        ("root://host//a?token=", "root://host//a?token="),
    ],
)
def test_redact_examples(url: str, expected: str) -> None:
    assert redact(url) == expected


@pytest.mark.parametrize(
    "url, problem",
    [
        ("/data/night", "scheme"),
        ("root://host//a\nb", "control characters"),
        ("root://***@host//a", "credentials"),
        ("", "must be a URL"),
    ],
)
def test_the_policy_refuses_what_is_not_a_plain_url(url: str, problem: str) -> None:
    assert problem in (url_problem(url) or "")


def test_join_keeps_a_base_ending_in_a_slash() -> None:
    assert join("root://h//", "n", "e") == "root://h//n/e"
    assert join("file:///data", "/n/", "e") == "file:///data/n/e"
    assert join("file:///data") == "file:///data"


@pytest.mark.parametrize(
    ("url", "up", "name"),
    [
        ("root://h//night/e/f.fits", "root://h//night/e", "f.fits"),
        ("root://h//night/e/", "root://h//night", "e"),  # a trailing slash is no level
        ("file:///data/n/out.part", "file:///data/n", "out.part"),
        ("davs://h/a b/ü.fits", "davs://h/a b", "ü.fits"),
    ],
)
def test_parent_and_basename(url: str, up: str, name: str) -> None:
    """The directory a streamed copy creates when its parent is missing, and a file's name."""
    assert parent(url) == up
    assert basename(url) == name
    assert join(parent(url), basename(url)) == url.rstrip("/")


@pytest.mark.parametrize(
    "base, parts, expected",
    [
        ("root://h//data", ("n",), "root://h//data/n"),
        ("root://h//data/", ("n",), "root://h//data/n"),  # no doubled slash
        ("root://h:1094//data", ("/n/", "/e/"), "root://h:1094//data/n/e"),
        ("root://h//", ("n",), "root://h//n"),  # root:// keeps its absolute path
        ("file:///", ("a", "b"), "file:///a/b"),
        ("davs://h/x", ("a/b", "c.fits"), "davs://h/x/a/b/c.fits"),
        ("davs://h/x/", ("", "/", "c"), "davs://h/x/c"),  # empty parts add nothing
        ("root://h//data", ("", "/"), "root://h//data"),
        ("s3://h/bucket", ("night with space", "f.fits"), "s3://h/bucket/night with space/f.fits"),
    ],
)
def test_join(base: str, parts: tuple[str, ...], expected: str) -> None:
    assert join(base, *parts) == expected


@pytest.mark.parametrize(
    "url, name, up",
    [
        ("root://h//a/b", "b", "root://h//a"),
        ("root://h//a/b/", "b", "root://h//a"),  # a trailing slash names the same directory
        ("root://h//a/b//", "b", "root://h//a"),
        ("root://h:1094//data/night/e1/x.fits", "x.fits", "root://h:1094//data/night/e1"),
        ("file:///data/a b/c.fits", "c.fits", "file:///data/a b"),
        ("davs://h/x/y.fits", "y.fits", "davs://h/x"),
    ],
)
def test_basename_and_parent(url: str, name: str, up: str) -> None:
    assert basename(url) == name and parent(url) == up
    assert join(parent(url), basename(url)) == url.rstrip("/")


@pytest.mark.parametrize("url", ["root://h//data/a.MS?oss.asize=1", "davs://h/x/a.MS#frag"])
def test_basename_is_the_last_path_element_without_query_or_fragment(url: str) -> None:
    assert basename(url) == "a.MS"


@st.composite
def based_names(draw: st.DrawFn) -> tuple[str, str]:
    """(base, name): a URL with at least one path element below the root, and a file name."""
    scheme = draw(st.sampled_from(SCHEMES))
    sep = "//" if scheme in ("root", "xroot") else "/"
    host = "" if scheme == "file" else draw(hosts) + draw(ports)
    path = draw(st.lists(_chars(UNRESERVED, 1, 10), min_size=1, max_size=4).map("/".join))
    slash = draw(st.sampled_from(["", "/"]))
    name = draw(_chars(UNRESERVED, 1, 12))
    return f"{scheme}://{host}{sep}{path}{slash}", name


@given(based_names())
def test_join_then_basename_and_parent_give_back_the_parts(case: tuple[str, str]) -> None:
    base, name = case
    url = join(base, name)
    assert url == f"{base.rstrip('/')}/{name}"
    assert basename(url) == name and parent(url) == base.rstrip("/")


@pytest.mark.parametrize(
    "url, expected",
    [
        ("root://alice:pw@host:1094//data/a?authz=x#frag", "root://host:1094//data/a"),
        ("https://u@h/x?token=1", "https://h/x"),
        ("davs://H.Example.org/x/", "davs://h.example.org/x/"),  # host case folds, slash stays
        ("file:///data/x", "file:///data/x"),
        ("file://u:pw@/data/x", "file:///data/x"),
        ("root://h//a//b", "root://h//a//b"),
        ("s3://h/b/k?X-Amz-Signature=1&X-Amz-Credential=2", "s3://h/b/k"),
    ],
)
def test_public_url_drops_userinfo_query_and_fragment(url: str, expected: str) -> None:
    assert public_url(url) == expected


@given(secret_urls())
def test_public_url_shows_no_userinfo_query_or_fragment(case: tuple[str, str]) -> None:
    url, secret = case
    shown = public_url(url)
    assert "@" not in shown and "?" not in shown and "#" not in shown
    assert ";" not in shown  # path parameters are dropped too


@given(plain_urls())
def test_public_url_of_a_plain_url_is_the_url_without_its_query(url: str) -> None:
    assert public_url(url) == url.split("?")[0]


@pytest.mark.parametrize(
    "url, expected",
    [
        # urlsplit().hostname drops an IPv6 literal's brackets: http://::1:5984/db
        ("http://[::1]:5984/db", "http://[::1]:5984/db"),
        # a path parameter is part of the path: the password is shown
        ("http://h:5984/;password=S3cr3t/db", "http://h:5984/db"),
    ],
)
def test_public_url_keeps_ipv6_brackets_and_drops_path_parameters(url: str, expected: str) -> None:
    assert public_url(url) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        # userinfo: a user alone, a password alone, a password with a raw "@"
        ("root://alice@h//a", "root://***@h//a"),
        ("root://:pw@h//a", "root://***@h//a"),
        ("root://alice:p@ss@h//a?x=1", "root://***@h//a?x=1"),
        ("root://u:p@h//a and https://v:q@h/b", "root://***@h//a and https://***@h/b"),
        # query: any position, any case, after an empty pair, up to the next separator
        ("root://h//a?x=1&token=abc#frag", "root://h//a?x=1&token=***#frag"),
        ("davs://h/x?AUTHZ=Bearer%20abc", "davs://h/x?AUTHZ=***"),
        ("davs://h/x?authz=a?b/c&d=1", "davs://h/x?authz=***&d=1"),
        ("https://h/x?a=1&&token=z", "https://h/x?a=1&&token=***"),
        ("https://h/x?token=abc;x=1", "https://h/x?token=***;x=1"),
        ("https://h/x;jsessionid=abc?p=1", "https://h/x;jsessionid=***"),
        # root:// double-slash paths and trailing slashes are left as they are
        ("root://h//data//night/?authz=t", "root://h//data//night/?authz=***"),
        ("root://h//data/", "root://h//data/"),
        ("root://h//a?oss.asize=1", "root://h//a?oss.asize=1"),
        # already redacted, empty and non-secret values stay
        ("root://***@h//a?token=***", "root://***@h//a?token=***"),
        ("https://h/x?token=&keyword=", "https://h/x?token=&keyword="),
        ("Authorization: bearer abc def", "Authorization: bearer *** def"),
    ],
)
def test_redact_edge_cases(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert redact(expected) == expected


# ----------------------------------------------------------------------------- every way in


@pytest.mark.slow
def test_from_file_urls_with_credentials_are_refused_and_nothing_is_stored(
    db: Database, tmp_path: Path
) -> None:
    entries = [
        {"exposure": "e1", "source": f"root://alice:{SECRET}@host//data/e1"},
        {"exposure": "e1", "destination": f"davs://host/x?access_token={SECRET}"},
        {"exposure": "e1", "source": f"https://host/x;password={SECRET}"},
        {"exposure": "e1", "files": [{"name": "a.MS", "url": f"root://host//a.MS?authz={SECRET}"}]},
    ]
    for i, entry in enumerate(entries):
        listing = tmp_path / f"from{i}.json"
        listing.write_text(json.dumps({"exposures": [{"exposure": "ok"}, entry]}))
        proc = gridxfer(
            "tokens",
            "create",
            NIGHT,
            "--from",
            str(listing),
            "--dest",
            "file:///dst",
            config=db.config_file,
        )
        assert proc.returncode == 6, proc.stderr
        assert "entry 1" in proc.stderr and "credentials" in proc.stderr, proc.stderr
        assert SECRET not in proc.stderr + proc.stdout
    assert db.pool().counts() == {}


@pytest.mark.slow
def test_template_urls_with_credentials_are_refused_naming_the_key(
    db: Database, tmp_path: Path
) -> None:
    write_exposure(tmp_path / "src" / NIGHT / "e1", {"a.fits": b"a"})
    for key, url in (
        ("source", f"root://alice:{SECRET}@host//data"),
        ("destination", f"davs://host/x?authz={SECRET}"),
    ):
        template = tmp_path / f"{key}.yaml"
        template.write_text(yaml.safe_dump({"layout": "night", key: url}))
        proc = gridxfer(
            "tokens",
            "create",
            NIGHT,
            "--template",
            str(template),
            *(["--source", f"file://{tmp_path / 'src'}"] if key != "source" else []),
            *(["--dest", f"file://{tmp_path / 'dst'}"] if key != "destination" else []),
            config=db.config_file,
        )
        assert proc.returncode == 6, proc.stderr
        assert f"{key}:" in proc.stderr and "credentials" in proc.stderr
        assert SECRET not in proc.stderr + proc.stdout
    assert db.pool().counts() == {}


@pytest.mark.slow
@pytest.mark.parametrize(
    "section, value",
    [
        ({"source": f"root://alice:{SECRET}@host//data"}, "source"),
        ({"destination": f"davs://host/x?access_token={SECRET}"}, "destination"),
        ({"couchdb": {"url": f"http://127.0.0.1:5984/;password={SECRET}"}}, "couchdb.url"),
        ({"couchdb": {"url": f"http://127.0.0.1:5984/?password={SECRET}"}}, "couchdb.url"),
        (
            {"staging": {"stager_url": f"https://lta.example.org/rpc;token={SECRET}"}},
            "staging.stager_url",
        ),
    ],
)
def test_config_urls_with_credentials_exit_3_without_showing_them(
    tmp_path: Path, section: dict[str, object], value: str
) -> None:
    cfg = tmp_path / "gridxfer.yaml"
    cfg.write_text(yaml.safe_dump(section))
    proc = gridxfer("status", "--json", config=cfg)
    assert proc.returncode == 3, proc.stderr
    assert f"{value}:" in proc.stderr
    assert SECRET not in proc.stderr + proc.stdout


def test_stager_client_refuses_a_url_with_a_secret_without_showing_it() -> None:
    from GRID_XFER.lta import LtaClient

    for url in (
        f"https://u:{SECRET}@lta.example.org/rpc",
        f"https://lta.example.org/rpc?token={SECRET}",
        f"https://lta.example.org/rpc;password={SECRET}",
    ):
        with pytest.raises(ConfigError) as info:
            LtaClient(url)
        assert SECRET not in str(info.value)


@pytest.mark.slow
def test_a_url_list_for_state_all_with_a_secret_is_refused_unshown(
    db: Database, tmp_path: Path
) -> None:
    listing = tmp_path / "srm.txt"
    listing.write_text(f"# ok\nroot://host//data/a.MS?authz={SECRET}\n")
    proc = gridxfer("--debug", "state-all", str(listing), config=db.config_file)
    assert proc.returncode == 6, proc.stderr
    assert "line 2" in proc.stderr and SECRET not in proc.stderr + proc.stdout


def test_the_cli_log_format_redacts_messages_and_tracebacks() -> None:
    """What the CLI installs: a message quoting a URL as is still shows no secret."""
    import io
    import logging

    from GRID_XFER.urls import RedactingFormatter

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(RedactingFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("tests.redacting")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("copy %s failed", f"davs://alice:{SECRET}@host/x")
        try:
            raise RuntimeError(f"open https://host/x?access_token={SECRET}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert "davs://***@host/x" in out.getvalue() and "access_token=***" in out.getvalue()
    assert SECRET not in out.getvalue()
