"""The naive reference: per request, open a session, insert the report, commit, answer OK.

This is the receiver most people write first. It uses the service's own parser and tables so
that the only difference from mboxii-dlr is how commits are organised.
"""

import datetime as dt
import os
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
from sqlalchemy.ext.asyncio import async_sessionmaker

from app.db.engine import create_engine
from app.db.models import Report
from app.ingest.parse import collect_fields, validate_fields

engine = create_engine(os.environ["DLR_DATABASE_URL"], pool_size=20)
Session = async_sessionmaker(engine, expire_on_commit=False)
ZONE = ZoneInfo("Asia/Taipei")
app = FastAPI()


@app.post("/callbacks/mboxii")
async def receive(request: Request) -> PlainTextResponse:
    """Parse, validate, insert one row and commit, then acknowledge."""
    form = await request.form()
    now = dt.datetime.now(dt.UTC)
    errors: list[dict[str, str]] = []
    fields = collect_fields([(k, str(v)) for k, v in form.multi_items()], errors)
    r = validate_fields(fields, ZONE, now, errors)
    async with Session() as session:
        session.add(
            Report(
                report_key=r.key,
                batch_id=r.batch_id,
                msgid=r.msgid,
                mobile=r.mobile,
                type=r.type,
                status=r.status,
                statuscode=r.statuscode,
                outcome=r.outcome,
                final=r.final,
                inconsistent=r.inconsistent,
                done_at=r.done_at,
                received_at=now,
                source="callback",
            )
        )
        await session.commit()
    return PlainTextResponse("OK")
