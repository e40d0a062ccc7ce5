"""Vendor notifications by email, sent with `smtplib`.

One message per request: plain text with an HTML alternative, the slot in the vendor's
zone, who asked, how to answer (the answer link carrying the single-use token, or the token
itself when no answer URL exists) and when the request expires. The `Message-ID` is stable
per (reservation, token), so a retried send is recognisably the same message.

Outcome: SMTP 4xx replies, connection errors, disconnects and timeouts are retryable; 5xx
replies (550 mailbox unavailable, 553 bad address, 535 bad credentials), a server without
STARTTLS/AUTH when they are configured, and a certificate that does not verify are not.
A temporary authentication failure (454) is a 4xx and therefore retryable.
"""

from __future__ import annotations

import hashlib
import html
import smtplib
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import NoReturn

from bookiji.integrations.notify import (
    LocalSlot,
    answer_link,
    local_slot,
    one_line,
    redact,
)
from bookiji.services.ports import NotificationFailed, VendorNotification

__all__ = ["SmtpNotifier", "build_email"]


def _message_id(notification: VendorNotification, sender: str) -> str:
    seed = "\x1f".join(("bookiji.vendor-email", notification.reservation_id, notification.token))
    domain = parseaddr(sender)[1].rpartition("@")[2] or "bookiji.invalid"
    return f"<{hashlib.sha256(seed.encode()).hexdigest()[:32]}@{domain}>"


def _text_body(n: VendorNotification, slot: LocalSlot, link: str | None) -> str:
    lines = [
        f"Hello {one_line(n.vendor_name)},",
        "",
        "You have a new booking request. The slot is held for you until you answer.",
        "",
        f"  When:         {slot.long()}",
        f"  Requested by: {one_line(n.requester_id)}",
        f"  Reservation:  {n.reservation_id}",
        "",
    ]
    if link:
        lines += [
            "To confirm or decline, open this single-use link:",
            "",
            f"  {link}",
            "",
        ]
    else:
        lines += [
            "To confirm or decline, give this single-use confirmation code to your booking",
            "platform (or to your Bookiji operator) together with your decision:",
            "",
            f"  {n.token}",
            "",
        ]
    lines += [
        f"Please answer by {slot.expiry()}.",
        "After that the request expires and the slot is released.",
        "",
        "Do not forward this email: anyone holding the link or code can answer for you.",
    ]
    return "\n".join(lines) + "\n"


def _html_body(n: VendorNotification, slot: LocalSlot, link: str | None) -> str:
    e = html.escape
    if link:
        answer = (
            "<p>To confirm or decline, open this single-use link:</p>"
            f'<p><a href="{e(link)}">{e(link)}</a></p>'
        )
    else:
        answer = (
            "<p>To confirm or decline, give this single-use confirmation code to your booking "
            "platform (or to your Bookiji operator) together with your decision:</p>"
            f"<p><code>{e(n.token)}</code></p>"
        )
    return (
        "<!DOCTYPE html><html><body>"
        f"<p>Hello {e(one_line(n.vendor_name))},</p>"
        "<p>You have a new booking request. The slot is held for you until you answer.</p>"
        "<table>"
        f"<tr><th align=left>When</th><td>{e(slot.long())}</td></tr>"
        f"<tr><th align=left>Requested by</th><td>{e(one_line(n.requester_id))}</td></tr>"
        f"<tr><th align=left>Reservation</th><td>{e(n.reservation_id)}</td></tr>"
        "</table>"
        f"{answer}"
        f"<p>Please answer by {e(slot.expiry())}. After that the request expires and the "
        "slot is released.</p>"
        "<p>Do not forward this email: anyone holding the link or code can answer for you.</p>"
        "</body></html>\n"
    )


def build_email(sender: str, destination: str, notification: VendorNotification) -> EmailMessage:
    """The message `SmtpNotifier` sends (exposed for previews and tests)."""
    slot = local_slot(notification)
    link = answer_link(notification)
    message = EmailMessage()
    message["Subject"] = f"Booking request: {slot.short()} ({slot.zone})"
    message["From"] = sender
    message["To"] = destination
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = _message_id(notification, sender)
    message["Auto-Submitted"] = "auto-generated"
    message["X-Bookiji-Reservation"] = one_line(notification.reservation_id, 64)
    message.set_content(_text_body(notification, slot, link))
    message.add_alternative(_html_body(notification, slot, link), subtype="html")
    return message


class SmtpNotifier:
    channel = "email"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        sender: str,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`ssl_context` (for STARTTLS) defaults to `ssl.create_default_context()`."""
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if (username is None) != (password is None):
            raise ValueError("username and password go together")
        if "@" not in parseaddr(sender)[1]:
            raise ValueError("sender must be an email address")
        self.host = host
        self.port = port
        self.sender = sender
        self.username = username
        self._password = password
        self.starttls = starttls
        self.timeout = timeout
        self._ssl_context = ssl_context

    def send(self, destination: str, notification: VendorNotification) -> None:
        secrets = (notification.token, self._password)
        address = parseaddr(destination)[1]
        if "@" not in address or any(c in destination for c in "\r\n"):
            raise NotificationFailed("email destination is not an email address", retryable=False)
        try:
            message = build_email(self.sender, destination, notification)
        except ValueError as exc:  # a header that cannot be encoded
            raise NotificationFailed(
                f"email could not be built: {redact(str(exc), *secrets)}", retryable=False
            ) from None

        where = f"SMTP server {self.host}:{self.port}"
        smtp: smtplib.SMTP | None = None
        try:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            smtp.ehlo()
            if self.starttls:
                smtp.starttls(context=self._ssl_context or ssl.create_default_context())
                smtp.ehlo()
            if self.username is not None and self._password is not None:
                smtp.login(self.username, self._password)
            smtp.send_message(message, from_addr=parseaddr(self.sender)[1], to_addrs=[address])
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()), (550, b""))
            _refused(where, "refused the recipient", code, text, secrets)
        except smtplib.SMTPAuthenticationError as exc:
            _refused(where, "refused the credentials", exc.smtp_code, exc.smtp_error, secrets)
        except smtplib.SMTPResponseException as exc:  # sender refused, data refused, HELO
            _refused(where, "refused the message", exc.smtp_code, exc.smtp_error, secrets)
        except smtplib.SMTPNotSupportedError as exc:
            raise NotificationFailed(
                f"{where} does not support what is configured: {redact(str(exc), *secrets)}",
                retryable=False,
            ) from None
        except smtplib.SMTPServerDisconnected as exc:
            raise NotificationFailed(
                f"{where} closed the connection: {redact(str(exc), *secrets)}", retryable=True
            ) from None
        except smtplib.SMTPException as exc:  # e.g. "No suitable authentication method"
            raise NotificationFailed(
                f"{where}: {redact(str(exc), *secrets)}", retryable=False
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise NotificationFailed(
                f"{where}: TLS certificate not trusted ({exc.verify_message})", retryable=False
            ) from None
        except TimeoutError:
            raise NotificationFailed(
                f"{where} timed out after {self.timeout:g}s", retryable=True
            ) from None
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake
            raise NotificationFailed(
                f"{where} unreachable: {type(exc).__name__}: {exc.strerror or exc}",
                retryable=True,
            ) from exc
        finally:
            if smtp is not None:
                _quit(smtp)


def _refused(
    where: str,
    what: str,
    code: int,
    text: bytes | str,
    secrets: tuple[str | None, ...],
) -> NoReturn:
    reply = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    reply = redact(one_line(reply, 200), *secrets)
    raise NotificationFailed(
        f"{where} {what}: {code} {reply}".rstrip(), retryable=400 <= code < 500
    ) from None


def _quit(smtp: smtplib.SMTP) -> None:
    """Best effort: a failed QUIT after a delivered message is still a delivery."""
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()
