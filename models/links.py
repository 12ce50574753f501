"""Links removed from a text before a sentiment model reads it.

Half the financial tweets end in a shortened link (``https://t.co/...``), which says nothing of
the sentiment and cost 29% of a tweet's tokens as word pieces (benchmarks/RESULTS.md, "Links
removed before the sentiment model"). A sentiment version's tokenizer removes links in its
pre-tokenizer, so the rule travels in the version's own tokenizer.json: scoring, retraining and
the gate read that file and treat text alike, and a version trained before keeps reading links
as it was trained to. transformers' BertTokenizer (5.x) rebuilds its pipeline from its config and
would drop the step, so a version's tokenizer is loaded with ``version_tokenizer``.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, pre_tokenizers

LINK = r"(?i)\b(?:https?://|www\.)\S+"


def remove_links(tokenizer: Tokenizer) -> None:
    """Make a Rust tokenizer (a transformers fast tokenizer's ``backend_tokenizer``) drop links
    before it splits words; saving it keeps the step."""
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(LINK), "removed"), tokenizer.pre_tokenizer]
    )


def version_tokenizer(model_dir: Path):
    """A registry version's tokenizer exactly as its tokenizer.json describes it."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(model_dir)
