"""The versioned triage routing table: every Banking77 intent -> queue, priority and SLA."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_PATH = Path(__file__).with_name("triage_mapping.json")


class TriageMappingError(ValueError):
    """The routing table cannot be used as it is."""


class MissingIntents(TriageMappingError):
    def __init__(self, missing: Iterable[str], path: Path) -> None:
        self.missing = sorted(missing)
        super().__init__(
            f"{path} has no route for {len(self.missing)} intent(s): {', '.join(self.missing)}; "
            "add a queue, priority and sla_minutes for each"
        )


class UnknownIntents(TriageMappingError):
    def __init__(self, unknown: Iterable[str], path: Path) -> None:
        self.unknown = sorted(unknown)
        super().__init__(
            f"{path} routes intent(s) the model does not have: {', '.join(self.unknown)}; "
            "remove them or fix their spelling"
        )


class Route(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    queue: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9_]*$")
    priority: Literal["P1", "P2", "P3", "P4"]
    sla_minutes: int = Field(gt=0)


class TriageMapping(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(min_length=1)
    description: str = ""
    intents: dict[str, Route]

    def route(self, intent: str) -> Route:
        return self.intents[intent]

    @property
    def queues(self) -> tuple[str, ...]:
        return tuple(sorted({r.queue for r in self.intents.values()}))


def read_triage_mapping(path: Path = DEFAULT_PATH) -> TriageMapping:
    """The table as written, not yet checked against a model's labels (enough to name its queues)."""
    try:
        return TriageMapping.model_validate_json(Path(path).read_bytes())
    except FileNotFoundError:
        raise TriageMappingError(f"triage mapping {path} does not exist") from None
    except (ValidationError, json.JSONDecodeError) as e:
        raise TriageMappingError(f"triage mapping {path} is malformed: {e}") from e


def load_triage_mapping(labels: Iterable[str], path: Path = DEFAULT_PATH) -> TriageMapping:
    """Read and validate the table; every label in ``labels`` must have exactly one route."""
    mapping = read_triage_mapping(path)
    wanted = set(labels)
    if missing := wanted - set(mapping.intents):
        raise MissingIntents(missing, Path(path))
    if unknown := set(mapping.intents) - wanted:
        raise UnknownIntents(unknown, Path(path))
    return mapping
