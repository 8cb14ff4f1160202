"""The gateway's callback as a lean ASGI route: token, source, size, parse, commit, ack."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging

from starlette.types import Receive, Scope, Send

from app.core.mobiles import mask_mobile
from app.core.paths import token_of
from app.core.settings import Settings
from app.ingest.errors import CallbackRejected, IngestRefused, IngestUnavailable
from app.ingest.parse import parse_callback
from app.ingest.quarantine import RawRequest, quarantine
from app.state import AppState
from app.web.answers import TEXT_TYPE, refuse, send_answer, send_json
from app.web.bodies import BodyTooLarge, declared_over, read_body, too_large
from app.web.security import address_allowed, caller_address, matches_secret

log = logging.getLogger("mboxii_dlr.callback")


class CallbackEndpoint:
    """Serves the callback paths in front of FastAPI's middleware and router (see
    app.main.DlrApp): it must answer fast and never redirect, and it decides for itself
    what the raw request bytes mean."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.receive_callback(scope, receive, send)
        except Exception:
            # Nothing was acknowledged; a 500 makes the gateway retry.
            log.exception("callback failed")
            with contextlib.suppress(Exception):  # the answer may have started already
                await send_json(send, status=500, payload={"error": "internal_error"})

    async def receive_callback(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Store one delivery report and acknowledge it only once it is committed."""
        settings: Settings = self.state.settings
        headers = dict(scope["headers"])
        token = token_of(scope["path"])
        allowed = (
            token is not None
            and (matches_secret(token, settings.callback_tokens) if token else False)
            if settings.callback_tokens
            else token == ""
        )
        if not allowed:
            await refuse(
                send,
                receive,
                status=404,
                payload={"error": "not_found", "message": "unknown callback path"},
                request_headers=headers,
            )
            return

        source = caller_address(scope, settings.trusted_proxies)
        if not address_allowed(source, settings.callback_networks):
            log.warning("callback refused from %s: outside DLR_CALLBACK_NETWORKS", source)
            await refuse(
                send,
                receive,
                status=403,
                payload={"error": "forbidden", "message": "source address not allowed"},
                request_headers=headers,
            )
            return

        method = scope["method"]
        if method not in ("GET", "POST"):
            await refuse(
                send,
                receive,
                status=405,
                payload={"error": "method_not_allowed", "message": "use POST or GET"},
                request_headers=headers,
                headers=[(b"allow", b"GET, POST")],
            )
            return

        limit = settings.max_body_bytes
        close = [(b"connection", b"close")]
        if declared_over(headers, limit):
            await refuse(
                send,
                receive,
                status=413,
                payload=too_large(limit),
                request_headers=headers,
                headers=close,
            )
            return
        try:
            body = await read_body(receive, limit)
        except BodyTooLarge as exc:
            await refuse(
                send,
                receive,
                status=413,
                payload=too_large(limit),
                request_headers=headers,
                headers=close,
                received=exc.received,
                ended=exc.ended,
            )
            return
        except ConnectionError:
            return

        received_at = dt.datetime.now(dt.UTC)
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        query = scope.get("query_string", b"")
        try:
            report = parse_callback(content_type, body, query, settings.zone, received_at)
        except CallbackRejected as rejected:
            raw = RawRequest(method, query.decode("latin-1"), content_type, source, body)
            await self._reject(send, raw, rejected.reason, rejected.errors, received_at)
            return

        try:
            new = await self.state.writer.submit(report, received_at)
        except IngestUnavailable as exc:
            self.state.metrics.unavailable.labels(exc.cause).inc()
            await self._unavailable(send, f"storage unavailable ({exc.cause}); retry later")
            return
        except IngestRefused as exc:
            raw = RawRequest(method, query.decode("latin-1"), content_type, source, body)
            errors = [{"field": "report", "message": f"the database refused it ({exc})"}]
            await self._reject(send, raw, "storage_refused", errors, received_at, status=500)
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "report %s msgid=%s mobile=%s status=%s",
                "stored" if new else "duplicate",
                report.msgid,
                mask_mobile(report.mobile),
                report.status,
            )
        await send_answer(send, status=200, body=self.state.ack_body, headers=[TEXT_TYPE])

    async def _reject(
        self,
        send: Send,
        raw: RawRequest,
        reason: str,
        errors: list[dict[str, str]],
        received_at: dt.datetime,
        status: int | None = None,
    ) -> None:
        try:
            # The endpoint owns this transaction: the row is committed before the answer.
            async with self.state.sessionmaker.begin() as session:
                rejected_id = await quarantine(
                    session, raw, reason, errors, received_at, self.state.outbox
                )
        except Exception as exc:
            log.error("quarantine unreachable (%s); answering 503", exc.__class__.__name__)
            self.state.metrics.unavailable.labels("quarantine").inc()
            await self._unavailable(send, "storage unavailable; retry later")
            return
        self.state.metrics.rejections.labels(reason).inc()
        log.info(
            "callback quarantined as #%d (%s): %s",
            rejected_id,
            reason,
            "; ".join(f"{e['field']} {e['message']}" for e in errors)[:500],
        )
        if status is None:
            status = 415 if reason == "unsupported_media_type" else 422
        code = {415: "unsupported_media_type", 500: "storage_refused"}.get(
            status, "invalid_callback"
        )
        await send_json(
            send,
            status=status,
            payload={"error": code, "errors": errors, "rejected_id": rejected_id},
        )

    async def _unavailable(self, send: Send, message: str) -> None:
        retry_after = str(self.state.settings.retry_after_seconds).encode()
        await send_json(
            send,
            status=503,
            payload={"error": "unavailable", "message": message},
            headers=[(b"retry-after", retry_after)],
        )
