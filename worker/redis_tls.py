"""TLS options for `rediss://` broker and result-backend URLs.

Verification is the default. The URL's ``ssl_cert_reqs`` (and ``ssl_ca_certs`` & co.) are moved out of
the URL into the ``*_use_ssl`` dicts so that kombu and Celery's result backend see one consistent,
already-validated set of options.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from config import ConfigError, Settings
from config.options import CERT_REQS_ALIASES

log = logging.getLogger("worker.tls")

CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
_URL_SSL_KEYS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


@dataclass(frozen=True)
class RedisEndpoint:
    url: str
    ssl_options: dict | None

    @property
    def verifies_certificate(self) -> bool:
        return self.ssl_options is None or self.ssl_options["ssl_cert_reqs"] == ssl.CERT_REQUIRED


def _cert_reqs_word(raw: str, variable: str) -> str:
    word = CERT_REQS_ALIASES.get(raw.upper(), raw.lower())
    if word not in CERT_REQS:
        raise ConfigError(f"{variable} has ssl_cert_reqs={raw!r}; allowed: required, optional, none "
                          "(or CERT_REQUIRED, CERT_OPTIONAL, CERT_NONE)")
    return word


def redis_endpoint(url: str, settings: Settings, variable: str) -> RedisEndpoint:
    """Split ``url`` into a URL without TLS query options and the TLS options for redis-py."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    from_url = {k: v for k, v in query if k in _URL_SSL_KEYS}
    if parts.scheme != "rediss":
        if from_url:
            raise ConfigError(f"{variable} carries TLS options but its scheme is {parts.scheme}://; "
                              "allowed: rediss:// for TLS")
        return RedisEndpoint(url, None)
    word = settings.redis_ssl_cert_reqs or _cert_reqs_word(from_url.get("ssl_cert_reqs", "required"), variable)
    options: dict = {"ssl_cert_reqs": CERT_REQS[word]}
    for key, setting in (("ssl_ca_certs", "redis_ssl_ca_certs"), ("ssl_certfile", "redis_ssl_certfile"),
                         ("ssl_keyfile", "redis_ssl_keyfile")):
        value = getattr(settings, setting) or from_url.get(key)
        if value:
            options[key] = value
    clean_query = urlencode([(k, v) for k, v in query if k not in _URL_SSL_KEYS])
    return RedisEndpoint(urlunsplit(parts._replace(query=clean_query)), options)


class _CeleryTlsWarningFilter(logging.Filter):
    """Drops Celery's own CERT_NONE/CERT_OPTIONAL warning, which it repeats for every backend instance (one per
    thread under the threads pool); ``warn_if_unverified`` says it once, naming the connections."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and "Setting ssl_cert_reqs=CERT_" in record.msg)


logging.getLogger("celery.backends.redis").addFilter(_CeleryTlsWarningFilter())


def warn_if_unverified(endpoints: dict[str, RedisEndpoint]) -> None:
    """One warning per process naming every connection whose certificate is not verified."""
    weak = [name for name, endpoint in endpoints.items() if not endpoint.verifies_certificate]
    if weak:
        log.warning("TLS certificate verification is OFF for %s (REDIS_SSL_CERT_REQS / ssl_cert_reqs); "
                    "connections can be intercepted. Use it only for testing.", ", ".join(weak))
