"""Annotator tokens: random, shown once, stored only as their SHA-256 in ``<data_dir>/annotators.json``.

A token carries 32 random bytes, so a plain SHA-256 is enough to store it (no password stretching
needed); checks compare digests in constant time against every stored one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
FILE_NAME = "annotators.json"


class AnnotatorError(ValueError):
    """A bad annotator name, a duplicate, or an unreadable token file; the message says what to do."""


def tokens_path(data_dir: Path) -> Path:
    return data_dir / FILE_NAME


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Annotator:
    name: str
    created_at: str


class TokenBook:
    """The annotators and their token digests; reads the file again when it changed on disk, so a
    running UI accepts an annotator added with ``vigil annotators add``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._digests: dict[str, str] = {}
        self._created: dict[str, str] = {}
        self._mtime: float | None = None

    def _reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._digests, self._created, self._mtime = {}, {}, None
            return
        if mtime == self._mtime:
            return
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            entries = doc["annotators"]
            self._digests = {name: e["sha256"] for name, e in entries.items()}
            self._created = {name: e["created_at"] for name, e in entries.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise AnnotatorError(
                f"cannot read the annotator tokens in {self.path}: {e}. Restore it from a backup or "
                "delete it and add the annotators again (`vigil annotators add NAME`)."
            ) from None
        self._mtime = mtime

    def list(self) -> list[Annotator]:
        self._reload()
        return [Annotator(n, self._created[n]) for n in sorted(self._digests)]

    def add(self, name: str) -> str:
        """Create an annotator and return its token (the only time it is ever visible)."""
        if not _NAME.fullmatch(name):
            raise AnnotatorError(
                f"annotator name {name!r} must be 1-64 letters, digits or . _ @ - (starting with a "
                "letter or digit)"
            )
        self._reload()
        if name in self._digests:
            raise AnnotatorError(f"annotator {name!r} exists; pick another name (tokens are shown only once)")
        token = secrets.token_urlsafe(32)
        digests = {**self._digests, name: digest(token)}
        created = {**self._created, name: datetime.now(UTC).isoformat(timespec="seconds")}
        self._write(digests, created)
        return token

    def check(self, token: str | None) -> str | None:
        """The annotator the token belongs to, or None. Every stored digest is compared."""
        # Tokens are URL-safe ASCII; a header that is not (undecodable bytes arrive as surrogates)
        # cannot be one, and would not even encode for hashing.
        if not token or not token.isascii():
            return None
        self._reload()
        presented = digest(token)
        found = None
        for name, stored in self._digests.items():
            if hmac.compare_digest(presented, stored):
                found = name
        return found

    def _write(self, digests: dict[str, str], created: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"annotators": {n: {"sha256": digests[n], "created_at": created[n]} for n in sorted(digests)}}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=2)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._mtime = None
        self._reload()
