"""The model commands, through the real top-level `vigil` CLI, on a copy of the tiny registry."""

import csv
import json
import logging
import re

from typer.testing import CliRunner

from models.evaluate import predict_labels
from models.registry import ModelRegistry
from streams.cli import app
from tests.fixtures.models import break_classifier, copy_registry, copy_version


def _run(args, data_dir):
    result = CliRunner().invoke(app, args, env={"VIGIL_DATA_DIR": str(data_dir), "VIGIL_DEVICE": "cpu",
                                                "VIGIL_MAX_LENGTH": "32"})
    return result.exit_code, result.output


def test_list_show_promote_rollback_eval(tiny_registry, tmp_path):
    data_dir = tmp_path / "vigil"
    copy_registry(tiny_registry, data_dir / "models")
    code, out = _run(["models", "list"], data_dir)
    assert code == 0 and "sentiment" in out and "triage" in out
    code, out = _run(["models", "show", "triage"], data_dir)
    assert code == 0 and json.loads(out)["version"] == "v1"
    code, out = _run(["models", "promote", "triage", "v7"], data_dir)
    assert code == 1 and "vigil train --task triage" in out
    code, out = _run(["models", "rollback", "triage"], data_dir)
    assert code == 1 and "no earlier champion" in out

    csv_path = tmp_path / "few.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "category"])
        w.writerows([["my card got stolen", "lost_or_stolen_card"], ["I need a refund", "request_refund"],
                     ["top up failed", "top_up_failed"]])
    png = tmp_path / "confusion.png"
    code, out = _run(["eval", "--task", "triage", "--data", str(csv_path), "--png", str(png)], data_dir)
    assert code == 0 and "accuracy" in out and "macro-F1" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    bad = tmp_path / "bad.csv"
    bad.write_text("text,category\nhello,not_an_intent\n")
    code, out = _run(["eval", "--task", "triage", "--data", str(bad)], data_dir)
    assert code == 1 and "not_an_intent" in out


# Financial PhraseBank's layout: text, named label, all_agree.
PHRASEBANK_ROWS = [("Operating profit rose to EUR 13.1 mn", "positive", "1"), ("Sales fell sharply", "negative", "1"),
                   ("The company is based in Espoo", "neutral", "0"), ("Shares dropped 5%", "negative", "0")]


def _accuracies(out: str) -> list[str]:
    return re.findall(r"accuracy (\d\.\d{4})", out)


def _write_csv(path, rows, encoding="utf-8"):
    with path.open("w", newline="", encoding=encoding) as f:
        csv.writer(f).writerows(rows)
    return path


def test_eval_reads_the_corpora_as_they_come_and_reports_phrasebanks_agreed_rows(tiny_registry, tmp_path):
    """The hidden splits come as the bundled files do: Financial PhraseBank with named labels and an
    all_agree column (its second benchmark is that subset), the tweets with their 0/1/2 codes."""
    data_dir = tmp_path / "vigil"
    copy_registry(tiny_registry, data_dir / "models")
    rows = PHRASEBANK_ROWS
    phrasebank = _write_csv(tmp_path / "phrasebank.csv", [("text", "label", "all_agree"), *rows])
    code, out = _run(["eval", "--task", "sentiment", "--data", str(phrasebank)], data_dir)
    assert code == 0 and "all-annotators-agree rows (2)" in out, out
    named = _accuracies(out)[0]

    codes = {"negative": "0", "positive": "1", "neutral": "2"}  # Twitter Financial News' codes
    tweets = _write_csv(tmp_path / "tweets.csv", [("text", "label"), *((t, codes[y]) for t, y, _ in rows)])
    code, out = _run(["eval", "--task", "sentiment", "--data", str(tweets)], data_dir)
    assert code == 0 and _accuracies(out) == [named] and "all-annotators-agree" not in out, out

    broken = tmp_path / "broken.csv"
    broken.write_text("text,label,all_agree\nSales fell,negative,yes\n")
    code, out = _run(["eval", "--task", "sentiment", "--data", str(broken)], data_dir)
    assert code == 1 and "row 2: all_agree 'yes' is not 0 or 1" in " ".join(out.split()), out


def test_eval_reads_csvs_as_spreadsheets_and_pandas_write_them(tiny_registry, tmp_path):
    """Excel's "CSV UTF-8" and pandas' utf-8-sig start with a byte order mark; spreadsheets leave
    blank and ',,' rows at the end; a long document is one text. Each was refused or a traceback."""
    data_dir = tmp_path / "vigil"
    copy_registry(tiny_registry, data_dir / "models")
    rows = PHRASEBANK_ROWS
    plain = _write_csv(tmp_path / "plain.csv", [("text", "label", "all_agree"), *rows])
    code, out = _run(["eval", "--task", "sentiment", "--data", str(plain)], data_dir)
    assert code == 0, out
    expected = _accuracies(out)

    exported = _write_csv(tmp_path / "exported.csv", [("text", "label", "all_agree"), rows[0], ("   ",),
                                                       ("", "", ""), *rows[1:], ("", "", "")], encoding="utf-8-sig")
    code, out = _run(["eval", "--task", "sentiment", "--data", str(exported)], data_dir)
    assert code == 0 and _accuracies(out) == expected and "(4 rows)" in " ".join(out.split()), out

    long = _write_csv(tmp_path / "long.csv", [("text", "label"), ("Profit rose . " * 20_000, "positive"), rows[1][:2]])
    code, out = _run(["eval", "--task", "sentiment", "--data", str(long)], data_dir)
    assert code == 0 and "truncated 1" in out, out


def test_eval_names_the_row_a_file_cannot_be_read_at(tiny_registry, tmp_path):
    data_dir = tmp_path / "vigil"
    copy_registry(tiny_registry, data_dir / "models")
    files = {
        "text,label\r\nSales fell,negative\r\nOrders grew\r\n": "row 3 has no label",
        "text,label\r\n,negative\r\n": "row 2 has no text",
        # a quote never closed: its text runs on to the end of the file, the label with it
        'text,label\r\n"Sales fell,negative\r\nOrders grew,positive\r\n': "row 2 (lines 2-3) has no label",
        # and in a file of millions of rows it stops at the field limit, not at the end of memory
        'text,label\r\n"Profit rose,positive\r\n' + "Sales fell,negative\r\n" * 3_500_000: "row 2 (lines 2-",
    }
    for i, (content, expected) in enumerate(files.items()):
        path = tmp_path / f"{i}.csv"
        path.write_text(content, newline="")
        result = CliRunner().invoke(app, ["eval", "--task", "sentiment", "--data", str(path)], env={
            "VIGIL_DATA_DIR": str(data_dir), "VIGIL_DEVICE": "cpu", "VIGIL_MAX_LENGTH": "32"})
        said = "".join(result.output.split())  # rich folds long lines, in a path too
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.exception, said)
        assert "".join(f"{path} {expected}".split()) in said, said
    assert "cannotbereadasCSV(fieldlargerthanfieldlimit" in said


def test_eval_scores_in_chunks_and_keeps_the_labels(tiny_scorers):
    scorer = tiny_scorers["triage"]
    texts = ["my card was stolen", "top up failed " * 40, "I need a refund", "change my PIN", "where is my card"]
    whole = scorer.score(texts)
    assert predict_labels(scorer, texts, chunk=2) == ([p.label for p in whole], 1)


def test_a_version_that_cannot_score_is_not_promoted(tiny_registry, tmp_path):
    data_dir = tmp_path / "vigil"
    copy_registry(tiny_registry, data_dir / "models")
    registry = ModelRegistry(data_dir / "models")
    broken = copy_version(registry, "sentiment", registry.resolve("sentiment", "v1")).version
    break_classifier(registry.resolve("sentiment", broken))
    code, out = _run(["models", "promote", "sentiment", broken], data_dir)
    said = " ".join(out.split())  # rich folds long lines
    assert code == 1 and "cannot score a plain control text" in said and "still v1" in said
    assert registry.champion("sentiment") == "v1"


def test_promoting_the_champion_by_its_alias_changes_nothing(tiny_registry, tmp_path):
    """'champion' was compared with the champion's name as itself: it was self tested, recorded as a
    promotion of version 'champion', and printed as the champion."""
    data_dir = tmp_path / "vigil"
    copy_registry(tiny_registry, data_dir / "models")
    code, out = _run(["models", "promote", "sentiment", "champion"], data_dir)
    said = " ".join(out.split())
    assert code == 0 and "sentiment champion: v1 already; nothing changed" in said, said
    assert "event was not recorded" not in said  # none was to be: ClickHouse is not migrated here
    assert ModelRegistry(data_dir / "models").champions("sentiment") == ["v1"]


def test_missing_model_says_how_to_train(tmp_path):
    code, out = _run(["models", "show", "sentiment"], tmp_path / "empty")
    assert code == 1 and "vigil train --task sentiment" in out


def test_train_refuses_more_encoder_layers_than_the_encoder_has(tmp_path):
    code, out = _run(["train", "--task", "sentiment", "--encoder-layers", "7"], tmp_path)
    assert code == 1 and "has 6 layers" in out
    assert not (tmp_path / "models" / "sentiment").exists()


def test_bench_scoring_prints_each_contender_and_the_ratio(tiny_registry, tmp_path, caplog):
    data_dir = tmp_path / "vigil"
    copy_registry(tiny_registry, data_dir / "models")
    hf = logging.getLogger("transformers")  # its records stop there, at its own stderr handler
    hf.addHandler(caplog.handler)
    try:
        code, out = _run(["bench", "scoring", "--n", "24", "--n-single", "4", "--batch", "8", "--device", "cpu"],
                         data_dir)
    finally:
        hf.removeHandler(caplog.handler)
    assert code == 0, out
    # the pipeline's screenful of "not supported" (any model with .logits runs) is kept off the output
    assert not [r for r in caplog.records if "is not supported" in r.getMessage()]
    rates = {line.split()[0]: float(line.split()[1]) for line in out.splitlines()
             if "msgs/s" in line}
    # where the engine runs bf16 (CPUs that compute it), the pipeline also runs as it comes, in fp32
    reduced = "engine precision bf16" in out
    assert set(rates) == {"engine", "pipeline/1", "pipeline/batch", *(["pipeline/batch/fp32"] if reduced else [])}
    assert all(r > 0 for r in rates.values())
    assert "engine / pipeline(batch_size=8) = " in out
    assert ("engine / pipeline(batch_size=8, fp32) = " in out) == reduced


def test_vigil_schema_prints_every_message_type(tmp_path):
    code, out = _run(["schema"], tmp_path)
    assert code == 0
    schemas = json.loads(out)
    assert {"NewsItem", "SupportMessage", "ScoredMessage", "DeadLetter", "Alert", "AlertVerdict", "TicketAck",
            "TriageTicket", "LabelCandidate", "LabelRequest", "QueueItem", "Correction", "ModelEvent"} <= set(schemas)
    assert "headline" in schemas["NewsItem"]["properties"]


def test_a_damaged_champion_pointer_is_named_and_promote_repairs_it(tiny_registry, tmp_path):
    data_dir = tmp_path / "vigil"
    copy_registry(tiny_registry, data_dir / "models")
    pointer = data_dir / "models" / "sentiment" / "champion.json"
    pointer.write_text('{"champion": "v1", "history": [')  # a write cut short (disk full)
    code, out = _run(["models", "list"], data_dir)
    said = " ".join(out.split())
    assert code == 1 and "champion.json is damaged" in said and "vigil models promote sentiment VERSION" in said
    # The repair that message names works: the pointer is written anew, v1 the champion, no history.
    code, out = _run(["models", "promote", "sentiment", "v1"], data_dir)
    assert code == 0 and "sentiment champion: v1" in out, out
    assert json.loads(pointer.read_text())["history"] == []
    assert ModelRegistry(data_dir / "models").champion("sentiment") == "v1"
    code, out = _run(["models", "list"], data_dir)
    assert code == 0 and "sentiment" in out
