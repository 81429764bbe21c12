"""Alerts: real SMTP (aiosmtpd, STARTTLS and AUTH required) and a real HTTPS webhook
receiver, both with a certificate from a CA made here; the Alerter's dedupe and rate
limit against a real database on both engines. Time is an injected clock."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from GRID_XFER.config import CouchDBConfig
from GRID_XFER.couch import Couch
from GRID_XFER.errors import AlertError, ConfigError
from GRID_XFER.nightly.alerts import Alert, Alerter, AlertStore
from GRID_XFER.nightly.sinks import SmtpSink, WebhookSink, make_sinks
from GRID_XFER.nightly_config import AlertsConfig, SMTPConfig, WebhookConfig
from tests.conftest import Database, free_port

USER = "alerts@example.org"
PASSWORD = "c0rrect-h0rse-b4ttery"
WRONG = "wr0ng-pa55word-XYZ"
HOOK_SECRET = "T000/B000/s3cr3tHookToken"
T0 = 1_800_000_000.0


# -- a test CA and a server certificate for 127.0.0.1 ---------------------------------
@dataclass(frozen=True)
class TLS:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLS:
    d = tmp_path_factory.mktemp("tls")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("gridxfer test CA"))
        .issuer_name(_name("gridxfer test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out = TLS(d / "ca.pem", d / "server.pem", d / "server.key")
    out.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return out


# -- a real SMTP server: STARTTLS required, AUTH required over TLS ----------------------
@dataclass
class Mailbox:
    port: int
    messages: list[Message] = field(default_factory=list)
    sessions: list[dict[str, Any]] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append(message_from_bytes(envelope.content))
        self.sessions.append(
            {
                "tls": session.ssl is not None,
                "login": session.auth_data.login,
                "to": envelope.rcpt_tos,
            }
        )
        return "250 OK"


def _authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    assert isinstance(data, LoginPassword)
    if data.login.decode() == USER and data.password.decode() == PASSWORD:
        return AuthResult(success=True, auth_data=data)
    # A careless server that quotes what it was given: the sink must not pass it on.
    return AuthResult(
        success=False, handled=False, message=f"535 5.7.8 bad password {data.password.decode()}"
    )


@pytest.fixture
def mailbox(tls: TLS) -> Iterator[Mailbox]:
    box = Mailbox(port=free_port())
    controller = Controller(
        box,
        hostname="127.0.0.1",
        port=box.port,
        tls_context=tls.server_context(),
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=_authenticator,
    )
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


def smtp_config(box: Mailbox, tls: TLS, **kw: Any) -> SMTPConfig:
    base: dict[str, Any] = dict(
        host="127.0.0.1",
        port=box.port,
        user=USER,
        sender="gridxfer@obs.example",
        to=["ops@obs.example", "night@obs.example"],
        timeout=5,
        ca_file=tls.ca_file,
    )
    base.update(kw)
    return SMTPConfig(**base)


def secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


# -- a real HTTPS webhook receiver -------------------------------------------------------
@dataclass
class Hook:
    port: int
    status: int = 200
    posts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/hooks/{HOOK_SECRET}"

    def texts(self) -> list[str]:
        return [p["json"]["text"] for p in self.posts]


@pytest.fixture
def hook(tls: TLS) -> Iterator[Hook]:
    state = Hook(port=0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            state.posts.append(
                {
                    "path": self.path,
                    "type": self.headers["Content-Type"],
                    "json": json.loads(raw),
                }
            )
            self.send_response(state.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = tls.server_context().wrap_socket(server.socket, server_side=True)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def webhook(hook: Hook, tls: TLS, url: str | None = None) -> WebhookSink:
    return WebhookSink(
        WebhookConfig(timeout=5, ca_file=tls.ca_file),
        env={"GRIDXFER_WEBHOOK_URL": url or hook.url},
    )


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


# -- SMTP ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_mail_goes_out_over_starttls_after_login(
    mailbox: Mailbox, tls: TLS, tmp_path: Path
) -> None:
    pw = secret_file(tmp_path / "smtp-password", PASSWORD)
    sink = SmtpSink(smtp_config(mailbox, tls, password_file=pw), env={})
    sink.send("camera cam stalled", "No token finished for 61 minutes.\nLast: exp-0042", "critical")
    (msg,) = mailbox.messages
    assert msg["From"] == "gridxfer@obs.example"
    assert msg["To"] == "ops@obs.example, night@obs.example"
    assert msg["Subject"] == "[gridxfer] camera cam stalled"
    assert msg["X-Gridxfer-Severity"] == "critical"
    body = str(msg.get_payload()).replace("\r\n", "\n")
    assert body == "No token finished for 61 minutes.\nLast: exp-0042\n"
    (session,) = mailbox.sessions
    assert session == {
        "tls": True,
        "login": USER.encode(),
        "to": ["ops@obs.example", "night@obs.example"],
    }


@pytest.mark.slow
def test_wrong_smtp_password_is_a_warning_without_the_password(
    mailbox: Mailbox, tls: TLS, caplog: pytest.LogCaptureFixture
) -> None:
    sink = SmtpSink(smtp_config(mailbox, tls), env={"GRIDXFER_SMTP_PASSWORD": WRONG})
    with pytest.raises(AlertError) as err:
        sink.send("s", "b", "warning")
    assert "refused the login" in str(err.value) and "535" in str(err.value)
    assert WRONG not in str(err.value)
    caplog.set_level(logging.WARNING)
    alerter = Alerter([sink])
    assert not alerter.raise_alert(Alert("database", "database unreachable", "b"))
    assert "refused the login" in caplog.text
    assert WRONG not in caplog.text
    assert not mailbox.messages


@pytest.mark.slow
def test_smtp_server_certificate_from_an_unknown_ca_is_not_trusted(
    mailbox: Mailbox, tls: TLS
) -> None:
    sink = SmtpSink(
        smtp_config(mailbox, tls, ca_file=None), env={"GRIDXFER_SMTP_PASSWORD": PASSWORD}
    )
    with pytest.raises(AlertError, match="certificate not trusted"):
        sink.send("s", "b", "warning")
    assert not mailbox.messages


def test_password_file_readable_by_others_is_refused(tls: TLS, tmp_path: Path) -> None:
    pw = secret_file(tmp_path / "smtp-password", PASSWORD, 0o644)
    with pytest.raises(ConfigError) as err:
        SmtpSink(smtp_config(Mailbox(25), tls, password_file=pw), env={})
    assert str(pw) in str(err.value) and "0644" in str(err.value)
    assert PASSWORD not in str(err.value)


def test_login_without_tls_is_refused(tls: TLS) -> None:
    cfg = smtp_config(Mailbox(25), tls, starttls=False)
    with pytest.raises(ConfigError, match="refusing to send the SMTP password unencrypted"):
        SmtpSink(cfg, env={"GRIDXFER_SMTP_PASSWORD": PASSWORD})


def test_smtp_user_without_a_password_is_a_config_error(tls: TLS) -> None:
    with pytest.raises(ConfigError, match="GRIDXFER_SMTP_PASSWORD"):
        SmtpSink(smtp_config(Mailbox(25), tls), env={})


# -- webhook ----------------------------------------------------------------------------
@pytest.mark.slow
def test_webhook_posts_json_text_over_verified_https(hook: Hook, tls: TLS, tmp_path: Path) -> None:
    url_file = secret_file(tmp_path / "hook-url", hook.url)
    (sink,) = make_sinks(
        AlertsConfig(webhook=WebhookConfig(url_file=url_file, ca_file=tls.ca_file)), env={}
    )
    sink.send("night 20261201: 3 tokens failed", "code 21 transfer failed: 3", "warning")
    (post,) = hook.posts
    assert post["path"] == f"/hooks/{HOOK_SECRET}"
    assert post["type"] == "application/json"
    assert post["json"] == {
        "text": "[gridxfer] night 20261201: 3 tokens failed\n\ncode 21 transfer failed: 3",
        "username": "gridxfer",
    }


@pytest.mark.slow
def test_webhook_errors_never_show_the_url(hook: Hook, tls: TLS) -> None:
    hook.status = 404
    with pytest.raises(AlertError) as err:
        webhook(hook, tls).send("s", "b", "info")
    assert str(err.value) == "webhook: HTTP 404"
    closed = f"https://127.0.0.1:{free_port()}/hooks/{HOOK_SECRET}"
    with pytest.raises(AlertError) as err:
        webhook(hook, tls, closed).send("s", "b", "info")
    assert str(err.value) == "webhook: connection refused"
    untrusted = WebhookSink(WebhookConfig(timeout=5), env={"GRIDXFER_WEBHOOK_URL": hook.url})
    with pytest.raises(AlertError) as err:
        untrusted.send("s", "b", "info")
    assert "certificate not trusted" in str(err.value)
    assert HOOK_SECRET not in str(err.value)


def test_webhook_url_file_readable_by_others_and_plain_http_are_refused(tmp_path: Path) -> None:
    url_file = secret_file(
        tmp_path / "hook-url", f"https://chat.example/hooks/{HOOK_SECRET}", 0o640
    )
    with pytest.raises(ConfigError, match="0640") as err:
        WebhookSink(WebhookConfig(url_file=url_file), env={})
    env = {"GRIDXFER_WEBHOOK_URL": f"http://chat.example/hooks/{HOOK_SECRET}"}
    with pytest.raises(ConfigError, match="unencrypted") as err:
        WebhookSink(WebhookConfig(), env=env)
    assert HOOK_SECRET not in str(err.value)
    assert make_sinks(AlertsConfig(), env=env) == []


# -- the Alerter --------------------------------------------------------------------------
@pytest.mark.slow
def test_one_alert_per_key(hook: Hook, tls: TLS) -> None:
    clock = Clock()
    alerter = Alerter([webhook(hook, tls)], clock=clock)
    stall = Alert("cam/stall", "camera cam stalled", "no progress", severity="critical")
    assert alerter.raise_alert(stall)
    clock.now += 3600
    assert not alerter.raise_alert(stall)
    assert alerter.raise_alert(Alert("database", "database unreachable", "b"))
    assert len(hook.posts) == 2
    assert alerter.active() == {"cam/stall", "database"}


@pytest.mark.slow
def test_sent_once_alert_is_not_sent_again_by_a_new_alerter_on_the_same_store(
    db: Database, hook: Hook, tls: TLS
) -> None:
    clock = Clock()
    code = Alert("20261201/code/21", "night 20261201: transfer failed", "3 tokens", repeat=False)
    first = Alerter([webhook(hook, tls)], AlertStore(db.couch), clock=clock, repeat_seconds=60)
    assert first.raise_alert(code)
    assert not first.resolve(code.key, "over", "")  # never "recovered"
    clock.now += 10 * 86400
    taker = Alerter([webhook(hook, tls)], AlertStore(Couch(db.cfg)), clock=clock, repeat_seconds=60)
    assert not taker.raise_alert(code)
    assert len(hook.posts) == 1
    doc = db.couch.get("gridxfer-alerts")
    assert doc["type"] == "gridxfer-alerts"
    assert doc["keys"]["20261201/code/21"]["count"] == 1


@pytest.mark.slow
def test_still_raised_alert_is_repeated_after_repeat_seconds(hook: Hook, tls: TLS) -> None:
    clock = Clock()
    alerter = Alerter([webhook(hook, tls)], clock=clock, repeat_seconds=7200)
    stall = Alert("cam/stall", "camera cam stalled", "no progress")
    assert alerter.raise_alert(stall)
    clock.now += 7199
    assert not alerter.raise_alert(stall)
    clock.now += 1
    assert alerter.raise_alert(stall)
    assert len(hook.posts) == 2
    assert "Still so" in hook.texts()[1] and "message 2" in hook.texts()[1]


@pytest.mark.slow
def test_rate_limit_holds_alerts_back_and_sends_them_later_saying_how_many(
    db: Database, hook: Hook, tls: TLS
) -> None:
    clock = Clock()
    alerter = Alerter([webhook(hook, tls)], AlertStore(db.couch), clock=clock, max_per_hour=2)
    alerts = [Alert(f"k{i}", f"problem {i}", f"body {i}") for i in range(4)]
    assert [alerter.raise_alert(a) for a in alerts] == [True, True, False, False]
    assert alerter.active() == {"k0", "k1"}  # held back: not marked sent
    clock.now += 1800
    assert not alerter.raise_alert(alerts[2])  # still within the hour of two sends
    assert not alerter.resolve("k0", "problem 0 over", "")  # a recovery counts too
    clock.now += 1801
    assert alerter.raise_alert(Alert("k9", "problem 9", "body 9"))
    assert "3 further alerts were held back by the rate limit" in hook.texts()[-1]
    assert alerter.raise_alert(alerts[2])
    assert "held back" not in hook.texts()[-1]  # told once
    assert len(hook.posts) == 4


@pytest.mark.slow
def test_recovery_is_announced_once(hook: Hook, tls: TLS) -> None:
    clock = Clock()
    alerter = Alerter([webhook(hook, tls)], clock=clock)
    assert not alerter.resolve("cam/stall", "never raised", "")
    assert alerter.raise_alert(Alert("cam/stall", "camera cam stalled", "no progress"))
    clock.now += 600
    assert alerter.resolve("cam/stall", "camera cam moves again", "12 tokens done")
    assert not alerter.resolve("cam/stall", "camera cam moves again", "12 tokens done")
    assert alerter.active() == set()
    assert len(hook.posts) == 2
    recovered = hook.texts()[1]
    assert recovered.startswith("[gridxfer] RECOVERED: camera cam stalled\n")
    assert "camera cam moves again" in recovered and "12 tokens done" in recovered
    assert alerter.raise_alert(Alert("cam/stall", "camera cam stalled", "again"))  # a new episode


@pytest.mark.slow
def test_alert_no_sink_took_is_not_marked_sent_and_is_retried(hook: Hook, tls: TLS) -> None:
    alerter = Alerter([webhook(hook, tls)], clock=Clock())
    stall = Alert("cam/stall", "camera cam stalled", "no progress")
    hook.status = 500
    assert not alerter.raise_alert(stall)
    assert alerter.active() == set()
    hook.status = 200
    assert alerter.raise_alert(stall)
    assert len(hook.posts) == 2


@pytest.mark.slow
def test_alert_one_sink_of_two_took_counts_as_sent_with_a_warning(
    hook: Hook, tls: TLS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    dead = webhook(hook, tls, f"https://127.0.0.1:{free_port()}/hooks/{HOOK_SECRET}")
    alerter = Alerter([dead, webhook(hook, tls)], clock=Clock())
    stall = Alert("cam/stall", "camera cam stalled", "no progress")
    assert alerter.raise_alert(stall)
    assert not alerter.raise_alert(stall)
    assert len(hook.posts) == 1
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning == "alert cam/stall: webhook failed: webhook: connection refused"


@pytest.mark.slow
def test_notify_is_neither_deduplicated_nor_rate_limited(hook: Hook, tls: TLS) -> None:
    alerter = Alerter([webhook(hook, tls)], clock=Clock(), max_per_hour=1)
    assert alerter.raise_alert(Alert("k", "s", "b"))
    assert alerter.notify("morning report 20261201", "all done")
    assert alerter.notify("morning report 20261201", "all done")
    assert len(hook.posts) == 3
    assert Alerter([], clock=Clock()).notify("nobody listens", "") is False


@pytest.mark.slow
def test_dry_run_sends_nothing_and_writes_nothing(db: Database, hook: Hook, tls: TLS) -> None:
    clock = Clock()
    store = AlertStore(db.couch)
    live = Alerter([webhook(hook, tls)], store, clock=clock)
    assert live.raise_alert(Alert("cam/stall", "camera cam stalled", "no progress"))
    before = db.couch.get("gridxfer-alerts")
    dry = Alerter([webhook(hook, tls)], store, clock=clock, dry_run=True)
    assert not dry.raise_alert(Alert("cam/stall", "camera cam stalled", "no progress"))
    assert dry.raise_alert(Alert("20261201/code/21", "night 20261201: 21", "b", repeat=False))
    assert dry.resolve("cam/stall", "camera cam moves again", "")
    assert dry.notify("morning report", "r")
    assert [s for s, _ in dry.would_send] == [
        "night 20261201: 21",
        "RECOVERED: camera cam stalled",
        "morning report",
    ]
    assert len(hook.posts) == 1
    assert db.couch.get("gridxfer-alerts") == before


@pytest.mark.slow
def test_database_outage_alert_still_goes_out_and_state_is_written_back(
    db: Database, hook: Hook, tls: TLS, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    gone = CouchDBConfig(url=f"http://127.0.0.1:{free_port()}", db=db.cfg.db, retries=0)
    store = AlertStore(Couch(gone))
    alerter = Alerter([webhook(hook, tls)], store, clock=clock)
    outage = Alert("database", "database unreachable", "connection refused", severity="critical")
    assert alerter.raise_alert(outage)
    assert not alerter.raise_alert(outage)  # deduplicated from memory
    assert "working from memory" in caplog.text
    store.couch = db.couch  # the database answers again
    clock.now += 61
    assert alerter.resolve("database", "database answers again", "")
    assert alerter.raise_alert(Alert("x/code/30", "checksum mismatch", "b", repeat=False))
    doc = db.couch.get("gridxfer-alerts")
    assert set(doc["keys"]) == {"x/code/30"}
    assert doc["sent"] == [T0, T0 + 61, T0 + 61]  # every send of the last hour


@pytest.mark.slow
def test_concurrent_write_is_retried_and_both_changes_kept(db: Database) -> None:
    store = AlertStore(db.couch)
    other = AlertStore(Couch(db.cfg))
    other.update([lambda s: s["keys"].update(a={"last_sent": T0, "repeat": True})])
    raced = []

    def ours(state: dict[str, Any]) -> None:
        if not raced:  # another instance saves between our read and our write: 409
            raced.append(True)
            other.update([lambda s: s["keys"].update(b={"last_sent": T0, "repeat": True})])
        state["keys"]["c"] = {"last_sent": T0, "repeat": False}

    assert set(store.update([ours])["keys"]) == {"a", "b", "c"}
    assert set(db.couch.get("gridxfer-alerts")["keys"]) == {"a", "b", "c"}
