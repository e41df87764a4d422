"""Signed and authenticated delivery: Standard Webhooks signatures and bearer tokens.

Secrets come from an environment variable or a file, never from the YAML config itself,
and are never printed or logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from eventctl.errors import ConfigError

SECRET_PREFIX = "whsec_"
SIGNING_SECRET_ENV = "EVENTCTL_SIGNING_SECRET"
WEBHOOK_SECRETS_ENV = "EVENTCTL_WEBHOOK_SECRETS"
AUTH_TOKEN_ENV = "EVENTCTL_AUTH_TOKEN"


class SignatureError(Exception):
    """Why a request's Standard Webhooks signature was not accepted."""


def read_secrets(variable: str, path: str | None, environ: Mapping[str, str]) -> list[str]:
    """Secrets from `variable` (whitespace- or comma-separated) and from the file at `path`
    (one per line; blank lines and lines starting with # are skipped)."""
    return environ.get(variable, "").replace(",", " ").split() + read_secrets_file(path)


def read_secrets_file(path: str | None) -> list[str]:
    """Secrets from the file at `path`, one per line (blank lines and lines starting with #
    are skipped); none when `path` is unset or empty."""
    if not path:
        return []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the secrets file: {exc.strerror}") from None
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def signing_key(secret: str, where: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (the prefix is optional)."""
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: a signing secret must be whsec_ and base64") from None
    if not key:
        raise ConfigError(f"{where}: a signing secret must not be empty")
    return key


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,` and base64 HMAC-SHA256 of `id.timestamp.body`."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(key: bytes, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, message_id, timestamp, body),
    }


MAX_TIMESTAMP_DIGITS = 18
"""More digits are more than 3 billion years from now: refused before any arithmetic."""


class WebhookHeaders(NamedTuple):
    """A request's three Standard Webhooks headers as received (latin-1 text), None where
    absent: `webhook-id`, `webhook-timestamp`, `webhook-signature`."""

    message_id: str | None
    timestamp: str | None
    signatures: str | None


def check_signature(
    keys: Sequence[bytes],
    headers: WebhookHeaders,
    body: bytes,
    *,
    now: float,
    tolerance: float,
) -> None:
    """Accept the request if any `v1` signature matches any key; else SignatureError.

    Any value of the three headers gives a SignatureError at worst: the timestamp must be
    ASCII digits (int() would also take signs, underscores and other scripts' digits) and
    is signed as an integer, as the reference implementations do.
    """
    message_id = (headers.message_id or "").strip(" \t")
    timestamp = (headers.timestamp or "").strip(" \t")
    signatures = headers.signatures
    if not message_id or not timestamp or not signatures or not signatures.strip():
        raise SignatureError("webhook-id, webhook-timestamp and webhook-signature are required")
    if not message_id.isascii():
        raise SignatureError("webhook-id must be ASCII")
    if not (timestamp.isascii() and timestamp.isdigit()):
        raise SignatureError("webhook-timestamp must be an integer (Unix seconds)")
    sent_at = int(timestamp) if len(timestamp) <= MAX_TIMESTAMP_DIGITS else None
    if sent_at is None or abs(now - sent_at) > tolerance:
        raise SignatureError(f"webhook-timestamp is more than {tolerance:g} s away from now")
    offered = [s[3:] for s in signatures.split() if s.startswith("v1,") and s.isascii()]
    for key in keys:
        expected = sign(key, message_id, sent_at, body)[3:]
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            return
    raise SignatureError("no webhook-signature matches")


def token_matches(expected: str, authorization: str | None) -> bool:
    """Constant-time check of an `Authorization: Bearer <token>` header (the scheme in any
    case, RFC 9110)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(expected.encode(), token.strip().encode())


class Credentials:
    """What a consumer requires, or a propagator sends: a bearer token and signing keys."""

    def __init__(self, token: str | None = None, keys: Sequence[bytes] = ()) -> None:
        self.token = token
        self.keys = list(keys)

    def __repr__(self) -> str:
        return f"Credentials(token={'set' if self.token else None}, keys={len(self.keys)})"

    @classmethod
    def load(
        cls,
        *,
        token_file: str,
        secrets_variable: str,
        secrets_file: str,
        environ: Mapping[str, str],
    ) -> Credentials:
        tokens = read_secrets(AUTH_TOKEN_ENV, token_file, environ)
        secrets = read_secrets(secrets_variable, secrets_file, environ)
        where = secrets_file or secrets_variable
        return cls(tokens[0] if tokens else None, [signing_key(s, where) for s in secrets])

    @classmethod
    def from_files(cls, *, token_file: str, secrets_file: str) -> Credentials:
        """The token (the first in `token_file`) and signing keys (`secrets_file`) an
        outbound sender such as the consumer's forwarder sends, from those two files only
        ("" for none): never from the environment, whose EVENTCTL_AUTH_TOKEN is the token a
        consumer requires of what it receives, not one to pass on."""
        tokens = read_secrets_file(token_file)
        keys = [signing_key(secret, secrets_file) for secret in read_secrets_file(secrets_file)]
        return cls(tokens[0] if tokens else None, keys)
