"""The stored envelope: one versioned, optionally signed and compressed record.

Layout of the bytes a tier stores::

    b"LLMC" | format version (1 byte) | flags (1 byte)
    [ if signed: key-id length (1 byte) | key id | HMAC-SHA256 (32 bytes) ]
    body: UTF-8 JSON {"p": payload, "e": expires_at or null, "d": {dependency: version}}
          (zlib-compressed when the COMPRESSED flag is set)

The MAC covers the header, the key id, the storage key and the body as
stored, so a valid value copied under another key fails, and it is checked
before anything is decompressed or parsed. The algorithm is never read from
the stored bytes. No pickle: the body is JSON, and what the JSON may turn into
is decided by the caller (``generations.py`` for LangChain values).

Pure functions; the only state is an explicit ``Signer``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from llmcache.errors import ConfigurationError, IntegrityError, SerializationError

__all__ = [
    "DEFAULT_COMPRESS_THRESHOLD",
    "FORMAT_VERSION",
    "MAX_DECOMPRESSED_BYTES",
    "Encoded",
    "Record",
    "Signer",
    "decode",
    "encode",
    "parse_json",
]

FORMAT_VERSION = 1
DEFAULT_COMPRESS_THRESHOLD = 4096
#: A compressed body that inflates past this is refused (a zip bomb in a shared store).
MAX_DECOMPRESSED_BYTES = 64 << 20

_MAGIC = b"LLMC"
_HEADER = len(_MAGIC) + 2
_COMPRESSED = 0x01
_SIGNED = 0x02
_EXACT_INTS = 0x04  # the body has integers orjson would round: parse it with the stdlib
# 19+ digits may be an integer past 64 bits (orjson turns those into floats).
_LONG_DIGITS = re.compile(rb"\d{19,}")
_MAC_SIZE = hashlib.sha256().digest_size


@dataclass(slots=True)
class Record:
    """What one cache entry holds, once its bytes are verified and parsed.

    Treat it as read-only but for ``derived`` (it is not frozen only because a
    frozen dataclass costs three times as much to build, once per disk hit).
    """

    payload: Any
    expires_at: float | None = None
    dependencies: Mapping[str, int] = field(default_factory=dict)
    #: Views derived from the payload by a reader (a compiled template), kept
    #: with the record while it lives in this process; never stored.
    derived: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def remaining_ttl(self, now: float) -> float | None:
        return None if self.expires_at is None else max(self.expires_at - now, 0.0)


class Encoded(bytes):
    """Stored bytes that remember, in this process only, the record they encode.

    An in-memory tier hands back the very object it was given, so a hit there
    skips the MAC check and the JSON parse: the record was built (or already
    verified) by this process. Any other tier stores and returns plain bytes,
    which are verified and parsed in full.
    """

    record: Record
    key: str

    @classmethod
    def of(cls, data: bytes, *, key: str, record: Record) -> Encoded:
        encoded = cls(data)
        encoded.record = record
        encoded.key = key
        return encoded


@dataclass(frozen=True, repr=False)
class Signer:
    """An HMAC-SHA256 key with its id. ``repr`` never shows the secret."""

    secret: bytes
    key_id: bytes

    def __post_init__(self) -> None:
        if len(self.secret) < 16:
            raise ConfigurationError("the HMAC secret must be at least 16 bytes")
        if not 1 <= len(self.key_id) <= 255:
            raise ConfigurationError("the HMAC key id must be 1-255 bytes")

    @classmethod
    def from_secret(cls, secret: str | bytes, key_id: str | None = None) -> Signer:
        raw = secret.encode() if isinstance(secret, str) else secret
        # Derived from the secret when not given: rotating the secret changes
        # the id, so old values are rejected by id before any MAC is computed.
        kid = key_id or hashlib.sha256(b"llmcache-key-id" + raw).hexdigest()[:16]
        return cls(secret=raw, key_id=kid.encode())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Signer | None:
        """``LLMCACHE_SECRET`` (and optionally ``LLMCACHE_SECRET_ID``), or None."""
        env = os.environ if environ is None else environ
        secret = env.get("LLMCACHE_SECRET")
        if not secret:
            return None
        return cls.from_secret(secret, env.get("LLMCACHE_SECRET_ID") or None)

    def mac(self, header: bytes, key: str, body: bytes) -> bytes:
        message = b"".join((header, self.key_id, b"\x00", key.encode(), b"\x00", body))
        return hmac.new(self.secret, message, hashlib.sha256).digest()

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key_id.decode(errors='replace')!r})"


def encode(
    record: Record,
    *,
    key: str,
    signer: Signer | None = None,
    compress_threshold: int = DEFAULT_COMPRESS_THRESHOLD,
) -> Encoded:
    """Encode ``record`` for storage under ``key``."""
    document: dict[str, Any] = {"p": record.payload, "e": record.expires_at}
    if record.dependencies:
        document["d"] = dict(record.dependencies)
    try:
        # The standard library, not orjson, on the write path: orjson would
        # store NaN as null, and this runs once per LLM call, not per hit.
        body = json.dumps(document, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"value is not JSON-serializable: {exc}") from exc
    data = body.encode("ascii")
    flags = _EXACT_INTS if _LONG_DIGITS.search(data) else 0
    if len(data) > compress_threshold:
        compressed = zlib.compress(data, 6)
        if len(compressed) < len(data):
            data, flags = compressed, flags | _COMPRESSED
    if signer is None:
        stored = _MAGIC + bytes((FORMAT_VERSION, flags)) + data
    else:
        header = _MAGIC + bytes((FORMAT_VERSION, flags | _SIGNED))
        mac = signer.mac(header, key, data)
        stored = b"".join((header, bytes((len(signer.key_id),)), signer.key_id, mac, data))
    return Encoded.of(stored, key=key, record=record)


def decode(data: bytes, *, key: str, signer: Signer | None = None) -> Record:
    """Verify and parse stored bytes. Raises SerializationError (or IntegrityError)."""
    if type(data) is Encoded and data.key == key:
        return data.record
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SerializationError(f"stored value is {type(data).__name__}, not bytes")
    if type(data) is not bytes:
        data = bytes(data)
    if len(data) < _HEADER or not data.startswith(_MAGIC):
        raise SerializationError("not an llmcache value")
    version, flags = data[4], data[5]
    if version != FORMAT_VERSION:
        raise SerializationError(f"unsupported format version {version}")
    body = _verified_body(data, flags, key, signer)
    if flags & _COMPRESSED:
        body = _inflate(body)
    try:
        document = _stdlib_loads(body) if flags & _EXACT_INTS else parse_json(body)
        payload = document["p"]
        expires_at = document.get("e")
        dependencies = document.get("d") or {}
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise SerializationError(f"corrupt value body: {exc}") from exc
    if expires_at is not None and not isinstance(expires_at, (int, float)):
        raise SerializationError("corrupt expiry")
    if not isinstance(dependencies, dict) or not all(
        type(version) is int for version in dependencies.values()
    ):
        raise SerializationError("corrupt dependency versions")
    return Record(payload=payload, expires_at=expires_at, dependencies=dependencies)


def parse_json(data: bytes | str) -> Any:
    """Strict JSON: orjson on the hit path, the standard library for what it refuses.

    orjson rejects a few valid documents (lone surrogate escapes); the fallback
    takes those. NaN and Infinity are refused by both. (Integers past 64 bits,
    which orjson would round to floats, are flagged at encode time instead.)
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return _stdlib_loads(data)


def _stdlib_loads(data: bytes | str) -> Any:
    return json.loads(data, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _verified_body(data: bytes, flags: int, key: str, signer: Signer | None) -> bytes:
    if not flags & _SIGNED:
        if signer is not None:
            raise IntegrityError("unsigned value where a signature is required")
        return data[_HEADER:]
    if signer is None:
        # We cannot check it, so we cannot trust it: a miss, then a refill unsigned.
        raise IntegrityError("signed value but no secret is configured")
    kid_len = data[_HEADER]
    kid_end = _HEADER + 1 + kid_len
    mac_end = kid_end + _MAC_SIZE
    if len(data) < mac_end:
        raise IntegrityError("truncated signature")
    if data[_HEADER + 1 : kid_end] != signer.key_id:
        raise IntegrityError("signed with another key id")
    body = data[mac_end:]
    expected = signer.mac(data[:_HEADER], key, body)
    if not hmac.compare_digest(expected, data[kid_end:mac_end]):
        raise IntegrityError("HMAC mismatch")
    return body


def _inflate(body: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(body, MAX_DECOMPRESSED_BYTES)
    except zlib.error as exc:
        raise SerializationError(f"corrupt compressed body: {exc}") from exc
    if inflater.unconsumed_tail:
        raise SerializationError("compressed body inflates past the size limit")
    if not inflater.eof:
        raise SerializationError("truncated compressed body")
    return out
