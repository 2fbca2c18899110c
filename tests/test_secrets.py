"""Endpoint secrets at rest (worker.db.secrets): Fernet round trip, key rotation, clear errors that hold no secret."""

from __future__ import annotations

import traceback

import pytest
from cryptography.fernet import Fernet

from worker.db.secrets import (
    SecretCipher,
    SecretDecryptionError,
    SecretKeyMissingError,
    encrypt_secret,
    get_cipher,
    require_cipher,
)

PLAIN = "sk-live-Very-Secret-Token-123"


def _key() -> str:
    return Fernet.generate_key().decode()


def test_round_trip_never_stores_the_plain_secret() -> None:
    cipher = SecretCipher([_key()])
    token = cipher.encrypt(PLAIN)
    assert PLAIN not in token
    assert cipher.encrypt(PLAIN) != token  # a fresh IV each time: equal secrets do not show as equal tokens
    assert cipher.decrypt(token) == PLAIN
    assert cipher.decrypt(cipher.encrypt("ünïcödé")) == "ünïcödé"


def test_rotation_first_key_encrypts_every_key_decrypts() -> None:
    old, new = _key(), _key()
    old_token = SecretCipher([old]).encrypt(PLAIN)
    rotated = SecretCipher([new, old])
    assert rotated.decrypt(old_token) == PLAIN
    new_token = rotated.encrypt(PLAIN)
    assert SecretCipher([new]).decrypt(new_token) == PLAIN
    with pytest.raises(SecretDecryptionError):
        SecretCipher([old]).decrypt(new_token)
    # After re-encrypting, the old key can go.
    assert SecretCipher([new]).decrypt(rotated.rotate(old_token)) == PLAIN


@pytest.mark.parametrize("damage", [lambda t: t, lambda t: t[:-4] + "AAAA", lambda t: "not a token"])
def test_wrong_key_or_damaged_value_is_a_clear_error_without_secrets(damage) -> None:  # type: ignore[no-untyped-def]
    right, wrong = _key(), _key()
    token = damage(SecretCipher([right]).encrypt(PLAIN))
    with pytest.raises(SecretDecryptionError) as caught:
        SecretCipher([wrong]).decrypt(token)
    shown = "".join(traceback.format_exception(caught.value))
    assert "DB_ENCRYPTION_KEY" in str(caught.value)
    for secret in (PLAIN, token, right, wrong):
        assert secret not in shown
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_no_key_configured_refuses_reads_and_writes_naming_the_setting() -> None:
    assert get_cipher(()) is None
    with pytest.raises(SecretKeyMissingError, match="DB_ENCRYPTION_KEY"):
        encrypt_secret(None, PLAIN)
    with pytest.raises(SecretKeyMissingError, match="DB_ENCRYPTION_KEY"):
        require_cipher(None, "reading an endpoint's auth token")
    with pytest.raises(SecretKeyMissingError, match="DB_ENCRYPTION_KEY"):
        SecretCipher([])
    assert encrypt_secret(None, None) is None  # nothing to protect, nothing refused


def test_get_cipher_reads_db_encryption_key(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from worker.settings import get_settings

    first, second = _key(), _key()
    monkeypatch.setenv("ENV_FILE", "/nonexistent/.env")
    monkeypatch.setenv("DB_ENCRYPTION_KEY", f"{first},{second}")
    get_settings.cache_clear()
    try:
        cipher = get_cipher()
        assert cipher is not None
        assert SecretCipher([first]).decrypt(cipher.encrypt(PLAIN)) == PLAIN
        monkeypatch.setenv("DB_ENCRYPTION_KEY", "")
        get_settings.cache_clear()
        assert get_cipher() is None
    finally:
        get_settings.cache_clear()
