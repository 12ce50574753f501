"""Whether a loaded model works at all, checked before a worker scores the stream with it.

A promoted version can be broken in ways its files do not show (NaN weights, a device that fails on
it). A worker that starts on such a champion would fail every batch and restart for ever; one that
hot swaps to it would do the same. So a version must score one plain text before it serves, and a
worker that follows the champion falls back to the last champion that does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from models.registry import ModelNotFound, RegistryError
from models.scoring import Scorer

# Any working model scores this; when it fails, the fault is not in the messages.
CONTROL_TEXT = "The company reported its quarterly results on Tuesday."

# A lost device fails every version: trying a few earlier champions is enough to tell, and trying
# dozens of retrains would only delay the worker's exit with the reason.
FALLBACK_DEPTH = 3


class ModelBroken(RuntimeError):
    """A model version that cannot score a plain text (or no version that can)."""


def self_test(scorer: Scorer) -> None:
    """Raise ``ModelBroken`` when ``scorer`` cannot score ``CONTROL_TEXT``."""
    try:
        scorer.score([CONTROL_TEXT])
    except Exception as exc:
        raise ModelBroken(
            f"the {scorer.task} model {scorer.model_version} cannot score a plain control text: {exc!r}"
        ) from exc


def refusal_reason(exc: Exception) -> str:
    """Why a version was refused, for logs and model events."""
    if isinstance(exc, ModelBroken):
        return str(exc)
    # The registry's messages say what to do; anything else is unexpected, so its type is kept.
    return f"cannot be loaded: {exc}" if isinstance(exc, RegistryError) else f"cannot be loaded: {exc!r}"


def load_tested(load: Callable[[str], Scorer], version: str) -> Scorer:
    scorer = load(version)
    self_test(scorer)
    return scorer


def first_working(
    task: str, candidates: Sequence[str], load: Callable[[str], Scorer]
) -> tuple[Scorer, dict[str, str]]:
    """The first of ``candidates`` (versions, best first) that loads and passes the self test, and
    why each one before it was refused (version -> reason)."""
    refused: dict[str, str] = {}
    for version in candidates:
        try:
            return load_tested(load, version), refused
        except ModelNotFound:
            raise  # no model at all: a setup error, with its own instructions
        except Exception as exc:  # noqa: BLE001 - a version that fails to load is refused like a broken one
            refused[version] = refusal_reason(exc)
    reasons = "; ".join(f"{v}: {why}" for v, why in refused.items())
    raise ModelBroken(
        f"no {task} version works here ({reasons}). When every version fails the device is the likely "
        "fault: score on the CPU with VIGIL_DEVICE=cpu. Otherwise promote a version that works with "
        f"`vigil models promote {task} VERSION`"
    )
