"""`nudge serve`: the one-click unsubscribe endpoint (RFC 8058) and a health check.

Marketing mail carries `List-Unsubscribe: <https://.../unsubscribe?token=...>` and
`List-Unsubscribe-Post: List-Unsubscribe=One-Click`. A mail provider's unsubscribe
button POSTs `List-Unsubscribe=One-Click` to that URL; a person who clicks the link
in the footer GETs it. So:

- POST with a valid token unsubscribes (the one-click body, or the page's form) and
  answers 200 as soon as the unsubscribe is durably in the journal;
- GET never unsubscribes: link scanners and prefetchers follow every link in a
  mail, so it only shows a page whose button POSTs;
- a token we did not sign answers 400 and records nothing.

Tokens are HMAC-SHA256 over contact and list (unsubscribe.py) and carry no expiry,
so a link in a years-old email still works. The journal is written here; the
warehouse is written only when its writer lock is free right now (see
suppressions.py), never waited for.
"""

from __future__ import annotations

import html
import time
import logging
from email.utils import parseaddr
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from dagster_project.settings import NudgeSettings
from dagster_project.suppressions import FORM, ONE_CLICK, UnsubscribeJournal, try_move_to_warehouse
from dagster_project.unsubscribe import read_token

log = logging.getLogger("nudge.serve")

# A one-click body is 26 bytes and the page's form a token more; anything large is not ours.
MAX_BODY_BYTES = 16 * 1024
MOVE_ATTEMPTS = 10
MOVE_PAUSE_SECONDS = 0.5

# The token is in the URL: keep it out of other sites' Referer headers, caches and search indexes.
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}}
button{{font-size:1rem;padding:.6rem 1.2rem;border-radius:.4rem;border:1px solid #444;background:#fff;cursor:pointer}}</style>
</head><body><h1>{title}</h1>{body}</body></html>
"""


def unsubscribe_path(unsubscribe_url: str) -> str:
    """The path the endpoint answers on: the one in NUDGE_UNSUBSCRIBE_URL, as the emails link to it."""
    path = urlsplit(unsubscribe_url.strip()).path.rstrip("/")
    return path or "/unsubscribe"


def _page(title: str, body: str, status: int = 200, background: BackgroundTask | None = None) -> HTMLResponse:
    return HTMLResponse(
        _PAGE.format(title=html.escape(title), body=body), status_code=status, headers=_HEADERS, background=background
    )


def _bad_token() -> HTMLResponse:
    return _page(
        "This unsubscribe link is not valid",
        "<p>The link may have been cut short or changed. Use the unsubscribe link in the email itself, "
        "or reply to the email and ask to be removed.</p>",
        status=400,
    )


def create_app(settings: NudgeSettings) -> Starlette:
    settings = settings.resolved()
    secret = settings.unsubscribe_secret.get_secret_value()
    journal = UnsubscribeJournal(settings.unsubscribe_journal)  # type: ignore[arg-type]  (resolved: set)
    path = unsubscribe_path(settings.unsubscribe_url)
    sender = parseaddr(settings.sender)[0] or settings.sender

    async def unsubscribe(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return _page("Request too large", "", status=413)
        form = await request.form(max_files=0, max_fields=8) if request.method == "POST" else {}
        token = request.query_params.get("token") or str(form.get("token") or "")
        who = read_token(secret, token)
        if who is None:
            return _bad_token()
        contact_id, list_id = who

        if request.method != "POST":
            # Never unsubscribe here: mail scanners and link previews GET every link.
            action = html.escape(f"{path}?{urlencode({'token': token})}", quote=True)
            return _page(
                "Unsubscribe",
                f"<p>Stop getting {html.escape(list_id)} emails from {html.escape(sender)}? Emails about your "
                "account and orders still reach you.</p>"
                f'<form method="post" action="{action}">'
                f'<input type="hidden" name="token" value="{html.escape(token, quote=True)}">'
                '<button type="submit">Unsubscribe</button></form>',
            )

        source = ONE_CLICK if form.get("List-Unsubscribe") == "One-Click" else FORM
        # Durable before we answer: once the provider sees 200, the unsubscribe must not be lost.
        new = await run_in_threadpool(journal.record, contact_id, list_id, source=source)
        log.info("unsubscribed contact %s from %s (%s%s)", contact_id, list_id, source, "" if new else ", again")
        return _page(
            "You are unsubscribed",
            f"<p>You will get no more {html.escape(list_id)} emails from {html.escape(sender)}.</p>",
            # After the answer: into the warehouse if nobody is writing it right now (else the next send does it).
            background=BackgroundTask(_move_soon, journal, settings.warehouse),
        )

    def _move_soon(journal: UnsubscribeJournal, warehouse: Path) -> None:
        # A reader (nudge status, a report) holds the file for moments: try a few times over a
        # few seconds. A tick holds it far longer; then its own send moves the journal.
        for _attempt in range(MOVE_ATTEMPTS):
            if try_move_to_warehouse(journal, warehouse) is not None:
                return
            time.sleep(MOVE_PAUSE_SECONDS)

    async def healthz(request: Request) -> Response:
        try:
            await run_in_threadpool(journal.last_id)
        except Exception as error:  # noqa: BLE001  (any failure means: do not route mail providers here)
            return JSONResponse({"status": "error", "journal": str(error)}, status_code=503)
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route(path, unsubscribe, methods=["GET", "POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )
