"""The alerting rules in deploy/prometheus: valid, tested against sample series by promtool,
reading only metrics the service exports; and the metrics made for them."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Callable
from typing import Any

import yaml

from app.read.backlog import oldest_pending_age
from tests.conftest import ROOT, SEED_REPORT, report, require_tool
from tests.test_deploy import assert_queries_read_exported_metrics

RULES = ROOT / "deploy" / "prometheus"


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load((RULES / "alerts.yml").read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules_and_their_tests_pass() -> None:
    promtool = require_tool("promtool", "Debian's prometheus package ships it")
    checked = subprocess.run(
        [promtool, "check", "rules", "alerts.yml"], cwd=RULES, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yml"], cwd=RULES, capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_is_tested_and_has_a_runbook() -> None:
    alerts = [rule for rule in rules() if "alert" in rule]
    tests = (RULES / "alerts.test.yml").read_text()
    readme = (ROOT / "deploy" / "README.md").read_text()
    for rule in alerts:
        name = rule["alert"]
        assert f"alertname: {name}\n" in tests, f"{name} has no promtool test"
        assert rule["labels"]["severity"] in ("page", "ticket")
        anchor = rule["annotations"]["runbook"].split("#")[1]
        assert anchor == name.lower()
        # a heading of its own in the runbook, whose anchor GitHub makes from the name
        assert f"\n#### {name}\n" in readme, f"no runbook paragraph for {name}"


async def test_the_rules_read_only_metrics_the_app_exports(app_factory: Callable[..., Any]) -> None:
    async with app_factory() as (_, client):
        assert (await client.post("/callbacks/mboxii", data=SEED_REPORT)).status_code == 200
        assert (await client.post("/callbacks/mboxii", data=report(mobile="12"))).status_code == 422
        text = (await client.get("/metrics")).text
    queries = [rule["expr"] for rule in rules()]
    assert_queries_read_exported_metrics(queries, text)


async def test_the_oldest_pending_delivery_is_measured(app_factory: Callable[..., Any]) -> None:
    now = dt.datetime.now(dt.UTC)

    def taipei(when: dt.datetime) -> str:
        return (when + dt.timedelta(hours=8)).strftime("%Y/%m/%d %H:%M:%S")

    async with app_factory() as (app, client):
        engine = app.app_state.engine
        assert await oldest_pending_age(engine, now) == 0.0
        waiting = report(
            msgid="w1", statusstr="ENROUTE", donetime=taipei(now - dt.timedelta(hours=2))
        )
        assert (await client.post("/callbacks/mboxii", data=waiting)).status_code == 200
        newer = report(
            msgid="w2", statusstr="ENROUTE", donetime=taipei(now - dt.timedelta(hours=1))
        )
        assert (await client.post("/callbacks/mboxii", data=newer)).status_code == 200
        # a final report ends the wait; a week-old pending one is past the horizon
        done = report(msgid="d1", donetime=taipei(now - dt.timedelta(hours=5)))
        assert (await client.post("/callbacks/mboxii", data=done)).status_code == 200
        old = report(msgid="o1", statusstr="ENROUTE", donetime=taipei(now - dt.timedelta(days=8)))
        assert (await client.post("/callbacks/mboxii", data=old)).status_code == 200
        assert abs(await oldest_pending_age(engine, now) - 7200) < 2
        assert (await client.post("/callbacks/mboxii", data=report(msgid="w1"))).status_code == 200
        assert abs(await oldest_pending_age(engine, now) - 3600) < 2
        text = (await client.get("/metrics")).text
        assert "mboxii_dlr_deliveries_pending_oldest_seconds " in text
        assert "mboxii_dlr_ingest_queue_capacity 10000.0" in text
