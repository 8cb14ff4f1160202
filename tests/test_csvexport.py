"""CSV cells: RFC 4180 quoting, the JSON's spellings, and no formulas for spreadsheets."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pytest

from app.read.csvexport import cell, render, safe_cell


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("=1+2", "'=1+2"),
        ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("+A1", "'+A1"),
        ("-cmd|'/Ccalc'!A0", "'-cmd|'/Ccalc'!A0"),
        ("-1+cmd|'/Ccalc'!A0", "'-1+cmd|'/Ccalc'!A0"),
        ("+1)", "'+1)"),
        ("+886922161529", "+886922161529"),
        ("-42", "-42"),
        ("+3.5", "+3.5"),
        ("-", "-"),
        ("+", "+"),
        ("208217564", "208217564"),
        ("a=b", "a=b"),
        ("DELIVRD", "DELIVRD"),
        ("", ""),
    ],
)
def test_formula_guard(text: str, written: str) -> None:
    assert safe_cell(text) == written


def test_values_are_written_as_the_json_writes_them() -> None:
    when = dt.datetime(2003, 5, 22, 13, 48, 50, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    assert cell(when) == "2003-05-22T05:48:50Z"
    assert cell(when.replace(microsecond=120000)) == "2003-05-22T05:48:50.12Z"
    assert (cell(True), cell(False), cell(1), cell(0), cell(None)) == (
        "true",
        "false",
        "1",
        "0",
        "",
    )


def test_rfc4180_quoting_round_trips() -> None:
    rows = [["msgid", "batch_id"], ['a,"b', "x"], ["line\nbreak", "plain"]]
    text = render(rows)
    assert text == 'msgid,batch_id\r\n"a,""b",x\r\n"line\nbreak",plain\r\n'
    assert list(csv.reader(io.StringIO(text, newline=""))) == rows
