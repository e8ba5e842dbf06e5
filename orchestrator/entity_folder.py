"""The entities folder, kept current: files added, changed or removed take effect for the next
message, in the bridge and in control, without a restart.

The folder is looked at no more than once a second, and a file is read again only when its
modification time or size changed. A file that cannot be used is skipped with one line naming
the file and the field; a file an edit broke keeps its last good version, said once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from orchestrator.domain.entities import (
    CHOICES,
    GLOBAL_FILE,
    Entity,
    EntityCatalog,
    GlobalSettings,
    as_the_site_bot_reads,
)
from orchestrator.errors import EntityError

log = logging.getLogger(__name__)

LOOK_EVERY_S = 1.0


@dataclass
class FileReading:
    """What one file gave, as of one version of it."""

    version: tuple[int, int]  # modification time (ns) and size
    entities: list[Entity] = field(default_factory=list)
    global_settings: GlobalSettings | None = None
    problem: str | None = None  # why the file (or part of it) cannot be used


def one_line(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'entity'}: {error['msg']}"
        for error in exc.errors()[:5]
    )


def read_file(path: Path, version: tuple[int, int]) -> FileReading:
    """One file: `global.json`, one entity (its id the file's name), a list of entities, or
    `{"entities": [...]}`."""
    reading = FileReading(version)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # unreadable, not UTF-8, not JSON,
        reading.problem = str(exc)[:200]  # a number past Python's digits, nesting too deep
        return reading
    if path.name == GLOBAL_FILE:
        try:
            reading.global_settings = GlobalSettings.model_validate(document)
        except ValidationError as exc:
            reading.problem = one_line(exc)
        except (ValueError, TypeError, RecursionError) as exc:
            reading.problem = str(exc)[:200]
        return reading
    if isinstance(document, dict) and isinstance(document.get("entities"), list):
        entries, stem = document["entities"], None
    elif isinstance(document, list):
        entries, stem = document, None
    else:
        entries, stem = [document], path.stem
    problems = []
    for index, entry in enumerate(entries):
        where = "" if stem else f"[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{where} not a JSON object".strip())
            continue
        try:
            fields, notes = as_the_site_bot_reads(entry)
            if stem:
                if entry.get("id") not in (None, stem):
                    notes.append(f"id {entry.get('id')!r} is not the file's name: {stem!r} used")
                fields["id"] = stem
            entity = Entity.model_validate(fields)
        except ValidationError as exc:
            problems.append(f"{where} {one_line(exc)}".strip())
            continue
        except (ValueError, TypeError, RecursionError) as exc:  # whatever else a value holds
            problems.append(f"{where} {str(exc)[:200]}".strip())
            continue
        if notes:
            log.info("entity file %s%s: %s", path.name, where, "; ".join(notes))
        reading.entities.append(entity)
    reading.problem = " | ".join(problems) or None
    return reading


class EntityFolder:
    """The entities of a folder as of now (looked at no more than once a second)."""

    def __init__(
        self,
        folder: Path,
        *,
        look_every_s: float = LOOK_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not folder.is_dir():
            raise EntityError(f"entities folder {folder} does not exist or is not a folder")
        self.folder = folder
        self.look_every_s = look_every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._readings: dict[str, FileReading] = {}
        self._told: set[tuple[str, tuple[int, int]]] = set()  # (file, version) said once
        self._catalog = EntityCatalog()
        self._looked_at: float | None = None
        self.look()
        log.info("loaded %d entities from %s", len(self._catalog), folder)
        for choice in CHOICES:
            log.info("entities: %s", choice)

    def catalog(self) -> EntityCatalog:
        """The entities and global settings now; the folder is looked at again when due."""
        now = self._clock()
        if self._looked_at is None or now - self._looked_at >= self.look_every_s:
            self.look()
        return self._catalog

    def look(self) -> None:
        """Read what changed in the folder since the last look."""
        with self._lock:
            self._looked_at = self._clock()
            try:
                found = {
                    path.name: path
                    for path in self.folder.iterdir()
                    if path.suffix == ".json" and path.is_file()
                }
            except OSError as exc:
                log.warning(
                    "entities folder %s unreadable: %s; keeping what was loaded", self.folder, exc
                )
                return
            changed = False
            for name in set(self._readings) - set(found):
                log.info("entity file %s removed", name)
                del self._readings[name]
                changed = True
            for name, path in sorted(found.items()):
                try:
                    stat = path.stat()
                except OSError:
                    continue
                version = (stat.st_mtime_ns, stat.st_size)
                known = self._readings.get(name)
                if known is not None and known.version == version:
                    continue
                reading = read_file(path, version)
                changed = True
                self._say_problem(name, reading, known)
                if (
                    reading.problem
                    and known is not None
                    and not reading.entities
                    and not (reading.global_settings)
                ):
                    known.version = version  # keep the last good version until the next edit
                    continue
                self._readings[name] = reading
            if changed:
                self._catalog = self._build()

    def _say_problem(self, name: str, reading: FileReading, known: FileReading | None) -> None:
        if not reading.problem or (name, reading.version) in self._told:
            return
        self._told.add((name, reading.version))
        if known is not None and (known.entities or known.global_settings):
            log.warning(
                "entity file %s cannot be used since its last edit (%s): its last good version "
                "stays in use", name, reading.problem,
            )  # fmt: skip
        else:
            log.warning("entity file %s skipped: %s", name, reading.problem)

    def _build(self) -> EntityCatalog:
        entities: dict[str, Entity] = {}
        global_settings = GlobalSettings()
        for name in sorted(self._readings):
            reading = self._readings[name]
            if reading.global_settings is not None:
                global_settings = reading.global_settings
            for entity in reading.entities:
                if entity.id in entities:
                    log.warning("entity file %s: id %r already loaded, skipped", name, entity.id)
                    continue
                entities[entity.id] = entity
        return EntityCatalog(entities, global_settings)

    # A catalog's reading, now ----------------------------------------------------------------

    def get(self, entity_id: str) -> Entity | None:
        """The entity now; one named by a message but not loaded yet is looked for at once,
        should its file have been added within the second."""
        found = self.catalog().get(entity_id)
        if found is None and self._has_file_for(entity_id):
            self.look()
            found = self._catalog.get(entity_id)
        return found

    def _has_file_for(self, entity_id: str) -> bool:
        if not entity_id or "/" in entity_id or entity_id.startswith("."):
            return False
        name = f"{entity_id}.json"
        return name not in self._readings and (self.folder / name).is_file()

    @property
    def global_settings(self) -> GlobalSettings:
        return self.catalog().global_settings

    def __iter__(self) -> Iterator[Entity]:
        return iter(self.catalog())

    def __len__(self) -> int:
        return len(self.catalog())


def load_entities(folder: Path) -> EntityCatalog:
    """The folder's entities as they are now, read once."""
    return EntityFolder(folder).catalog()
