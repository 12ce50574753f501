"""Kafka security settings -> client keyword arguments (aiokafka, kafka-python admin, faust).

Pure translations of the ``VIGIL_KAFKA_*`` security fields. The returned mappings hold the SASL
password in clear (the clients need it), so they redact it from ``repr``/``str``: logging one of
them, or an error that formats one, never prints the secret.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streams.settings import VigilSettings

if TYPE_CHECKING:
    from faust.auth import SASLCredentials, SSLCredentials

_SECRET_KEYS = frozenset({"sasl_plain_password"})
_REDACTED = "**********"


class KafkaConfigError(ValueError):
    """The Kafka security settings contradict each other or point at a missing file."""


class ClientKwargs(dict[str, Any]):
    """Keyword arguments for a Kafka client; ``repr`` hides secrets, ``**`` unpacking does not."""

    def __repr__(self) -> str:
        shown = {k: (_REDACTED if k in _SECRET_KEYS and v is not None else v) for k, v in self.items()}
        return f"{type(self).__name__}({shown!r})"

    __str__ = __repr__


def _check(s: VigilSettings) -> None:
    sasl = s.kafka_security_protocol.startswith("SASL_")
    sasl_fields = {
        "VIGIL_KAFKA_SASL_MECHANISM": s.kafka_sasl_mechanism,
        "VIGIL_KAFKA_SASL_USERNAME": s.kafka_sasl_username,
        "VIGIL_KAFKA_SASL_PASSWORD": s.kafka_sasl_password,
    }
    if sasl:
        missing = [name for name, value in sasl_fields.items() if value is None]
        if missing:
            raise KafkaConfigError(
                f"VIGIL_KAFKA_SECURITY_PROTOCOL={s.kafka_security_protocol} needs "
                f"{', '.join(missing)} to be set."
            )
    else:
        given = [name for name, value in sasl_fields.items() if value is not None]
        if given:
            raise KafkaConfigError(
                f"{', '.join(given)} set but VIGIL_KAFKA_SECURITY_PROTOCOL="
                f"{s.kafka_security_protocol} does not use SASL; set it to SASL_PLAINTEXT or "
                "SASL_SSL, or unset the SASL fields."
            )
    if s.kafka_ssl_cafile is not None:
        if not s.kafka_security_protocol.endswith("SSL"):
            raise KafkaConfigError(
                f"VIGIL_KAFKA_SSL_CAFILE is set but VIGIL_KAFKA_SECURITY_PROTOCOL="
                f"{s.kafka_security_protocol} does not use TLS; set it to SSL or SASL_SSL."
            )
        if not Path(s.kafka_ssl_cafile).is_file():
            raise KafkaConfigError(
                f"VIGIL_KAFKA_SSL_CAFILE={s.kafka_ssl_cafile} is not a readable file."
            )


def _uses_tls(s: VigilSettings) -> bool:
    return s.kafka_security_protocol in ("SSL", "SASL_SSL")


def ssl_context(s: VigilSettings) -> ssl.SSLContext | None:
    """A verifying TLS context (the CA file, else the system CAs) when the protocol uses TLS."""
    _check(s)
    if not _uses_tls(s):
        return None
    cafile = str(s.kafka_ssl_cafile) if s.kafka_ssl_cafile is not None else None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (ssl.SSLError, OSError) as e:
        raise KafkaConfigError(
            f"VIGIL_KAFKA_SSL_CAFILE={cafile} could not be loaded as PEM CA certificates: {e}"
        ) from e


def _sasl(s: VigilSettings) -> dict[str, Any]:
    if not s.kafka_security_protocol.startswith("SASL_"):
        return {}
    assert s.kafka_sasl_password is not None  # _check guarantees it
    return {
        "sasl_mechanism": s.kafka_sasl_mechanism,
        "sasl_plain_username": s.kafka_sasl_username,
        "sasl_plain_password": s.kafka_sasl_password.get_secret_value(),
    }


def client_kwargs(s: VigilSettings) -> ClientKwargs:
    """For aiokafka's and kafka-python's clients. Both take the same validated ``ssl_context``, so a
    CA file that is not PEM is refused here for every client, never reported as an unreachable broker."""
    _check(s)
    kw = ClientKwargs(security_protocol=s.kafka_security_protocol, **_sasl(s))
    ctx = ssl_context(s)
    if ctx is not None:
        kw["ssl_context"] = ctx
    return kw


def faust_broker_credentials(s: VigilSettings) -> SASLCredentials | SSLCredentials | None:
    """The faust app's ``broker_credentials`` (None for PLAINTEXT)."""
    from faust.auth import SASLCredentials, SSLCredentials  # faust is slow to import

    ctx = ssl_context(s)
    if s.kafka_security_protocol.startswith("SASL_"):
        assert s.kafka_sasl_password is not None  # _check (via ssl_context) guarantees it
        # faust derives SASL_SSL vs SASL_PLAINTEXT from whether a context is given; its repr
        # shows the username only.
        return SASLCredentials(
            username=s.kafka_sasl_username,
            password=s.kafka_sasl_password.get_secret_value(),
            mechanism=s.kafka_sasl_mechanism,
            ssl_context=ctx,
        )
    if ctx is not None:
        return SSLCredentials(ctx)
    return None
