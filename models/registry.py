"""A versioned model registry on disk.

Layout: ``<root>/<task>/<version>/`` (save_pretrained safetensors, tokenizer, ``card.json``) with
versions ``v1, v2, ...`` per task, and ``<root>/<task>/champion.json`` naming the champion and the
champions before it (so ``rollback`` can step back). A task's first version becomes its champion;
later versions wait for a promotion (``vigil models promote``, ``--promote``, the retrain gate).
Every write that others may read is atomic: a version directory is built under a temporary name
and renamed into place; the pointer is written to a temporary file and ``os.replace``d, under a
lock, so that two promotions at once both land in the lineage. A version number is never given
twice, even after its directory was deleted, while the lineage names it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)
CHAMPION = "champion"
_VERSION = re.compile(r"^v([1-9][0-9]*)$")
_POINTER = "champion.json"
_POINTER_LOCK = ".champion.lock"
# Readable by the other users a deployment may run workers as (mkdtemp and mkstemp give 0700/0600,
# and safetensors writes weights 0600 whatever the umask).
_DIR_MODE, _FILE_MODE = 0o755, 0o644


class RegistryError(RuntimeError):
    """A registry operation that cannot be done."""


class ModelNotFound(RegistryError):
    pass


class DamagedPointer(RegistryError):
    """champion.json cannot be read as a champion and its history (a truncated write, a hand edit).
    A promotion writes it anew."""


class CardMismatch(RegistryError):
    """A version directory whose card names another task or version: it was copied or moved by hand,
    so what it holds is not what its place says (a triage model serving news, rows stamped with a
    version that is not the champion)."""


class Metrics(BaseModel):
    model_config = ConfigDict(extra="allow")

    eval_set: str = Field(description="What the metrics were measured on.")
    n: int
    accuracy: float
    macro_f1: float


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str
    version: str
    model_name: str
    labels: list[str]
    metrics: Metrics | None
    data_fingerprint: str
    parent_version: str | None = Field(None, description="The champion when this version was trained.")
    base_encoder: str
    max_length: int
    training_config: dict[str, Any]
    created_at: datetime


def _version_number(name: str) -> int | None:
    m = _VERSION.match(name)
    return int(m.group(1)) if m else None


def _share(directory: Path) -> None:
    """Give ``directory`` and everything in it the modes that let other users read it."""
    for parent, _dirs, files in os.walk(directory):
        os.chmod(parent, _DIR_MODE)
        for name in files:
            os.chmod(os.path.join(parent, name), _FILE_MODE)


def _write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def task_dir(self, task: str) -> Path:
        return self.root / task

    def versions(self, task: str) -> list[str]:
        """Versions of ``task``, oldest first."""
        d = self.task_dir(task)
        if not d.is_dir():
            return []
        found = [(n, p.name) for p in d.iterdir() if p.is_dir() and (n := _version_number(p.name))]
        return [name for _, name in sorted(found)]

    def has_any(self, task: str) -> bool:
        return bool(self.versions(task))

    def _pointer(self, task: str) -> dict[str, Any]:
        path = self.task_dir(task) / _POINTER
        if not path.is_file():
            return {"champion": None, "history": []}
        try:
            pointer = json.loads(path.read_text(encoding="utf-8"))
            champion, history = pointer["champion"], pointer.get("history", [])
            if not (champion is None or isinstance(champion, str)) or not isinstance(history, list):
                raise ValueError("champion must be a version name and history a list")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DamagedPointer(
                f"the champion pointer {path} is damaged ({e}); promote the version to serve with "
                f"`vigil models promote {task} VERSION`, which writes it anew"
            ) from None
        return {"champion": champion, "history": history}

    @contextmanager
    def _pointer_locked(self, task: str, *, replace_damaged: bool = False) -> Iterator[dict[str, Any]]:
        """The pointer, read under the task's lock, held until the block's write is done.
        ``replace_damaged``: a damaged pointer reads as no champion and no history (for a block
        that writes a champion, the repair the damage's message names)."""
        self.task_dir(task).mkdir(parents=True, exist_ok=True)
        with open(self.task_dir(task) / _POINTER_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                pointer = self._pointer(task)
            except DamagedPointer as e:
                if not replace_damaged:
                    raise
                log.warning("%s; writing it anew, without the earlier champions", e)
                pointer = {"champion": None, "history": []}
            yield pointer

    def champion(self, task: str) -> str | None:
        """The promoted version, or None when nothing was promoted."""
        return self._pointer(task)["champion"]

    def champions(self, task: str) -> list[str]:
        """The champion, then the champions before it, newest first; versions since deleted are left out."""
        pointer = self._pointer(task)
        lineage = [pointer["champion"], *reversed(pointer["history"])] if pointer["champion"] else []
        return [v for v in dict.fromkeys(lineage) if self._has_card(task, v)]

    def _not_found(self, task: str, what: str) -> ModelNotFound:
        return ModelNotFound(
            f"no {what} model for task {task!r} in {self.root}: run `vigil train --task {task}` "
            f"(versions present: {', '.join(self.versions(task)) or 'none'})"
        )

    def _has_card(self, task: str, version: str) -> bool:
        return (self.task_dir(task) / version / "card.json").is_file()

    def _carded(self, task: str) -> list[str]:
        """Versions with a card, oldest first (a directory without one is no usable version)."""
        return [v for v in self.versions(task) if self._has_card(task, v)]

    def resolve(self, task: str, version: str = CHAMPION) -> Path:
        """The directory of ``version`` ('champion': the promoted one; in a registry written before
        first versions became champions, the newest). ``CardMismatch`` when its card names another
        task or version."""
        if version == CHAMPION:
            version = self.champion(task) or (self._carded(task) or [None])[-1]
            if version is None:
                raise self._not_found(task, "trained")
        path = self.task_dir(task) / version
        if _version_number(version) is None or not (path / "card.json").is_file():
            raise self._not_found(task, f"{version!r}")
        self._check_card(task, version, path)
        return path

    def _check_card(self, task: str, version: str, path: Path) -> None:
        card = ModelCard.model_validate_json((path / "card.json").read_bytes())
        if (card.task, card.version) != (task, version):
            raise CardMismatch(
                f"{path} holds the card of {card.task} {card.version}, not of {task} {version}: the directory "
                f"was copied or moved by hand. Delete it (a new version is made by `vigil train --task {task}`), "
                f"and if it is the champion, promote another with `vigil models promote {task} VERSION`"
            )

    def card(self, task: str, version: str = CHAMPION) -> ModelCard:
        return ModelCard.model_validate_json((self.resolve(task, version) / "card.json").read_bytes())

    def list(self) -> list[tuple[ModelCard, bool]]:
        """Every version of every task, with whether it is its task's champion."""
        out = []
        if not self.root.is_dir():
            return out
        for task_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            champ = self.champion(task_dir.name)
            for v in self._carded(task_dir.name):
                try:
                    out.append((self.card(task_dir.name, v), v == champ))
                except CardMismatch as e:  # the others are still worth listing
                    log.warning("%s", e)
        return out

    def show(self, task: str, version: str = CHAMPION) -> dict[str, Any]:
        card = self.card(task, version)
        return {**card.model_dump(mode="json"), "path": str(self.resolve(task, card.version)),
                "champion": self.champion(task) == card.version}

    def add(self, task: str, write: Any, card_fields: dict[str, Any]) -> ModelCard:
        """Create the next version: ``write(dir)`` fills a temporary directory, then it is renamed.

        ``card_fields`` is everything in the card except task, version, parent_version and created_at.
        """
        task_dir = self.task_dir(task)
        task_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=task_dir, prefix=".staging-"))
        try:
            write(staging)
            before = self.versions(task)
            pointer = self._pointer(task)
            # A deleted version the lineage still names keeps its number: a new model under it would
            # be taken for the one that was served, and become champion if that one was.
            named = [*before, *pointer["history"], *([pointer["champion"]] if pointer["champion"] else [])]
            n = max((_version_number(v) or 0 for v in named), default=0) + 1
            while True:
                version = f"v{n}"
                card = ModelCard(task=task, version=version, parent_version=pointer["champion"],
                                 created_at=datetime.now(UTC), **card_fields)
                (staging / "card.json").write_text(card.model_dump_json(indent=2), encoding="utf-8")
                _share(staging)  # before it is in place: a worker may load it as soon as it is
                try:
                    # rename is atomic and fails if another trainer took this number first
                    os.rename(staging, task_dir / version)
                except OSError:
                    if not (task_dir / version).exists():
                        raise
                    n += 1
                    continue
                if pointer["champion"] is None:
                    # What served until now keeps serving: the newest before this one (the rule
                    # that read a registry with no pointer), or, for a first version, this one.
                    carded = [v for v in before if self._has_card(task, v)]
                    self._first_champion(task, carded[-1] if carded else version)
                return card
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def _first_champion(self, task: str, version: str) -> None:
        with self._pointer_locked(task) as pointer:
            if pointer["champion"] is None:  # not promoted meanwhile
                _write_json_atomic(self.task_dir(task) / _POINTER, {
                    "champion": version, "history": [], "updated_at": datetime.now(UTC).isoformat()})

    def promote(self, task: str, version: str) -> str:
        """Make ``version`` the champion; returns its name ('champion' names the current one)."""
        version = self.resolve(task, version).name  # must exist; never the alias itself
        with self._pointer_locked(task, replace_damaged=True) as pointer:
            if pointer["champion"] == version:
                return version
            history = pointer["history"] + ([pointer["champion"]] if pointer["champion"] else [])
            _write_json_atomic(self.task_dir(task) / _POINTER,
                               {"champion": version, "history": history,
                                "updated_at": datetime.now(UTC).isoformat()})
        return version

    def rollback(self, task: str) -> str:
        """Make the previous champion the champion again; returns it."""
        with self._pointer_locked(task) as pointer:
            champion, history = pointer["champion"], list(pointer["history"])
            # Versions since deleted are skipped, and so is the champion itself (promoted twice).
            while history and (history[-1] == champion or not self._has_card(task, history[-1])):
                history.pop()
            if not history:
                raise RegistryError(
                    f"task {task!r} has no earlier champion to roll back to "
                    f"(champion: {champion or 'none'}); promote a version with "
                    f"`vigil models promote {task} VERSION`"
                )
            previous = history.pop()
            _write_json_atomic(self.task_dir(task) / _POINTER,
                               {"champion": previous, "history": history,
                                "updated_at": datetime.now(UTC).isoformat()})
        return previous
