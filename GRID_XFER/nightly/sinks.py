"""Where alerts go: e-mail (SMTP with STARTTLS and login) and a chat webhook.

A sink sends one message or raises :class:`~GRID_XFER.errors.AlertError`; deciding
what to send, and when, is :mod:`GRID_XFER.nightly.alerts`' business. Both hold a
secret (the SMTP password, the webhook URL), so both read it from the environment
or from a file only its owner can read, never from the config file, and build
every error text themselves: no server reply or library message that could quote
the secret reaches an error or a log unfiltered.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import os
import smtplib
import socket
import ssl
import stat
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from GRID_XFER.errors import AlertError, ConfigError
from GRID_XFER.nightly_config import AlertsConfig, SMTPConfig, WebhookConfig
from GRID_XFER.redact import MASK, one_line, redact

PREFIX = "[gridxfer] "
SMTP_PASSWORD_ENV = "GRIDXFER_SMTP_PASSWORD"
WEBHOOK_URL_ENV = "GRIDXFER_WEBHOOK_URL"


class Sink(Protocol):
    """One way out for an alert."""

    name: str

    def send(self, subject: str, body: str, severity: str) -> None: ...


def read_secret(path: Path, setting: str) -> str:
    """A secret from a regular file that group and others cannot read.

    A secret others can read is already out: refusing it makes the owner notice.
    """
    path = path.expanduser()
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{setting}: {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{setting}: {path} has mode {mode:04o}, readable by others; "
                f"make it 0600 (chmod 600 {path})"
            )
        secret = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    if not secret:
        raise ConfigError(f"{setting}: {path} is empty")
    return secret


def _tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verifying context: the system's CAs, or only ``ca_file`` when given."""
    cafile = str(ca_file.expanduser()) if ca_file is not None else None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"ca_file: cannot load {cafile}: {exc}") from None


def _scrub(text: str, secrets: list[str]) -> str:
    """``text`` on one line with each secret (and its base64 forms, as AUTH sends
    them) masked: a server may quote what it was sent."""
    for secret in secrets:
        for form in (secret, base64.b64encode(secret.encode()).decode()):
            if form:
                text = text.replace(form, MASK)
    return one_line(redact(text))


def _text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else reply


def _network_reason(exc: BaseException) -> str:
    """Why a connection failed, in words that hold nothing secret."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"server certificate not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return "host name not found"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


class SmtpSink:
    """Mail to ``cfg.to``; a login happens only inside TLS (STARTTLS)."""

    name = "smtp"

    def __init__(self, cfg: SMTPConfig, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.cfg = cfg
        self._password: str | None = None
        if cfg.user:
            if not cfg.starttls:
                raise ConfigError(
                    "nightly.alerts.smtp: refusing to send the SMTP password unencrypted "
                    "(smtp.user is set and smtp.starttls is false)"
                )
            if env.get(SMTP_PASSWORD_ENV):
                self._password = env[SMTP_PASSWORD_ENV]
            elif cfg.password_file is not None:
                self._password = read_secret(cfg.password_file, "nightly.alerts.smtp.password_file")
            else:
                raise ConfigError(
                    "nightly.alerts.smtp.user is set but neither "
                    f"{SMTP_PASSWORD_ENV} nor nightly.alerts.smtp.password_file is"
                )
        self._tls = _tls_context(cfg.ca_file) if cfg.starttls else None

    @property
    def _where(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port}"

    def message(self, subject: str, body: str, severity: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.cfg.sender
        msg["To"] = ", ".join(self.cfg.to)
        msg["Subject"] = PREFIX + one_line(subject)
        msg["Date"] = formatdate(localtime=True)
        msg["Message-ID"] = make_msgid(domain="gridxfer")
        msg["X-Gridxfer-Severity"] = severity
        if severity == "critical":
            msg["Importance"] = "high"
        msg.set_content(body)
        return msg

    def send(self, subject: str, body: str, severity: str) -> None:
        msg = self.message(subject, body, severity)
        secrets = [self._password] if self._password else []
        try:
            with smtplib.SMTP(self.cfg.host, self.cfg.port, timeout=self.cfg.timeout) as smtp:
                self._session(smtp)
                smtp.send_message(msg)
        except AlertError:
            raise
        except smtplib.SMTPAuthenticationError as exc:
            reply = _scrub(_text(exc.smtp_error), secrets)
            raise AlertError(
                f"smtp: {self._where} refused the login as {self.cfg.user!r}: "
                f"{exc.smtp_code} {reply}"
            ) from None
        except smtplib.SMTPRecipientsRefused as exc:
            refused = ", ".join(sorted(exc.recipients))
            raise AlertError(f"smtp: {self._where} refused the recipients {refused}") from None
        except smtplib.SMTPResponseException as exc:
            reply = _scrub(_text(exc.smtp_error), secrets)
            raise AlertError(f"smtp: {self._where} answered {exc.smtp_code} {reply}") from None
        except smtplib.SMTPException as exc:
            raise AlertError(f"smtp: {self._where}: {_scrub(str(exc), secrets)}") from None
        except (OSError, ValueError) as exc:
            raise AlertError(f"smtp: {self._where}: {_network_reason(exc)}") from None

    def _session(self, smtp: smtplib.SMTP) -> None:
        smtp.ehlo()
        if self._tls is not None:
            if not smtp.has_extn("starttls"):
                raise AlertError(f"smtp: {self._where} does not offer STARTTLS")
            smtp.starttls(context=self._tls)
            smtp.ehlo()
        if self.cfg.user and self._password is not None:
            smtp.login(self.cfg.user, self._password)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebhookSink:
    """A JSON POST (``text``, ``username``) to a Mattermost or Slack incoming webhook."""

    name = "webhook"

    def __init__(self, cfg: WebhookConfig, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.cfg = cfg
        if env.get(WEBHOOK_URL_ENV):
            url = env[WEBHOOK_URL_ENV].strip()
        elif cfg.url_file is not None:
            url = read_secret(cfg.url_file, "nightly.alerts.webhook.url_file")
        else:
            raise ConfigError(
                f"nightly.alerts.webhook: neither {WEBHOOK_URL_ENV} nor "
                "nightly.alerts.webhook.url_file is set"
            )
        parts = urlsplit(url)
        # The URL is the hook's secret: it is not quoted in any of these errors.
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ConfigError("nightly.alerts.webhook: the URL is not an http(s) URL")
        if parts.scheme == "http" and not _loopback(parts.hostname):
            raise ConfigError(
                "nightly.alerts.webhook: refusing to send the webhook URL unencrypted "
                "(http:// to another host; use https://)"
            )
        self._parts = parts
        self._tls = _tls_context(cfg.ca_file) if parts.scheme == "https" else None

    def payload(self, subject: str, body: str, severity: str) -> bytes:
        text = f"{PREFIX}{one_line(subject)}\n\n{body}".rstrip()
        return json.dumps({"text": text, "username": "gridxfer"}).encode()

    def send(self, subject: str, body: str, severity: str) -> None:
        p = self._parts
        path = (p.path or "/") + (f"?{p.query}" if p.query else "")
        conn: http.client.HTTPConnection
        if self._tls is not None:
            conn = http.client.HTTPSConnection(
                p.hostname or "", p.port, timeout=self.cfg.timeout, context=self._tls
            )
        else:
            conn = http.client.HTTPConnection(p.hostname or "", p.port, timeout=self.cfg.timeout)
        try:
            headers = {"Content-Type": "application/json", "User-Agent": "gridxfer"}
            conn.request("POST", path, body=self.payload(subject, body, severity), headers=headers)
            status = conn.getresponse().status
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise AlertError(f"webhook: {_network_reason(exc)}") from None
        finally:
            conn.close()
        if not 200 <= status < 300:
            raise AlertError(f"webhook: HTTP {status}")


def make_sinks(cfg: AlertsConfig, env: Mapping[str, str] | None = None) -> list[Sink]:
    """The configured sinks ([] when none); ConfigError at once for a missing secret,
    so the service fails at its start rather than at its first alert."""
    sinks: list[Sink] = []
    if cfg.smtp is not None:
        sinks.append(SmtpSink(cfg.smtp, env))
    if cfg.webhook is not None:
        sinks.append(WebhookSink(cfg.webhook, env))
    return sinks
