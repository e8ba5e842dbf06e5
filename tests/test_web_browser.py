"""The fleet page in a real browser (the system's headless Chromium, driven by Playwright)
against a running local stack: every server shows, a stopped worker turns offline without a
reload, the counts match what the site queue received, and a hostile reason stays text."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from bench.common import CHROMIUM_ARGS, system_chromium
from orchestrator.domain.job import Attempt, Outcome
from orchestrator.domain.messages import BotParams, NewMessage
from orchestrator.settings import Settings
from standins.stack import LocalStack, wait_quiet
from workers.contract.job import JobState
from workers.contract.protocol import ErrorKind

pytestmark = pytest.mark.e2e

HEARTBEAT_TTL_S = 5  # the worker's default
MESSAGES = 8
HOSTILE = '<img src=x onerror="window.pwned=1">'
USER, PASSWORD = "operator", "a-long-password"


def chromium() -> str:
    """The system's Chromium; never a downloaded one."""
    found = system_chromium()
    if found is None:
        message = "no chromium on this machine: `make browser` installs Debian's"
        if os.environ.get("OLLAMA_CLOUD_TEST_BROWSER") == "required":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    env = {
        "OLLAMA_CLOUD_HEARTBEAT_TTL_S": str(HEARTBEAT_TTL_S),
        "OLLAMA_CLOUD_WEB_BASIC_AUTH": f"{USER}:{PASSWORD}",
    }
    with LocalStack(extra_env=env, web=True) as running:
        yield running


def dead_letter(stack: LocalStack, job_id: str) -> None:
    """A claimed message given up with a hostile entity and reason, as delivery ends one."""
    ledger, bridge = stack.ledger, "bridge-hostile"
    message = {"id": job_id, "text": "hi", "username": "ada", "timestamp": 1}
    ledger.record_claim(job_id, message, bridge, 600, scored=False)
    assert ledger.mark_waiting(job_id, bridge, entity=HOSTILE, model="m", priority=5)
    job = ledger.get(job_id)
    assert job is not None
    failed = Attempt(attempt=1, server_id="x", error_kind=ErrorKind.TIMEOUT, error=HOSTILE)
    job = job.with_attempt(failed)
    assert ledger.begin_ending(job, f"given up: {HOSTILE}", (JobState.WAITING,))
    assert ledger.finish(job_id, JobState.DEAD, reason=f"given up: {HOSTILE}", outcome=Outcome.DEAD)


def test_the_page_shows_the_fleet_live(stack: LocalStack, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright  # noqa: PLC0415

    executable = chromium()
    with stack.queue_client() as queue:
        for index in range(MESSAGES):
            queue.post_comment(
                NewMessage(id=f"page-{index}", text=f"hello {index}", username="ada",
                           botParams=BotParams(entity="the-eternal"))
            )  # fmt: skip
        wait_quiet(stack, expected=MESSAGES, timeout=120)
        replies = [
            comment
            for comment in queue.comments_after(0)
            if comment.get("message-type") == "AI"
            and str(comment.get("replyTo", "")).startswith("page-")
        ]
    assert len(replies) == MESSAGES
    dead_letter(stack, "page-hostile")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            # Behind basic auth: the page, its script and its event stream all ask for it.
            context = browser.new_context(
                viewport={"width": 1280, "height": 900},
                http_credentials={"username": USER, "password": PASSWORD},
            )
            page = context.new_page()
            page.goto(stack.web_url)
            expect(page.locator("#connection")).to_have_text("live", timeout=10_000)
            for spec in stack.specs:
                state = page.locator(f'tr[data-server="{spec.name}"] .state')
                expect(state).to_have_text("online")
            # The counts are the queue's: every message it got answered once, and scored.
            expect(page.locator('[data-total="answered"] .value')).to_have_text(str(len(replies)))
            expect(page.locator('[data-total="scored"] .value')).to_have_text(str(MESSAGES))
            expect(page.locator("#recent tbody tr")).to_have_count(2 * MESSAGES)
            # Each reply links to Flower's page of the generate task that made it.
            first = page.locator("#recent tbody tr a").first
            job_id = first.text_content()
            flower = Settings.model_fields["flower_url"].default
            href = first.get_attribute("href", timeout=1000) or ""
            assert href.startswith(f"{flower}/task/{quote(f'{job_id}@', safe='')}"), href
            # A hostile entity and reason are shown as the text they are, and run nothing.
            hostile = page.locator('#dead tr[data-job="page-hostile"]')
            expect(hostile).to_contain_text(f"given up: {HOSTILE}")
            assert page.locator("#dead img").count() == 0
            assert page.evaluate("window.pwned") is None

            stopped = stack.specs[-1].name
            stack.processes[f"worker-{stopped}"].stop()  # by its pid, as an operator stops it
            gone_at = time.monotonic()
            row = page.locator(f'tr[data-server="{stopped}"]')
            expect(row.locator(".state")).to_have_text("offline", timeout=HEARTBEAT_TTL_S * 1000)
            assert time.monotonic() - gone_at <= HEARTBEAT_TTL_S
            expect(row).to_contain_text("last beat")
            for spec in stack.specs[:-1]:
                expect(page.locator(f'tr[data-server="{spec.name}"] .state')).to_have_text("online")
            screenshot = tmp_path / "fleet-page.png"
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"fleet page screenshot: {screenshot}")
            assert screenshot.stat().st_size > 10_000
        finally:
            browser.close()
