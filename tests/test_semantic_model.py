"""The embedded model: all-MiniLM-L6-v2 in numpy gives sentence-transformers' embeddings."""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from llmcache.errors import ConfigurationError
from llmcache.semantic import model as model_module
from llmcache.semantic.model import MODEL_SHA256, MiniLM, default_model, model_directory

# sentence-transformers' all-MiniLM-L6-v2 (torch) on "This is an example sentence":
# the first values of the vector its documentation and countless tutorials print.
REFERENCE = [
    0.0676569,
    0.0634960,
    0.0487131,
    0.0793050,
    0.0374481,
    0.0026528,
    0.0393749,
    -0.0070984,
]


def test_matches_the_published_embedding() -> None:
    vector = default_model().embed(["This is an example sentence"])[0]
    assert vector.shape == (384,)
    assert np.allclose(vector[:8], REFERENCE, atol=2e-6)
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_embeddings_match_the_stored_reference_vectors() -> None:
    # Vectors of the plain forward pass (numpy temporaries, erf over whole arrays) as it
    # was before the in-place, blocked GELU and the worker threads: a faster forward
    # pass must give the same embeddings, singly and in a batch split over threads.
    stored = np.load(Path(__file__).parent / "data" / "minilm_reference.npz")
    texts, reference = stored["texts"].tolist(), stored["vectors"]
    assert len(default_model().token_ids(texts[-3:-2])[0]) == 256  # one text is truncated
    batched = default_model().embed(texts * 8)  # enough tokens to split over the workers
    for copy in range(8):
        assert np.abs(batched[copy * len(texts) : (copy + 1) * len(texts)] - reference).max() < 1e-5
    for text, vector in zip(texts, reference):
        assert np.abs(default_model().embed([text])[0] - vector).max() < 1e-5


def test_a_batch_split_over_worker_threads_equals_one_thread() -> None:
    model = MiniLM(model_directory(), verify=False, workers=1)
    split = MiniLM(model_directory(), verify=False, workers=2)
    texts = [
        f"Question {i} about topic {i % 7} and what it means for plan {i % 3}" for i in range(40)
    ]
    texts += ["short", "a much longer sentence with many more tokens than most of the others here"]
    assert np.abs(split.embed(texts) - model.embed(texts)).max() < 1e-6
    assert split._executor is not None  # the split really happened


def test_batches_equal_single_texts_and_padding_changes_nothing() -> None:
    texts = ["short", "a much longer sentence with many more tokens than the first one", "mid one"]
    together = default_model().embed(texts)
    alone = np.stack([default_model().embed([t])[0] for t in texts])
    assert np.allclose(together, alone, atol=1e-5)


def test_meaning_orders_similarities() -> None:
    a, b, c = default_model().embed(
        [
            "How do I reset my password?",
            "What's the way to reset my password?",
            "Best pizza in Rome",
        ]
    )
    assert float(a @ b) > 0.9 > 0.2 > float(a @ c)


def test_weights_are_checked_by_sha256(tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(model_directory(), copy)
    with (copy / "model.safetensors").open("r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(ConfigurationError, match=MODEL_SHA256[:12]):
        MiniLM(copy)


def test_loaded_once_per_process_under_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_module, "_model", None)
    loads: list[int] = []
    real_init = MiniLM.__init__

    def counting_init(self: MiniLM, directory: Path, *, verify: bool = True) -> None:
        loads.append(1)
        real_init(self, directory, verify=verify)

    monkeypatch.setattr(MiniLM, "__init__", counting_init)
    found: list[MiniLM] = []
    threads = [threading.Thread(target=lambda: found.append(default_model())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
    assert all(model is found[0] for model in found)


def _embed_in_child(texts: list[str], queue: multiprocessing.queues.Queue[object]) -> None:
    queue.put(default_model().embed(texts))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() of a threaded process
def test_a_forked_child_splits_a_batch_over_its_own_workers() -> None:
    # The parent's helper threads do not exist in a forked child: a pool inherited
    # as is would take the work and never run it.
    texts = [
        f"Question {i} about topic {i % 7} and what it means for plan {i % 3}" for i in range(40)
    ]
    expected = default_model().embed(texts)
    assert default_model()._executor is not None
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_embed_in_child, args=(texts, queue))
    child.start()
    found = queue.get(timeout=120)
    child.join(30)
    assert child.exitcode == 0
    assert np.abs(np.asarray(found) - expected).max() < 1e-6
