"""Log output for the CLI and the worker: plain text or one JSON object per line, secrets scrubbed.

Scrubbing happens on the final formatted line, after arguments, extras and tracebacks have been
rendered, so a secret cannot slip out through a field the formatter did not know about: every
configured secret (the Kafka SASL password, the password in VIGIL_CLICKHOUSE_URL, the alert webhook
URL), in each spelling a line may hold it in, and the password part of any
``scheme://user:password@host`` URL is replaced by ``***``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any, Literal
from urllib.parse import unquote, urlsplit

from streams.settings import VigilSettings

LogFormat = Literal["text", "json"]
MASK = "***"
# The start of a URL's credentials, ``scheme://user:``, at the start of a word: a scheme is never
# preceded by a letter, so a long word is read once, not once per letter.
_URL_HEAD = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:")
_WORD_END = re.compile(r"\s|$")
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# The most each library's loggers say. clickhouse_driver warns with a traceback on every failed
# connect; the backend reports that failure itself, as BackendUnavailable with what to check.
_NOISY_LOGGERS = {"aiokafka": logging.WARNING, "kafka": logging.WARNING, "clickhouse_driver.connection": logging.ERROR}


def spellings(secret: str) -> set[str]:
    """``secret`` as a log line may hold it: as is, inside a ``repr`` (``%r``, a dict of client
    arguments), and either of those inside a JSON string (the JSON log format), where a quote or a
    backslash comes out escaped and an exact match would miss it."""
    quoted = {secret, repr(secret)[1:-1]}
    return quoted | {json.dumps(q, ensure_ascii=ascii_only)[1:-1] for q in quoted for ascii_only in (True, False)}


def secrets_of(settings: VigilSettings) -> list[str]:
    """The secret strings the settings hold, in every spelling they may be logged in."""
    found: list[str] = []
    if settings.kafka_sasl_password is not None:
        found.append(settings.kafka_sasl_password.get_secret_value())
    if settings.alert_webhook_url is not None:
        found.append(settings.alert_webhook_url.get_secret_value())
    if settings.clickhouse_server_url:
        password = urlsplit(settings.clickhouse_server_url).password
        if password:
            found += [password, unquote(password)]
    # Longest first, so a secret containing another is masked whole.
    return sorted({s for secret in found if secret for s in spellings(secret)}, key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str]) -> str:
    # The known secrets first: a password holding "@" or a quote is masked whole, where the URL
    # pattern could only guess where it ends.
    for secret in secrets:
        text = text.replace(secret, MASK)
    return _mask_url_passwords(text)


def _mask_url_passwords(text: str) -> str:
    """Replace the password of every ``scheme://user:password@host`` in ``text`` by ``***``.

    The password runs to the last "@" before the host (the host part ends at / ? # or a space and holds
    no "@"), as urlsplit and clickhouse-driver read it: a password may hold a raw "@". One pass over
    the text, so a hostile line (a long word, many heads without a host) costs no more than its length.
    """
    out: list[str] = []
    done = 0
    pos = 0
    while (head := _URL_HEAD.search(text, pos)) is not None:
        word_end = _WORD_END.search(text, head.end()).start()
        at = _host_at(text, head.end(), word_end)
        if at is None:
            # No later head in this word has a host after it either: its "@"s are the same ones.
            pos = word_end
            continue
        out += [text[done : head.end()], MASK]
        done = pos = at
    return "".join(out) + text[done:]


def _host_at(text: str, start: int, end: int) -> int | None:
    """The index of the "@" that ends a password starting at ``start``: the first "@" in
    ``text[start:end]`` not followed by another "@" before the host part ends (at / ? # or ``end``)."""
    pending = None
    for i in range(start, end):
        char = text[i]
        if char == "@":
            pending = i
        elif char in "/?#" and pending is not None:
            return pending
    return pending


def settings_summary(settings: VigilSettings) -> dict[str, Any]:
    """The settings as logged at start-up (SecretStr fields dump masked; URLs are scrubbed on output)."""
    return settings.model_dump(mode="json")


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, worker, the record's extras, and
    ``exc`` with the traceback when there is one."""

    def __init__(self, worker_id: str) -> None:
        super().__init__()
        self.worker_id = worker_id

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "worker": self.worker_id,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in doc and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class ScrubbingFormatter(logging.Formatter):
    """Wraps a formatter and masks secrets in what it produced."""

    def __init__(self, inner: logging.Formatter, secrets: Iterable[str]) -> None:
        super().__init__()
        self.inner = inner
        self.secrets = list(secrets)

    def format(self, record: logging.LogRecord) -> str:
        return scrub(self.inner.format(record), self.secrets)


def text_formatter(worker_id: str) -> logging.Formatter:
    return logging.Formatter(f"%(asctime)s %(levelname)s %(name)s [{worker_id}] %(message)s")


def make_handler(
    settings: VigilSettings, *, worker_id: str | None = None, stream: IO[str] | None = None,
    text_handler: logging.Handler | None = None,
) -> logging.Handler:
    """A handler writing ``settings.log_format`` lines with secrets masked.

    ``text_handler`` replaces the plain stream handler in text mode (the CLI's rich console).
    """
    wid = worker_id or settings.worker_id or default_worker_id()
    if settings.log_format == "json":
        handler: logging.Handler = logging.StreamHandler(stream)
        inner: logging.Formatter = JsonFormatter(wid)
    elif text_handler is not None:
        handler, inner = text_handler, logging.Formatter("%(message)s")
    else:
        handler, inner = logging.StreamHandler(stream), text_formatter(wid)
    handler.setFormatter(ScrubbingFormatter(inner, secrets_of(settings)))
    return handler


def configure_logging(handler: logging.Handler, level: int) -> None:
    """Make ``handler`` the root's only handler (the worker's faust setup calls this again)."""
    root = logging.getLogger()
    root.handlers.clear()
    root.addHandler(handler)
    root.setLevel(level)
    for name, quietest in _NOISY_LOGGERS.items():
        logging.getLogger(name).setLevel(quietest)


def faust_logging_config(level: int) -> dict[str, Any]:
    """A dictConfig for mode's worker that installs no handler of its own and keeps other loggers
    enabled; the worker passes ours as ``loghandlers``."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "root": {"level": level, "handlers": []},
        "loggers": {name: {"level": quietest} for name, quietest in _NOISY_LOGGERS.items()},
    }
