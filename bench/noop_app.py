"""The no-op reference: a FastAPI route that parses the callback form and answers OK."""

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

app = FastAPI()
FIELDS = ("ID", "msgid", "type", "mobile", "donetime", "statuscode", "statusstr")


@app.post("/callbacks/mboxii")
async def receive(request: Request) -> PlainTextResponse:
    """Parse the form, read the seven fields, store nothing."""
    form = await request.form()
    _ = [form.get(name) for name in FIELDS]
    return PlainTextResponse("OK")
