"""The stored envelope: one versioned, checked, optionally compressed record.

Layout of the bytes a tier stores (format version 2)::

    b"LLMC" | format version (1 byte) | flags (1 byte)
    unsigned: CRC-32 (4 bytes, big-endian) of the header, the storage key and the body
    signed:   key-id length (1 byte) | key id | HMAC-SHA256 (32 bytes)
    body: ASCII JSON {"p": payload, "e": expires_at or null, "d": {dependency: version}}
          (zlib-compressed when the COMPRESSED flag is set)

Every value carries a check over its header, its key and its body as stored,
verified before anything is decompressed or parsed: with a secret, a keyed
MAC (a value copied under another key, or forged, fails it; the algorithm is
never read from the stored bytes); without one, a CRC-32 bound to the key,
which catches bit rot, truncation and a value swapped under another key, but
not a deliberate forgery (anyone can compute a CRC: that is what the secret
is for). Values of format version 1 (no check when unsigned) are not read.

``decode`` is total: whatever bytes a tier hands back, it returns a Record or
raises SerializationError (IntegrityError for a value it cannot verify), in
time bounded by the length of those bytes: the nesting depth, the inflated
size and the inflation ratio are all bounded, and ``encode`` refuses (or does
not compress) what ``decode`` would refuse, so nothing written is unreadable.
No pickle: the body is JSON, and what the JSON may turn into is decided by
the caller (``generations.py`` for LangChain values).

Pure functions; the only state is an explicit ``Signer``.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import math
import operator
import os
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import orjson

from llmcache.errors import ConfigurationError, IntegrityError, SerializationError

__all__ = [
    "DEFAULT_COMPRESS_THRESHOLD",
    "FORMAT_VERSION",
    "MAX_DECOMPRESSED_BYTES",
    "MAX_DEPTH",
    "MAX_INFLATE_RATIO",
    "Encoded",
    "Record",
    "Signer",
    "decode",
    "encode",
    "json_depth",
    "parse_json",
]

FORMAT_VERSION = 2
DEFAULT_COMPRESS_THRESHOLD = 4096
#: The largest JSON body stored or read (after inflating): a bigger answer is not cached.
MAX_DECOMPRESSED_BYTES = 64 << 20
#: The deepest nesting of arrays and objects in a stored body, envelope included.
#: Well under Python's recursion limit, so that the standard library's parser
#: and the recursive copies of a hit never run out of stack, whatever the
#: caller's depth; orjson's own limit (1024) is not.
MAX_DEPTH = 200
#: Past ``_INFLATE_FLOOR``, a compressed body may inflate at most this many
#: times its stored size: a zip bomb costs time in proportion to its own
#: length, not to the limit above. ``encode`` stores such a body uncompressed.
MAX_INFLATE_RATIO = 64
_INFLATE_FLOOR = 1 << 20

_MAGIC = b"LLMC"
_HEADER = len(_MAGIC) + 2
_COMPRESSED = 0x01
_SIGNED = 0x02
_EXACT_INTS = 0x04  # the body has integers orjson would round: parse it with the stdlib
_KNOWN_FLAGS = _COMPRESSED | _SIGNED | _EXACT_INTS
# 19+ digits may be an integer past 64 bits (orjson turns those into floats).
_LONG_DIGITS = re.compile(rb"\d{19,}")
_MAC_SIZE = hashlib.sha256().digest_size
_CRC_SIZE = 4
_MIN_SECRET = 16


class Record:
    """What one cache entry holds, once its bytes are verified and parsed.

    Treat it as read-only but for ``derived`` (it is not frozen only because a
    frozen record costs three times as much to build, once per disk hit).
    Not a dataclass: ``payload`` may be parsed on first use (see
    :attr:`Encoded.record`), so that a read answered without it (a template
    kept for a hot answer) never parses it.
    """

    __slots__ = ("_payload", "_source", "dependencies", "derived", "expires_at", "private")

    def __init__(
        self,
        payload: Any,
        expires_at: float | None = None,
        dependencies: Mapping[str, int] | None = None,
        derived: dict[str, Any] | None = None,
        *,
        source: Encoded | None = None,
    ) -> None:
        self._payload = payload
        self._source = source
        self.expires_at = expires_at
        self.dependencies: Mapping[str, int] = {} if dependencies is None else dependencies
        #: Views derived from the payload by a reader (a compiled template), kept
        #: with the record while it lives in this process; never stored.
        self.derived: dict[str, Any] = {} if derived is None else derived
        #: True when ``payload`` is parsed for this one read from bytes kept in
        #: memory (``source``): nobody else holds it, and nothing derived from
        #: it should be kept with the record (the bytes are what stays).
        self.private = source is not None

    @property
    def payload(self) -> Any:
        source = self._source
        if source is not None:  # parsed once, on first use
            self._payload, self._source = source.parse_payload(), None
        return self._payload

    @payload.setter
    def payload(self, value: Any) -> None:
        self._payload, self._source = value, None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def remaining_ttl(self, now: float) -> float | None:
        return None if self.expires_at is None else max(self.expires_at - now, 0.0)

    def __eq__(self, other: object) -> bool:
        if type(other) is not Record:
            return NotImplemented
        return (self.payload, self.expires_at, self.dependencies) == (
            other.payload,
            other.expires_at,
            other.dependencies,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, as a dataclass would be

    def __repr__(self) -> str:
        return (
            f"Record(payload={self.payload!r}, expires_at={self.expires_at!r},"
            f" dependencies={self.dependencies!r})"
        )


# The dependencies of an entry that has none, shared by every such in-memory entry.
_NO_DEPENDENCIES: Mapping[str, int] = MappingProxyType({})


class Encoded(bytes):
    """Stored bytes that remember, in this process only, the record they encode.

    An in-memory tier hands back the very object it was given, so a hit there
    skips the check: the record was built (or already verified) by this
    process. What is kept beside the bytes is small (``state``: the expiry,
    the versions and the ``derived`` views, with no payload) and ``record``
    parses the payload from the bytes again on every read, a private copy
    (``Record.private``). Holding the parsed payload instead would cost more
    memory than the bytes themselves, in dicts and lists the garbage collector
    walks on every full collection, to save a parse that orjson does in about
    the time a copy of the held payload took. A compressed body keeps its
    payload (``body`` 0): inflating it on every read would cost more than
    holding it. Any other tier stores and returns plain bytes, which are
    verified and parsed in full.
    """

    key: str
    #: The record without its payload (``body`` > 0), or with it (``body`` 0).
    state: Record
    #: Where the JSON body starts in the bytes; 0 when ``state`` holds the payload.
    body: int
    #: The body holds integers orjson would round: parsed with the standard library.
    exact: bool

    @classmethod
    def of(cls, data: bytes, *, key: str, record: Record) -> Encoded:
        """``data`` (verified, or just encoded) remembering ``record`` under ``key``."""
        encoded = cls(data)
        encoded.key = key
        flags = data[5]
        if flags & _COMPRESSED:
            body = 0
        elif flags & _SIGNED:
            body = _HEADER + 1 + data[_HEADER] + _MAC_SIZE
        else:
            body = _HEADER + _CRC_SIZE
        encoded.body = body
        encoded.exact = bool(flags & _EXACT_INTS)
        if body:
            dependencies = record.dependencies or _NO_DEPENDENCIES
            record = Record(None, record.expires_at, dependencies, record.derived)
        encoded.state = record
        return encoded

    @property
    def record(self) -> Record:
        """The record; unless held, its payload is parsed from the bytes on first use."""
        state = self.state
        if not self.body:
            return state
        return Record(None, state.expires_at, state.dependencies, state.derived, source=self)

    def parse_payload(self) -> Any:
        """A new copy of the payload, parsed from these bytes. Raises SerializationError."""
        body = memoryview(self)[self.body :]
        try:
            document = _stdlib_loads(bytes(body)) if self.exact else parse_json(body)
            return document["p"]
        except (ValueError, RecursionError, LookupError, TypeError) as exc:
            # Bytes this process wrote or verified: only a bug could bring us here.
            raise SerializationError(f"corrupt value body: {exc}") from exc


@dataclass(frozen=True, repr=False)
class Signer:
    """An HMAC-SHA256 key with its id. ``repr`` never shows the secret."""

    secret: bytes
    key_id: bytes

    def __post_init__(self) -> None:
        if len(self.secret) < _MIN_SECRET:
            raise ConfigurationError(f"the HMAC secret must be at least {_MIN_SECRET} bytes")
        if not 1 <= len(self.key_id) <= 255:
            raise ConfigurationError("the HMAC key id must be 1-255 bytes")

    @classmethod
    def from_secret(
        cls,
        secret: str | bytes,
        key_id: str | None = None,
        *,
        secret_from: str = "secret=",
        key_id_from: str = "key_id=",
    ) -> Signer:
        """A signer for ``secret``; ``*_from`` name where each came from, for the errors."""
        raw = secret.encode() if isinstance(secret, str) else secret
        if len(raw) < _MIN_SECRET:
            # Named, so the user knows which setting to fix; the value is never shown.
            raise ConfigurationError(
                f"{secret_from} is too short: an HMAC secret must be at least"
                f" {_MIN_SECRET} bytes, got {len(raw)}"
            )
        if key_id is not None and not 1 <= len(key_id.encode()) <= 255:
            raise ConfigurationError(f"{key_id_from} must be 1-255 bytes, got {len(key_id)}")
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
        return cls.from_secret(
            secret,
            env.get("LLMCACHE_SECRET_ID") or None,
            secret_from="LLMCACHE_SECRET",
            key_id_from="LLMCACHE_SECRET_ID",
        )

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
    """Encode ``record`` for storage under ``key``.

    Raises SerializationError for what ``decode`` could not read back: not
    JSON, nested deeper than MAX_DEPTH, or larger than MAX_DECOMPRESSED_BYTES.
    """
    document: dict[str, Any] = {"p": record.payload, "e": record.expires_at}
    if record.dependencies:
        document["d"] = dict(record.dependencies)
    try:
        # The standard library, not orjson, on the write path: orjson would
        # store NaN as null, and this runs once per LLM call, not per hit.
        body = json.dumps(document, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise SerializationError(f"value is not JSON-serializable: {exc}") from exc
    data = body.encode("ascii")
    _check_body(data)
    flags = _EXACT_INTS if _LONG_DIGITS.search(data) else 0
    if len(data) > compress_threshold:
        compressed = zlib.compress(data, 6)
        # Past the ratio a reader would take it for a bomb: store it as it is.
        # (Strictly under: a stream that fills the limit exactly may not reach its end.)
        if len(compressed) < len(data) and len(data) < _inflate_limit(len(compressed)):
            data, flags = compressed, flags | _COMPRESSED
    if signer is None:
        header = _MAGIC + bytes((FORMAT_VERSION, flags))
        check = _checksum(header, key, data).to_bytes(_CRC_SIZE, "big")
        stored = b"".join((header, check, data))
    else:
        header = _MAGIC + bytes((FORMAT_VERSION, flags | _SIGNED))
        mac = signer.mac(header, key, data)
        stored = b"".join((header, bytes((len(signer.key_id),)), signer.key_id, mac, data))
    return Encoded.of(stored, key=key, record=record)


def decode(data: bytes, *, key: str, signer: Signer | None = None) -> Record:
    """Verify and parse stored bytes: a Record, or SerializationError (IntegrityError).

    Nothing else escapes, whatever ``data`` holds (tests/test_stored_bytes_fuzz.py).
    IntegrityError marks a value this process cannot verify but that may be
    sound for another (another secret, another format version); any other
    SerializationError marks a damaged value.
    """
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
        raise IntegrityError(f"format version {version}, not {FORMAT_VERSION}: not read")
    if flags & ~_KNOWN_FLAGS:
        raise SerializationError(f"unknown flags {flags:#04x}")
    body = _verified_body(data, flags, key, signer)
    if flags & _COMPRESSED:
        body = _inflate(body)
    _check_body(body)
    try:
        document = _stdlib_loads(body) if flags & _EXACT_INTS else parse_json(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: a caller already deep
        raise SerializationError(f"corrupt value body: {exc}") from exc
    return _record(document)


def _record(document: Any) -> Record:
    """The Record a parsed body describes, every field checked."""
    if type(document) is not dict or "p" not in document:
        raise SerializationError("corrupt value body: not an envelope")
    expires_at = document.get("e")
    if expires_at is not None:
        if type(expires_at) not in (int, float):
            raise SerializationError("corrupt expiry")
        try:
            expires_at = float(expires_at)  # an integer past a float's range overflows
        except OverflowError as exc:
            raise SerializationError("corrupt expiry") from exc
        if not math.isfinite(expires_at):  # the stdlib reads 1e999 as inf
            raise SerializationError("corrupt expiry")
    dependencies = document.get("d")
    if dependencies is None:
        dependencies = {}
    elif type(dependencies) is not dict or not all(
        type(version) is int for version in dependencies.values()
    ):
        raise SerializationError("corrupt dependency versions")
    return Record(payload=document["p"], expires_at=expires_at, dependencies=dependencies)


def parse_json(data: bytes | memoryview | str) -> Any:
    """Strict JSON: orjson on the hit path, the standard library for what it refuses.

    orjson rejects a few valid documents (lone surrogate escapes); the fallback
    takes those. NaN and Infinity are refused by both. (Integers past 64 bits,
    which orjson would round to floats, are flagged at encode time instead.)
    The caller bounds the nesting depth first: the fallback recurses.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return _stdlib_loads(bytes(data) if type(data) is memoryview else data)


def _stdlib_loads(data: bytes | str) -> Any:
    return json.loads(data, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# -- bounds, shared by encode and decode ---------------------------------------------


def _check_body(body: bytes) -> None:
    """Refuse a body ``decode`` must not parse: too large, not ASCII, too deep."""
    if len(body) > MAX_DECOMPRESSED_BYTES:
        raise SerializationError(f"value body is over {MAX_DECOMPRESSED_BYTES} bytes")
    if not body.isascii():  # encode writes ASCII only (and json.loads would guess UTF-16)
        raise SerializationError("value body is not ASCII JSON")
    # Cheap bound first: a body with few opening brackets cannot nest deeper than
    # their count. One translate counts both kinds in one pass (0.9 µs on a 2.4 KB
    # answer, against 1.3 µs for two bytes.count: issue 14, a first disk read).
    if len(body.translate(None, _NOT_OPENING)) > MAX_DEPTH and json_depth(body) > MAX_DEPTH:
        raise SerializationError(f"value nests deeper than {MAX_DEPTH}")


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# Each opening bracket becomes 2 and each closing one 0 (after every other
# byte is deleted); the depth after k brackets is then their sum minus k.
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[{]}")))
_NOT_OPENING = bytes(sorted(set(range(256)) - set(b"[{")))


def json_depth(text: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text, in linear time.

    Brackets inside strings do not count. For a text that is not JSON (an
    unterminated string) it may count too many, never too few for valid JSON.
    No recursion and no per-byte Python loop: a regex drops the strings, a
    translate keeps the brackets, and the running depth is summed in C.
    """
    steps = _STRING.sub(b"", text).translate(_BRACKET_STEPS, _NOT_BRACKETS)
    depths = map(operator.sub, itertools.accumulate(steps), itertools.count(1))
    return max(depths, default=0)


def _inflate_limit(stored: int) -> int:
    """How large a compressed body of ``stored`` bytes may inflate."""
    return min(MAX_DECOMPRESSED_BYTES, max(_INFLATE_FLOOR, stored * MAX_INFLATE_RATIO))


def _checksum(header: bytes, key: str, body: bytes) -> int:
    # CRC-32 rather than a 64-bit hash: it catches every single-bit flip and every
    # burst up to 32 bits, and costs a third of blake2b-64 on a 2 KB answer (the
    # disk hit budget is ~10 µs). Against forgery it is no defence, and is not meant to be.
    return zlib.crc32(body, zlib.crc32(key.encode(), zlib.crc32(header)))


def _verified_body(data: bytes, flags: int, key: str, signer: Signer | None) -> bytes:
    header = data[:_HEADER]
    if not flags & _SIGNED:
        if signer is not None:
            raise IntegrityError("unsigned value where a signature is required")
        end = _HEADER + _CRC_SIZE
        if len(data) < end:
            raise SerializationError("truncated checksum")
        body = data[end:]
        if _checksum(header, key, body) != int.from_bytes(data[_HEADER:end], "big"):
            raise SerializationError("checksum mismatch: damaged, or another key's value")
        return body
    if signer is None:
        # We cannot check it, so we cannot trust it: a miss, then a refill unsigned.
        raise IntegrityError("signed value but no secret is configured")
    if len(data) <= _HEADER:
        raise IntegrityError("truncated signature")
    kid_end = _HEADER + 1 + data[_HEADER]
    mac_end = kid_end + _MAC_SIZE
    if len(data) < mac_end:
        raise IntegrityError("truncated signature")
    if data[_HEADER + 1 : kid_end] != signer.key_id:
        raise IntegrityError("signed with another key id")
    body = data[mac_end:]
    expected = signer.mac(header, key, body)
    if not hmac.compare_digest(expected, data[kid_end:mac_end]):
        raise IntegrityError("HMAC mismatch")
    return body


def _inflate(body: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(body, _inflate_limit(len(body)))
    except zlib.error as exc:
        raise SerializationError(f"corrupt compressed body: {exc}") from exc
    if inflater.unconsumed_tail:
        raise SerializationError("compressed body inflates past the size limit")
    if not inflater.eof or inflater.unused_data:
        raise SerializationError("truncated compressed body, or bytes after it")
    return out
