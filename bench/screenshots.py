"""The README's pictures, made again from a busy local fleet: the fleet page
(`docs/fleet-page.png`, 1280 wide) and the `ollama-cloud status` table (`docs/status.png`).

    .venv/bin/python bench/screenshots.py [--out docs] [--chromium /usr/bin/chromium]

Starts the demo's stack (three simulated Macs, their workers, control, beat, the bridge and the
fleet page), posts messages faster than the fleet answers them, and takes both pictures while
jobs are in flight. Uses the system's Chromium through Playwright; never downloads a browser.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: the project root makes `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import io
import itertools
import math
import random
import re
import tempfile

from playwright.sync_api import Browser, expect, sync_playwright
from rich.console import Console
from rich.measure import Measurement

from bench.common import CHROMIUM_ARGS, system_chromium
from orchestrator.ops.status import read_status, status_table
from standins.demo import sample_message
from standins.stack import LocalStack, stop_on_sigterm
from standins.waiting import wait_for

WIDTH = 1280
HEIGHT = 1200
STATUS_COLUMNS = 150


def busy(stack: LocalStack, posted: int) -> bool:
    """Work in flight on most servers, and enough answered to fill the lists."""
    stack.check_alive()
    status = read_status(stack.state)
    working = sum(row.inflight > 0 for row in status.servers)
    return working >= 2 and status.outcomes.get("answered", 0) >= min(12, posted // 2)


def fleet_page(browser: Browser, url: str, out: Path) -> None:
    page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
    page.goto(url)
    expect(page.locator("#connection")).to_have_text("live", timeout=10_000)
    expect(page.locator("#recent tbody tr").first).to_have_attribute("data-job", timeout=10_000)
    page.screenshot(path=str(out))  # the top of the page: servers, totals, jobs, replies
    page.close()


def status_picture(browser: Browser, stack: LocalStack, out: Path) -> None:
    """The status table as the terminal shows it: rich's SVG of it, photographed."""
    table = status_table(read_status(stack.state))
    wide = Console(width=STATUS_COLUMNS, file=io.StringIO())
    columns = Measurement.get(wide, wide.options, table).maximum
    console = Console(record=True, width=columns + 1, file=io.StringIO())
    console.print(table)
    with tempfile.TemporaryDirectory() as folder:
        svg = Path(folder) / "status.svg"
        svg.write_text(console.export_svg(title="ollama-cloud status"))
        # The picture at its own size: the SVG's viewBox says it.
        width, height = (float(n) for n in re.findall(r'viewBox="0 0 ([\d.]+) ([\d.]+)"',
                                                       svg.read_text())[0])  # fmt: skip
        page = browser.new_page(
            viewport={"width": math.ceil(width), "height": math.ceil(height)},
            device_scale_factor=1,
        )
        page.goto(svg.as_uri())
        page.screenshot(path=str(out), omit_background=True)
        page.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--chromium", default=system_chromium() or "/usr/bin/chromium")
    parser.add_argument("--rate", type=float, default=12.0, help="messages a second")
    args = parser.parse_args()
    if not Path(args.chromium).exists():
        print(f"no chromium at {args.chromium}: `make browser` installs Debian's")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    stop_on_sigterm()
    rng = random.Random(7)
    counter = itertools.count()
    with LocalStack(web=True) as stack, stack.queue_client() as queue:
        print(f"fleet page at {stack.web_url}")
        posted = 0

        def post_and_look() -> bool:
            nonlocal posted
            queue.post_comment(sample_message(next(counter), rng))
            posted += 1
            return busy(stack, posted)

        wait_for(post_and_look, 120, interval=1.0 / args.rate, what="a busy fleet")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS
            )
            try:
                fleet_page(browser, stack.web_url, args.out / "fleet-page.png")
                status_picture(browser, stack, args.out / "status.png")
            finally:
                browser.close()
    print(f"wrote {args.out / 'fleet-page.png'} and {args.out / 'status.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
