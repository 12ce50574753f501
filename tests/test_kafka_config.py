"""Security settings -> client kwargs: shapes the real clients accept, contradictions refused,
and the SASL password never shown."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import certifi
import pytest
from aiokafka import AIOKafkaProducer
from faust.auth import SASLCredentials, SSLCredentials

from streams.kafka_config import (
    KafkaConfigError,
    client_kwargs,
    faust_broker_credentials,
    ssl_context,
)
from streams.settings import VigilSettings

SECRET = "pa55-w0rd-do-not-print"


def settings(**kw: object) -> VigilSettings:
    return VigilSettings(_env_file=None, **kw)


def sasl(protocol: str = "SASL_SSL", **kw: object) -> VigilSettings:
    return settings(
        kafka_security_protocol=protocol,
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="alice",
        kafka_sasl_password=SECRET,
        **kw,
    )


def test_plaintext_is_plain() -> None:
    s = settings()
    assert client_kwargs(s) == {"security_protocol": "PLAINTEXT"}
    assert faust_broker_credentials(s) is None
    assert ssl_context(s) is None


def test_sasl_ssl_with_cafile() -> None:
    s = sasl(kafka_ssl_cafile=Path(certifi.where()))
    kw = client_kwargs(s)
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_username"] == "alice" and kw["sasl_plain_password"] == SECRET
    assert isinstance(kw["ssl_context"], ssl.SSLContext) and kw["ssl_context"].verify_mode is ssl.CERT_REQUIRED
    creds = faust_broker_credentials(s)
    assert isinstance(creds, SASLCredentials)
    assert creds.protocol.value == "SASL_SSL" and creds.mechanism.value == "SCRAM-SHA-512"


def test_sasl_plaintext_and_ssl_only() -> None:
    creds = faust_broker_credentials(sasl("SASL_PLAINTEXT"))
    assert isinstance(creds, SASLCredentials) and creds.protocol.value == "SASL_PLAINTEXT"
    assert "ssl_context" not in client_kwargs(sasl("SASL_PLAINTEXT"))
    tls = settings(kafka_security_protocol="SSL")  # system CAs
    assert isinstance(faust_broker_credentials(tls), SSLCredentials)
    assert "sasl_mechanism" not in client_kwargs(tls)


def test_aiokafka_accepts_the_kwargs() -> None:
    async def build() -> None:
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", **client_kwargs(sasl()))
        await producer.stop()

    asyncio.run(build())


def test_secret_is_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    s = sasl()
    kw = client_kwargs(s)
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("kafka config %s / %r", kw, kw)
    assert SECRET not in repr(kw) and SECRET not in str(kw) and "alice" in repr(kw)
    assert SECRET not in caplog.text
    assert SECRET not in repr(faust_broker_credentials(s))
    assert SECRET not in repr(s)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "needs VIGIL_KAFKA_SASL_MECHANISM, VIGIL_KAFKA_SASL_USERNAME"),
        ({"kafka_sasl_username": "alice"}, "does not use SASL"),
        ({"kafka_ssl_cafile": Path(certifi.where())}, "does not use TLS"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": Path("/nonexistent/ca.pem")}, "not a readable file"),
    ],
)
def test_contradictions_are_refused(kw: dict, message: str) -> None:
    s = settings(**kw)
    for translate in (client_kwargs, faust_broker_credentials):
        with pytest.raises(KafkaConfigError, match=message):
            translate(s)


def test_a_cafile_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(KafkaConfigError, match="could not be loaded as PEM"):
        client_kwargs(settings(kafka_security_protocol="SSL", kafka_ssl_cafile=bad))
