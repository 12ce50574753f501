"""What removing links before the sentiment model changes (models/links.py): speed and accuracy.

One sentiment version's weights, read two ways: its tokenizer with the link step and without it
(copies of the version, nothing else differs). Each scores the tweets' held-out split and
PhraseBank's in the same run, on the engine a worker uses (same precision, threads and
max_length), in alternating rounds.

    python -m benchmarks.link_removal --registry .vigil/models [--version champion] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def variant(source: Path, target: Path, links_removed: bool) -> Path:
    """A copy of the version at ``source`` whose tokenizer does or does not remove links."""
    from tokenizers import Tokenizer, pre_tokenizers

    from models.links import remove_links

    shutil.copytree(source, target, ignore=shutil.ignore_patterns("onnx", "parity*"))
    tokenizer = Tokenizer.from_file(str(target / "tokenizer.json"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()  # the base encoder's
    if links_removed:
        remove_links(tokenizer)
    tokenizer.save(str(target / "tokenizer.json"))
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--registry", type=Path, required=True)
    ap.add_argument("--version", default="champion")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    from models.data import SplitConfig, stratified_split
    from models.engine import Engine, encode
    from models.registry import ModelRegistry
    from models.tasks import get_task
    from streams.settings import REPO_ROOT

    source = ModelRegistry(args.registry).resolve("sentiment", args.version)
    task = get_task("sentiment")
    tweets = stratified_split(task.load(REPO_ROOT / "data", ("twitter_financial_news",)), SplitConfig()).val
    phrasebank = stratified_split(task.load(REPO_ROOT / "data", ("financial_phrasebank",)), SplitConfig()).val
    with tempfile.TemporaryDirectory() as tmp:
        engines = {
            name: Engine(variant(source, Path(tmp) / name, removed), device="cpu", max_length=args.max_length,
                         num_threads=args.threads, parity_texts=[r.text for r in phrasebank])
            for name, removed in (("links read", False), ("links removed", True))
        }
        print(f"sentiment {args.version} ({source.name}), precision "
              f"{', '.join(f'{n}: {e.precision}' for n, e in engines.items())}, max_length {args.max_length}")
        labels: dict[str, list[str]] = {}
        for name, engine in engines.items():
            tokens = [len(s) for s in encode(engine.tokenizer, [r.text for r in tweets], args.max_length).ids]
            accuracy = {}
            for set_name, rows in (("tweets", tweets), ("PhraseBank", phrasebank)):
                got = [p.label for p in engine.score([r.text for r in rows])]
                labels[name] = labels.get(name, []) + got
                accuracy[set_name] = sum(g == r.label for g, r in zip(got, rows, strict=True)) / len(rows)
            print(f"  {name:13s} tweets: {statistics.mean(tokens):.1f} tokens each; accuracy tweets "
                  f"{accuracy['tweets']:.4f} (n={len(tweets)}), PhraseBank {accuracy['PhraseBank']:.4f} "
                  f"(n={len(phrasebank)})")
        differ = sum(a != b for a, b in zip(*labels.values(), strict=True))
        print(f"  labels that differ between the two: {differ} of {len(tweets) + len(phrasebank)}")
        rates: dict[str, list[float]] = {name: [] for name in engines}
        texts = [r.text for r in tweets]
        for _ in range(args.rounds):
            for name, engine in engines.items():
                started = time.perf_counter()
                engine.score(texts)
                rates[name].append(len(texts) / (time.perf_counter() - started))
        for name, got in rates.items():
            print(f"  {name:13s} scoring the tweets: {statistics.median(got):.1f} msgs/s median of "
                  f"{args.rounds} ({', '.join(f'{r:.1f}' for r in got)})")
        ratio = statistics.median(rates["links removed"]) / statistics.median(rates["links read"])
        print(f"  links removed / links read: {ratio:.2f}x")


if __name__ == "__main__":
    main()
