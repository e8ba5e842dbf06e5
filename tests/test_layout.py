"""The shape of the project: what installs where, who may touch what, and what each public
surface offers."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import workers
from workers.contract.celery_config import celery_config
from workers.contract.job import STEPS, JobState
from workers.contract.protocol import ErrorKind
from workers.contract.scripts import LUA_DIR, script_names, script_source
from workers.contract.settings import CelerySettings

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("orchestrator", "workers")


def python_files(*folders: str) -> Iterator[Path]:
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def probe_imports(modules: list[str], forbidden_root: str) -> list[str]:
    """Import `modules` in a fresh interpreter; the modules of `forbidden_root` it loaded."""
    probe = (
        f"import sys, importlib; [importlib.import_module(m) for m in {modules!r}];"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] == {forbidden_root!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return list(ast.literal_eval(result.stdout.strip().splitlines()[-1]))


# Who imports whom ----------------------------------------------------------------------------


def test_workers_imports_nothing_from_orchestrator() -> None:
    for path in python_files("workers"):
        roots = {name.split(".")[0] for name in imports_of(path)}
        assert not roots & {"orchestrator", "standins"}, f"{relative(path)} imports {roots}"


def test_the_product_never_imports_a_stand_in() -> None:
    """Only the command line reaches the stand-ins (for `demo`, `sim` and `queue serve`), and
    only inside those commands."""
    for path in python_files(*PRODUCT):
        if relative(path) == "orchestrator/cli.py":
            continue
        leaked = {name for name in imports_of(path) if name.split(".")[0] == "standins"}
        assert not leaked, f"{relative(path)} imports {leaked}"


@pytest.mark.e2e
def test_loaded_modules_keep_to_their_side() -> None:
    """What an import really loads, in a fresh interpreter, as a Mac and the host start."""
    mac = ["workers", "workers.celery", "workers.tasks", "workers.heartbeat"]
    assert probe_imports(mac, "orchestrator") == []
    host = [
        "orchestrator.bridge",
        "orchestrator.celery",
        "orchestrator.control.tasks",
        "orchestrator.ops.jobs",
        "orchestrator.ops.status",
        "orchestrator.cli",
    ]
    assert probe_imports(host, "standins") == []


def test_the_domain_does_no_io() -> None:
    """Pure policy: no Redis, HTTP, Celery or state of ours in `orchestrator/domain`."""
    io = {"redis", "httpx", "celery", "kombu", "orchestrator.state", "orchestrator.services"}
    for path in python_files("orchestrator/domain"):
        used = {name for name in imports_of(path) if any(name.startswith(m) for m in io)}
        assert not used, f"{relative(path)} imports {used}"


def test_the_contract_imports_neither_side() -> None:
    for path in python_files("workers/contract"):
        outside = {
            name
            for name in imports_of(path)
            if name.split(".")[0] in {"orchestrator", "standins"}
            or (name.startswith("workers.") and not name.startswith("workers.contract"))
        }
        assert not outside, f"{relative(path)} imports {outside}"


# Who touches a job's keys --------------------------------------------------------------------

# The key builders of a job's record, its indexes and its once-guards.
JOB_KEYS = {
    "job", "job_prefix", "active_jobs", "retry_jobs", "dead_letters", "finished_jobs",
    "once_eq", "once_eq_prefix",
}  # fmt: skip
JOB_KEY_OWNERS = {
    "orchestrator/state/ledger.py",  # the ledger
    "workers/contract/attempts.py",  # a worker's two steps on its job
    "workers/contract/keys.py",  # where the names are built
}


def test_only_the_ledger_touches_a_jobs_keys() -> None:
    for path in python_files(*PRODUCT, "standins", "bench"):
        if relative(path) in JOB_KEY_OWNERS:
            continue
        tree = ast.parse(path.read_text(), str(path))
        touched = sorted(
            f"line {node.lineno}: .{node.attr}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and node.attr in JOB_KEYS
            and ast.unparse(node.value).split(".")[-1] == "keys"
        )
        literals = sorted(
            f"line {node.lineno}: {node.value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and re.search(r":(job|jobs|once):", node.value)
        )
        assert not touched + literals, f"{relative(path)} touches job keys: {touched + literals}"


# Redis scripts -------------------------------------------------------------------------------

HEADER_LINE = re.compile(r"^-- (KEYS|ARGV)\[(\d+)(\.\.)?\]")


def test_every_redis_script_is_a_lua_file_with_a_header_of_its_keys_and_arguments() -> None:
    assert len(script_names()) >= 16
    for name in script_names():
        lines = (LUA_DIR / f"{name}.lua").read_text().splitlines()
        assert lines[0].startswith(f"-- {name}: "), f"{name}.lua: first line names it"
        header = [line for line in lines if line.startswith("--")]
        body = "\n".join(line for line in lines if not line.startswith("--"))
        documented = {(m[1], int(m[2])): bool(m[3]) for m in map(HEADER_LINE.match, header) if m}
        assert any(line.startswith("-- Returns") for line in header), f"{name}.lua: Returns"
        for kind, index in {(k, int(i)) for k, i in re.findall(r"(KEYS|ARGV)\[(\d+)\]", body)}:
            covered = (kind, index) in documented or any(
                open_ended and kind == known_kind and index >= start
                for (known_kind, start), open_ended in documented.items()
            )
            assert covered, f"{name}.lua uses {kind}[{index}] without a header line for it"


def test_scripts_spell_no_job_state_and_name_only_real_ones() -> None:
    names = {state.name for state in JobState}
    for name in script_names():
        text = (LUA_DIR / f"{name}.lua").read_text()
        body = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
        for state in JobState:
            assert f"'{state.value}'" not in body, f"{name}.lua spells {state.value!r}"
        code = re.sub(r"'[^']*'", "''", body)  # Redis commands are quoted
        used = set(re.findall(r"\b([A-Z][A-Z_]+)\b", code)) - {"KEYS", "ARGV"}
        assert used <= names, f"{name}.lua names {used - names}, not job states"
        assert script_source(name).endswith(text)


def test_no_redis_script_is_written_inline() -> None:
    for path in python_files(*PRODUCT, "standins", "bench"):
        if relative(path) == "workers/contract/scripts.py":
            continue
        source = path.read_text()
        for call in ("register_script(", ".eval(", ".evalsha("):
            assert call not in source, f"{relative(path)} runs a script of its own ({call})"


# States and error kinds ------------------------------------------------------------------------

DEFINED_IN = {"workers/contract/job.py", "workers/contract/protocol.py"}


def string_comparisons(path: Path, values: set[str], subject: str) -> list[str]:
    """Comparisons of a string literal among `values` with something named like `subject`."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        literals = {
            item.value
            for side in sides
            for item in ast.walk(side)
            if isinstance(item, ast.Constant) and isinstance(item.value, str)
        }
        named = any(subject in ast.unparse(side).lower() for side in sides)
        if literals & values and named:
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_no_state_or_error_kind_is_compared_as_a_string() -> None:
    states = {state.value for state in JobState}
    kinds = {kind.value for kind in ErrorKind}
    for path in python_files(*PRODUCT, "standins"):
        if relative(path) in DEFINED_IN:
            continue
        found = string_comparisons(path, states, "state") + string_comparisons(path, kinds, "kind")
        assert not found, f"{relative(path)}: {found}"


def test_a_finished_job_moves_only_by_an_operators_hand() -> None:
    """Every state has its steps; done and rejected are final, and a dead letter moves only to
    be retried or dropped."""
    assert set(STEPS) == set(JobState)
    assert STEPS[JobState.DONE] == STEPS[JobState.REJECTED] == frozenset()
    assert STEPS[JobState.DEAD] == {JobState.RETRYING, JobState.ENDING}
    for state in JobState:
        if not state.finished:
            assert STEPS[state], state


# Public surfaces -----------------------------------------------------------------------------


def test_public_names_exist() -> None:
    for name in workers.__all__:
        assert hasattr(workers, name), name


def test_celery_speaks_json_only_and_keeps_tasks_until_done() -> None:
    config = celery_config(CelerySettings())
    assert config["accept_content"] == ["json"]
    assert config["task_serializer"] == config["result_serializer"] == "json"
    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is True
    assert config["worker_prefetch_multiplier"] == 1
    assert config["worker_cancel_long_running_tasks_on_connection_loss"] is True
    assert config["broker_transport_options"]["visibility_timeout"] >= 3600


def test_the_broker_keeps_its_keys_under_the_fleets_prefix() -> None:
    config = celery_config(CelerySettings(key_prefix="fleet-a"))
    assert config["broker_transport_options"]["global_keyprefix"] == "fleet-a:broker:"


@pytest.mark.e2e
def test_celery_apps_are_found_as_operators_start_them() -> None:
    for app_name in ("workers", "orchestrator"):
        result = subprocess.run(
            [sys.executable, "-m", "celery", "-A", app_name, "report"],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "pickle" not in result.stdout.split("accept_content")[1].split("\n")[0]


def test_procfile_runs_the_orchestrator_host() -> None:
    entries = dict(
        line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines()
        if line and not line.startswith("#")
    )  # fmt: skip
    assert set(entries) == {"bridge", "control", "beat", "flower", "web"}
    assert "-Q control" in entries["control"]
    assert "ollama-cloud bridge" in entries["bridge"]


@pytest.mark.e2e
@pytest.mark.skipif(
    not (shutil.which("docker-compose") or shutil.which("docker")), reason="no compose tool here"
)
def test_compose_file_is_valid() -> None:
    command = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
    probe = subprocess.run([*command, "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("docker has no compose plugin here")
    env = {
        **os.environ,
        "REDIS_PASSWORD": "pw",
        "OLLAMA_CLOUD_QUEUE_URL": "http://queue.example",
        "FLOWER_BASIC_AUTH": "admin:pw",
    }
    result = subprocess.run(
        [*command, "config", "-q"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
