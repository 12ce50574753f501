"""Links removed before the sentiment model reads a text (models/links.py), in the version's own
tokenizer: what the engine scores, what a retrained challenger inherits, and triage untouched."""

from __future__ import annotations

from models.engine import ModelTokenizer, encode
from models.registry import ModelRegistry


def ids(tokenizer, text: str) -> list[int]:
    return encode(tokenizer, [text], 64).ids[0]


def test_a_sentiment_version_scores_a_text_as_if_its_links_were_not_there(tiny_registry, tiny_scorers) -> None:
    tok = tiny_scorers["sentiment"].tokenizer
    assert ids(tok, "$GM loses a bull https://t.co/tdUfG5HbXy") == ids(tok, "$GM loses a bull")
    assert ids(tok, "Read WWW.Example.com/a?b=1 and http://x.io/y, then sell") == ids(tok, "Read and then sell")
    assert ids(tok, "https://t.co/tdUfG5HbXy") == ids(tok, "")  # a bare link is an empty text to the model
    assert ids(tok, "awww.. shares up") != ids(tok, "shares up")  # only links, not words with www in them
    card = ModelRegistry(tiny_registry).card("sentiment", "v1")
    assert card.training_config["remove_links"] is True


def test_triage_keeps_every_word_of_a_customer_s_message(tiny_registry, tiny_scorers) -> None:
    tok = tiny_scorers["triage"].tokenizer
    assert ids(tok, "I paid on www.shop.com but nothing came") != ids(tok, "I paid on but nothing came")
    assert ModelRegistry(tiny_registry).card("triage", "v1").training_config["remove_links"] is False


def test_a_version_saved_without_the_step_keeps_reading_links(tiny_registry, tmp_path) -> None:
    """Versions trained before links were removed are scored as they were trained."""
    import shutil

    from tokenizers import Tokenizer, pre_tokenizers

    old = tmp_path / "v0"
    shutil.copytree(ModelRegistry(tiny_registry).resolve("sentiment", "v1"), old,
                    ignore=shutil.ignore_patterns("*.safetensors", "onnx"))
    rust = Tokenizer.from_file(str(old / "tokenizer.json"))
    rust.pre_tokenizer = pre_tokenizers.BertPreTokenizer()  # what `vigil train` saved before
    rust.save(str(old / "tokenizer.json"))
    tok = ModelTokenizer(old)
    assert ids(tok, "$GM loses a bull https://t.co/tdUfG5HbXy") != ids(tok, "$GM loses a bull")
