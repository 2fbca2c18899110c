"""Endpoint secrets at rest: Fernet tokens made with ``DB_ENCRYPTION_KEY``.

The setting holds comma-separated Fernet keys: the first encrypts, every one decrypts, so a key is rotated by
putting the new one first, re-encrypting (``SecretCipher.rotate``) and then dropping the old one. Error messages
name the setting, never a key, a token or a plain secret.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

__all__ = ["SecretCipher", "SecretDecryptionError", "SecretKeyMissingError", "encrypt_secret", "get_cipher",
           "require_cipher"]

SETTING = "DB_ENCRYPTION_KEY"


class SecretDecryptionError(Exception):
    """A stored secret cannot be decrypted with the configured keys (wrong or rotated-out key, damaged value)."""


class SecretKeyMissingError(Exception):
    """An endpoint secret is to be read or written but no ``DB_ENCRYPTION_KEY`` is configured."""


class SecretCipher:
    """Encrypts with the first key, decrypts with any."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise SecretKeyMissingError(f"{SETTING} is empty; set it to at least one Fernet key")
        try:
            self._fernet = MultiFernet([Fernet(key) for key in keys])
        except (ValueError, TypeError):
            raise ValueError(f"{SETTING} holds a value that is not a Fernet key") from None

    def encrypt(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("utf-8")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            # `from None`: the token must not ride along in a chained traceback either.
            raise SecretDecryptionError(
                f"a stored endpoint secret cannot be decrypted with the keys in {SETTING} "
                "(encrypted with a key that is not configured, or damaged)") from None

    def rotate(self, token: str) -> str:
        """The same secret encrypted with the first key (for re-encrypting after a key rotation)."""
        try:
            return self._fernet.rotate(token.encode("utf-8")).decode("ascii")
        except InvalidToken:
            raise SecretDecryptionError(
                f"a stored endpoint secret cannot be decrypted with the keys in {SETTING}") from None


def get_cipher(keys: Sequence[str] | None = None) -> SecretCipher | None:
    """The cipher of ``keys`` (default: the validated ``DB_ENCRYPTION_KEY``), or None when no key is configured.

    Callers that meet a secret with None use ``require_cipher``, which raises ``SecretKeyMissingError``.
    """
    if keys is None:
        from worker.settings import APP_SCOPE, get_settings

        keys = get_settings(APP_SCOPE).db_encryption_key
    return SecretCipher(keys) if keys else None


def require_cipher(cipher: SecretCipher | None, what: str) -> SecretCipher:
    """``cipher``, or a clear error naming the setting when there is none (``what``: what needed it)."""
    if cipher is None:
        raise SecretKeyMissingError(f"{what} needs {SETTING}, which is not set; set it to the Fernet keys the "
                                    "endpoint secrets were encrypted with")
    return cipher


def encrypt_secret(cipher: SecretCipher | None, plain: str | None) -> str | None:
    """The token to store for ``plain`` (None stays None); refuses when no key is configured."""
    if plain is None:
        return None
    return require_cipher(cipher, "storing an endpoint secret").encrypt(plain)
