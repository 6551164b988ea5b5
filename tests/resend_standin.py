"""A stand-in for Resend's email API on 127.0.0.1 for tests: starlette, served by uvicorn in a thread.

It speaks POST /emails as Resend documents it: `Authorization: Bearer <key>`
(401 missing_api_key, 403 invalid_api_key), a JSON body {from, to, subject,
html|text, headers} (422 validation_error), and `Idempotency-Key`: the same key
with the same body returns the first answer without sending again, the same key
with another body is 409 invalid_idempotent_request. Each distinct email it
"sends" is kept in `emails`; every request in `requests`.

A test can make it misbehave for the next N requests (`fail_next`):
  "429"    429 rate_limit_exceeded with a Retry-After
  "500"    500 application_error (nothing sent)
  "drop"   sends, then cuts the connection before the answer is complete
  "stall"  sends, then waits `stall_seconds` before answering
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import uvicorn
from smtp_sink import HOST, free_port
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

FAULTS = ("429", "500", "drop", "stall")


@dataclass(frozen=True)
class SentEmail:
    id: str
    idempotency_key: str | None
    payload: dict[str, Any]
    at: float  # time.monotonic() when it was sent


@dataclass(frozen=True)
class SeenRequest:
    at: float
    idempotency_key: str | None
    authorization: str | None
    status: int  # the status it was answered with (200 for a dropped or stalled one that was sent)


class _Cut(Exception):
    """Raised after the response has started, so uvicorn closes the connection mid-answer."""


class ResendStandIn:
    def __init__(self, api_key: str = "re_standin_0123456789", *, stall_seconds: float = 1.0) -> None:
        self.api_key = api_key
        self.host = HOST
        self.port = free_port()
        self.stall_seconds = stall_seconds
        self._lock = threading.Lock()
        self._emails: list[SentEmail] = []
        self._requests: list[SeenRequest] = []
        self._faults: deque[tuple[str, float | None]] = deque()
        # Idempotency-Key -> (hash of the body, the email id it was answered with)
        self._keys: dict[str, tuple[str, str]] = {}
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(routes=[Route("/emails", self._emails_endpoint, methods=["POST"])])

    # --- what a test reads and sets ---------------------------------------------------------

    @property
    def url(self) -> str:
        return f"resend://{self.api_key}@{self.host}:{self.port}?tls=false"

    @property
    def emails(self) -> list[SentEmail]:
        with self._lock:
            return list(self._emails)

    @property
    def requests(self) -> list[SeenRequest]:
        with self._lock:
            return list(self._requests)

    def fail_next(self, count: int, fault: str, *, retry_after: float | None = None) -> None:
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}")
        with self._lock:
            self._faults.extend([(fault, retry_after)] * count)

    # --- the protocol ------------------------------------------------------------------------

    async def _emails_endpoint(self, request: Request) -> Response:
        key = request.headers.get("idempotency-key")
        authorization = request.headers.get("authorization")

        def answer(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
            self._seen(key, authorization, status)
            return JSONResponse(body, status_code=status, headers=headers)

        def error(status: int, name: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
            return answer(status, {"statusCode": status, "name": name, "message": message}, headers)

        if not authorization:
            return error(401, "missing_api_key", "Missing API key in the authorization header.")
        if authorization != f"Bearer {self.api_key}":
            return error(403, "invalid_api_key", "API key is invalid.")
        try:
            payload = json.loads(await request.body())
        except ValueError:
            return error(400, "validation_error", "The request body is not valid JSON.")
        problem = _invalid(payload)
        if problem:
            return error(422, "validation_error", problem)
        if key is not None and not 1 <= len(key) <= 256:
            return error(400, "invalid_idempotency_key", "The key must be between 1-256 chars.")

        with self._lock:
            fault, retry_after = self._faults.popleft() if self._faults else (None, None)
        if fault == "429":
            return error(429, "rate_limit_exceeded", "Too many requests. You can only make 2 requests per second.",
                         {"retry-after": f"{retry_after if retry_after is not None else 1:g}"})
        if fault == "500":
            return error(500, "application_error", "An unexpected error occurred.")

        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        with self._lock:
            known = self._keys.get(key) if key is not None else None
            if known is None:
                email_id = str(uuid.uuid4())
                self._emails.append(SentEmail(email_id, key, payload, time.monotonic()))
                if key is not None:
                    self._keys[key] = (digest, email_id)
        if known is not None and known[0] != digest:
            return error(409, "invalid_idempotent_request",
                         "Same idempotency key used with a different request payload.")
        email_id = known[1] if known is not None else email_id

        if fault in ("stall", "drop"):
            # Seen now: the client gives up on (or loses) this answer before it would be recorded.
            self._seen(key, authorization, 200)
        if fault == "drop":
            return _CutResponse()
        if fault == "stall":
            await asyncio.sleep(self.stall_seconds)
            return JSONResponse({"id": email_id})
        return answer(200, {"id": email_id})

    def _seen(self, key: str | None, authorization: str | None, status: int) -> None:
        with self._lock:
            self._requests.append(SeenRequest(time.monotonic(), key, authorization, status))

    # --- running -----------------------------------------------------------------------------

    def start(self) -> "ResendStandIn":
        config = uvicorn.Config(
            self.app, host=self.host, port=self.port, log_level="critical", lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="resend-standin", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the Resend stand-in did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            assert self._thread is not None
            self._thread.join(timeout=10)
            self._server = None

    def __enter__(self) -> "ResendStandIn":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class _CutResponse(Response):
    """Starts an answer it never finishes: uvicorn closes the connection and the client sees it cut."""

    def __init__(self) -> None:
        super().__init__()

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"64")]})
        await send({"type": "http.response.body", "body": b'{"id": ', "more_body": True})
        raise _Cut("the stand-in cuts this connection mid-answer")


def _invalid(payload: Any) -> str | None:
    """What Resend's validation would say about a body, or None when it is acceptable."""
    if not isinstance(payload, dict):
        return "The body must be a JSON object."
    for field in ("from", "to", "subject"):
        if not payload.get(field):
            return f"Missing `{field}` field."
    recipients = payload["to"] if isinstance(payload["to"], list) else [payload["to"]]
    for recipient in recipients:
        if not isinstance(recipient, str) or "@" not in recipient or recipient.rstrip(">").endswith(".invalid"):
            return "Invalid `to` field. The email address needs to follow the `email@example.com` format."
    if not (payload.get("html") or payload.get("text")):
        return "Missing `html` or `text` field."
    if not isinstance(payload.get("headers", {}), dict):
        return "The `headers` field must be an object."
    return None
