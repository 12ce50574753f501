"""The triage routing table covers every Banking77 intent, and the loader says what is wrong."""

import json

import pytest

from models.tasks import banking77_labels
from models.triage_mapping import (
    DEFAULT_PATH,
    MissingIntents,
    TriageMappingError,
    UnknownIntents,
    load_triage_mapping,
)
from streams.settings import REPO_ROOT

LABELS = banking77_labels(REPO_ROOT / "data")


def test_shipped_mapping_covers_every_intent():
    mapping = load_triage_mapping(LABELS)
    assert set(mapping.intents) == set(LABELS) and len(LABELS) == 77
    assert {"fraud", "cards", "payments", "transfers", "top_up", "account", "general"} <= set(mapping.queues)
    for intent in ("compromised_card", "lost_or_stolen_card", "lost_or_stolen_phone",
                   "card_payment_not_recognised", "cash_withdrawal_not_recognised",
                   "direct_debit_payment_not_recognised"):
        route = mapping.route(intent)
        assert (route.queue, route.priority) == ("fraud", "P1")
    p1_sla = max(r.sla_minutes for r in mapping.intents.values() if r.priority == "P1")
    assert all(r.sla_minutes > p1_sla for r in mapping.intents.values() if r.priority != "P1")


def _write(tmp_path, doc):
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps(doc))
    return path


def test_missing_intent_is_named(tmp_path):
    doc = json.loads(DEFAULT_PATH.read_text())
    del doc["intents"]["card_swallowed"], doc["intents"]["pin_blocked"]
    with pytest.raises(MissingIntents) as e:
        load_triage_mapping(LABELS, _write(tmp_path, doc))
    assert e.value.missing == ["card_swallowed", "pin_blocked"]
    assert "card_swallowed" in str(e.value) and "pin_blocked" in str(e.value)


def test_unknown_intent_is_named(tmp_path):
    doc = json.loads(DEFAULT_PATH.read_text())
    doc["intents"]["card_swalowed"] = doc["intents"].pop("card_swallowed")
    with pytest.raises(MissingIntents):
        load_triage_mapping(LABELS, _write(tmp_path, doc))
    with pytest.raises(UnknownIntents, match="card_swalowed"):
        load_triage_mapping(set(LABELS) - {"card_swallowed"}, _write(tmp_path, doc))


def test_bad_priority_is_rejected(tmp_path):
    doc = json.loads(DEFAULT_PATH.read_text())
    doc["intents"]["card_swallowed"]["priority"] = "P0"
    with pytest.raises(TriageMappingError, match="card_swallowed"):
        load_triage_mapping(LABELS, _write(tmp_path, doc))
