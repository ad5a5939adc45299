"""The five workloads of benchmarks/workloads.py: their inputs, prompts and concurrency shapes.

Each workload is the pattern of one seed document, made from seeded random data:

* ``menu``: nutrients of menu items, dish names repeating across restaurants (Zipf-like),
  every item's ``ainvoke`` under one ``asyncio.gather`` (seed 000);
* ``documents``: one summary per document, a ``Semaphore`` and ``asyncio.as_completed``
  consuming results as they land with a tqdm progress bar (seed 001); some documents arrive
  twice, as re-uploads do;
* ``reviews``: many restaurants at once, each one's reviews in batches of five,
  ``gather`` over restaurants and, inside each, over its batches (seed 002);
* ``rag``: questions answered from retrieved documents (the prompt of seed 003's
  ``generate_answer``), popular questions asked again; every call runs under
  ``depends_on`` the documents it read;
* ``paraphrase``: a support bot's users asking the same things in other words (seed 004's
  semantic cache), with traps: questions worded almost like another that mean something
  else (an antonym, another day or dish, another number); the policy is the system
  prompt, the customer's question the user message, and users arrive in bursts.

Every input names the data it depends on (``Call.deps``). Between runs some data changes
(``edited=True``): the changed items get new content, so their prompts change, and the
names of what changed are what ``TieredCache.invalidate`` is given. Nothing here does I/O.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["WORKLOADS", "Call", "Workload", "paraphrase_questions"]


@dataclass(frozen=True)
class Call:
    """One LLM call: the prompt template's variables and the data the answer depends on."""

    variables: tuple[tuple[str, str], ...]
    deps: tuple[str, ...]
    group: str = ""  # reviews: the restaurant whose batch this is
    # Calls with the same non-empty meaning are answered right by one another's answers
    # (paraphrases of one question); "" means only this call's own prompt answers it.
    meaning: str = ""

    @property
    def answered_by(self) -> object:
        """The key of the calls whose answers are right for this one."""
        return self.meaning or self

    @property
    def inputs(self) -> dict[str, str]:
        return dict(self.variables)


Ask = Callable[[Call], Awaitable[None]]
Calls = list[Call]


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    system: str
    user: str  # a ChatPromptTemplate string over Call.variables
    build: Callable[[dict[str, int], int, bool], Calls]  # (sizes, seed, edited) -> calls
    edits: Callable[[dict[str, int], int], tuple[str, ...]]  # what the edit changed: deps
    drive: Callable[[Ask, Calls, int, bool], Awaitable[None]]  # (ask, calls, concurrency, bar)
    full: dict[str, int] = field(default_factory=dict)
    quick: dict[str, int] = field(default_factory=dict)


_WORDS_TEXT = (
    "order delivery kitchen table service price menu portion spicy broth noodle rice "
    "sauce fresh crispy sweet salty staff wait reservation parking season batch report "
    "revenue supplier invoice contract policy refund allergy vegan gluten branch opening "
    "hours weekend lunch dinner customer quality hygiene inspection storage cold chain "
    "shipment warehouse forecast budget quarter growth margin cost review rating"
)
_WORDS = tuple(_WORDS_TEXT.split())


def _text(rng: random.Random, words: int) -> str:
    sentences, out = [], []
    for _ in range(words):
        out.append(rng.choice(_WORDS))
        if len(out) >= rng.randint(8, 16):
            sentences.append(" ".join(out).capitalize() + ".")
            out = []
    if out:
        sentences.append(" ".join(out).capitalize() + ".")
    return " ".join(sentences)


def _zipf(rng: random.Random, n: int, k: int, s: float = 1.0) -> list[int]:
    weights = [1 / rank**s for rank in range(1, n + 1)]
    return rng.choices(range(n), weights, k=k)


def _edited(seed: int, n: int, fraction: float) -> set[int]:
    """Which of ``n`` items the edit between runs changes (a seeded few)."""
    return set(random.Random(seed + 1).sample(range(n), max(1, round(n * fraction))))


_FRACTION = {"menu": 0.05, "documents": 0.05, "reviews": 0.1, "rag": 0.05, "paraphrase": 0.05}
_SIZE = {"menu": "distinct", "documents": "docs", "reviews": "restaurants", "rag": "docs",
         "paraphrase": "topics"}  # fmt: skip
_PREFIX = {"menu": "dish", "documents": "doc", "reviews": "restaurant", "rag": "doc",
           "paraphrase": "faq"}  # fmt: skip


def _changes(name: str, sizes: dict[str, int], seed: int) -> set[int]:
    return _edited(seed, sizes[_SIZE[name]], _FRACTION[name])


def _edits(name: str) -> Callable[[dict[str, int], int], tuple[str, ...]]:
    def edits(sizes: dict[str, int], seed: int) -> tuple[str, ...]:
        changed = sorted(_changes(name, sizes, seed))
        if name == "menu":
            return tuple(f"dish:{_dish_names(sizes)[i]}" for i in changed)
        return tuple(f"{_PREFIX[name]}:{i}" for i in changed)

    return edits


def _call(deps: Sequence[str], group: str = "", **variables: str) -> Call:
    return Call(tuple(sorted(variables.items())), tuple(deps), group)


async def _limited(ask: Ask, calls: Calls, concurrency: int) -> None:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(call: Call) -> None:
        async with semaphore:
            await ask(call)

    await asyncio.gather(*(one(call) for call in calls))


# -- menu extraction (seed 000) ---------------------------------------------------------------

_DISHES_TEXT = (
    "Tonkatsu Katsudon Gyudon Oyakodon Udon Soba Ramen Gyoza Takoyaki Okonomiyaki Omurice "
    "Karaage Yakitori Yakisoba Bibimbap Bulgogi Japchae Tteokbokki Kimbap Naengmyeon "
    "Samgyeopsal Jjigae Galbitang Jajangmyeon Jjamppong Tangsuyuk Dakgalbi Pajeon Mandu "
    "Kalguksu Bossam Jokbal Seolleongtang Yukgaejang Sundae Chawanmushi Tamagoyaki Unadon"
)
_DISHES = tuple(_DISHES_TEXT.split())
_STYLES = ("", "Spicy ", "Cheese ", "Seafood ", "Set: ", "Mini ")


def _dish_names(sizes: dict[str, int]) -> list[str]:
    return [f"{style}{dish}" for style in _STYLES for dish in _DISHES][: sizes["distinct"]]


def _menu(sizes: dict[str, int], seed: int, edited: bool) -> Calls:
    rng = random.Random(seed)
    names = _dish_names(sizes)
    notes = {name: f"house recipe, {rng.choice(_WORDS)} and {rng.choice(_WORDS)}" for name in names}
    if edited:  # a few dishes changed recipe: their notes, hence their prompts, change
        for i in _changes("menu", sizes, seed):
            notes[names[i]] += ", new recipe"
    items = [names[i] for i in _zipf(rng, len(names), sizes["items"] - len(names))] + names
    random.Random(seed + 2).shuffle(items)
    return [_call([f"dish:{name}"], dish=name, notes=notes[name]) for name in items]


async def _menu_drive(ask: Ask, calls: Calls, concurrency: int, bar: bool) -> None:
    await _limited(ask, calls, concurrency)


# -- document processing (seed 001) -----------------------------------------------------------


def _documents(sizes: dict[str, int], seed: int, edited: bool) -> Calls:
    rng = random.Random(seed)
    texts = [_text(rng, sizes["words"]) for _ in range(sizes["docs"])]
    if edited:
        for i in _changes("documents", sizes, seed):
            texts[i] += " Updated: " + _text(random.Random(seed + i), 20)
    order = list(range(len(texts)))
    order += rng.sample(order, round(len(texts) * 0.15))  # re-uploads
    rng.shuffle(order)
    return [_call([f"doc:{i}"], doc_id=f"doc-{i}", text=texts[i]) for i in order]


async def _documents_drive(ask: Ask, calls: Calls, concurrency: int, bar: bool) -> None:
    from tqdm import tqdm

    semaphore = asyncio.Semaphore(concurrency)

    async def one(call: Call) -> Call:
        async with semaphore:
            await ask(call)
        return call

    with tqdm(total=len(calls), desc="documents", unit="doc", disable=not bar, leave=False) as p:
        for finished in asyncio.as_completed([one(call) for call in calls]):
            await finished  # a real job would store the summary here, as it lands
            p.update(1)


# -- review analysis (seed 002) ---------------------------------------------------------------

_BATCH = 5


def _reviews(sizes: dict[str, int], seed: int, edited: bool) -> Calls:
    changed = _changes("reviews", sizes, seed) if edited else set()
    calls: Calls = []
    for r in range(sizes["restaurants"]):
        rng = random.Random(seed * 1000 + r)  # one stream per restaurant: edits stay local
        count = rng.randint(sizes["reviews"] // 2, sizes["reviews"] * 3 // 2)
        reviews = [f"{rng.randint(1, 5)} stars: {_text(rng, 25)}" for _ in range(count)]
        if r in changed:  # new reviews arrived: the last batch changes, one more may start
            reviews += [f"{rng.randint(1, 5)} stars: {_text(rng, 25)}" for _ in range(3)]
        for b in range(0, len(reviews), _BATCH):
            batch = "\n".join(f"- {text}" for text in reviews[b : b + _BATCH])
            calls.append(
                _call([f"restaurant:{r}"], f"r{r}", restaurant=f"restaurant {r}", reviews=batch)
            )
    return calls


async def _reviews_drive(ask: Ask, calls: Calls, concurrency: int, bar: bool) -> None:
    semaphore = asyncio.Semaphore(concurrency)  # the seed's vLLM server takes so many at once
    restaurants: dict[str, Calls] = {}
    for call in calls:
        restaurants.setdefault(call.group, []).append(call)

    async def batch(call: Call) -> None:
        async with semaphore:
            await ask(call)

    async def restaurant(batches: Calls) -> None:
        await asyncio.gather(*(batch(call) for call in batches))

    await asyncio.gather(*(restaurant(batches) for batches in restaurants.values()))


# -- RAG with changing data (seed 003) --------------------------------------------------------


def _rag(sizes: dict[str, int], seed: int, edited: bool) -> Calls:
    rng = random.Random(seed)
    docs = [_text(rng, 60) for _ in range(sizes["docs"])]
    if edited:
        for i in _changes("rag", sizes, seed):
            docs[i] = docs[i].replace(".", " (revised).", 1)
    questions = []
    for q in range(sizes["questions"]):
        read = sorted(rng.sample(range(len(docs)), 2))  # what the retriever returns
        topic = " ".join(rng.sample(_WORDS, 3))
        questions.append((f"Question {q}: what does the knowledge base say about {topic}?", read))
    asked = _zipf(rng, len(questions), sizes["requests"])
    calls = []
    for q in asked:
        query, read = questions[q]
        context = "\n".join(f"[doc:{d}] {docs[d]}" for d in read)
        calls.append(_call([f"doc:{d}" for d in read], query=query, context=context))
    return calls


async def _rag_drive(ask: Ask, calls: Calls, concurrency: int, bar: bool) -> None:
    await _limited(ask, calls, concurrency)


# -- paraphrased questions (seed 004) ---------------------------------------------------------

# Written for this workload, none taken from /work/shared/semantic_dev (the semantic tier's
# tuning pairs), so what a semantic cache scores here is out of its tuning sample
# (tests/test_workloads_bench.py checks that no question appears there). Per kind of
# question: wordings that one answer serves, then traps worded almost alike that need
# another answer (an antonym, another day/dish, another number, after vs within, another
# question about the same thing), in the word classes fow-cache's trap categories name.
_TOPICS = [
    ("What time do you open on {day}?", "When do you open on {day}?",
     "What is your opening time on {day}?", "On {day}, what time do you open?"),
    ("Can I get a refund within {n} days?", "Is a refund possible within {n} days?",
     "Can I be refunded within {n} days?", "Within {n} days, can I get a refund?"),
    ("Is the {dish} gluten free?", "Is the {dish} gluten-free?",
     "Is there any gluten in the {dish}?", "Does the {dish} contain gluten?"),
    ("How much is delivery for {n} km?", "What does delivery cost for {n} km?",
     "What is the delivery fee for {n} km?", "How much do you charge to deliver {n} km?"),
]  # fmt: skip
_TRAPS = [
    ("What time do you close on {day}?", "What time do you open on {other_day}?"),
    ("Can I get a refund after {n} days?", "Can I get a refund within {m} days?"),
    ("Is the {other_dish} gluten free?", "Is the {dish} vegan?"),
    ("How much is delivery for {m} km?", "How long does delivery take for {n} km?"),
]  # fmt: skip
_DAYS = ("Monday", "Tuesday", "Friday", "Saturday", "Sunday")
_TRAP_SHARE = 0.15


def _paraphrase(sizes: dict[str, int], seed: int, edited: bool) -> Calls:
    """One topic per policy; the policy is the system prompt, the question the user message.

    Each call's ``meaning`` names what answers it: every wording of a topic's question under
    one policy shares one meaning, each trap has its own.
    """
    rng = random.Random(seed)
    facts = []
    for t in range(sizes["topics"]):
        kind = t % len(_TOPICS)
        day, other_day = rng.sample(_DAYS, 2)
        dish, other_dish = rng.sample(_DISHES, 2)
        n = rng.randint(2, 30)
        slots = {"day": day, "other_day": other_day, "dish": dish, "other_dish": other_dish,
                 "n": str(n), "m": str(n + rng.randint(1, 5))}  # fmt: skip
        facts.append((kind, slots, f"Policy {t}: {_text(rng, 30)}"))
    if edited:
        for t in _changes("paraphrase", sizes, seed):
            kind, slots, policy = facts[t]
            facts[t] = (kind, slots, policy + " Changed this month.")
    calls = []
    for t in _zipf(rng, len(facts), sizes["requests"], s=0.8):
        kind, slots, policy = facts[t]
        if rng.random() < _TRAP_SHARE:
            trap = rng.randrange(len(_TRAPS[kind]))
            wording, meaning = _TRAPS[kind][trap], f"faq:{t} trap {trap}"
        else:
            wording, meaning = rng.choice(_TOPICS[kind]), f"faq:{t}"
        question = wording.format(**slots)
        variables = (("policy", policy), ("question", question))
        calls.append(Call(variables, (f"faq:{t}",), meaning=f"{meaning} | {policy}"))
    return calls


def paraphrase_questions() -> list[str]:
    """Every wording the paraphrase workload can ask, slots unfilled (for the leak check)."""
    return [wording for kind in (*_TOPICS, *_TRAPS) for wording in kind]


async def _paraphrase_drive(ask: Ask, calls: Calls, concurrency: int, bar: bool) -> None:
    """Users arrive in bursts of ``concurrency // 4``, each burst gathered, one after another.

    Unlike a batch job, a support bot's later users ask after earlier answers are stored,
    which is when a semantic cache can serve their other wordings; with every call in one
    gather, all lookups would run before any answer is there.
    """
    burst = max(1, concurrency // 4)
    for start in range(0, len(calls), burst):
        await asyncio.gather(*(ask(call) for call in calls[start : start + burst]))


WORKLOADS: tuple[Workload, ...] = (
    Workload(
        "menu", "menu extraction (gather)",
        "You are a nutritionist. Estimate the ingredients and nutrients of one serving.",
        "Menu item: {dish}\nNotes: {notes}\nGive carbohydrates, protein, fat, fiber, sodium, kcal.",
        _menu, _edits("menu"), _menu_drive,
        full={"items": 150, "distinct": 60}, quick={"items": 16, "distinct": 6},
    ),
    Workload(
        "documents", "document processing (Semaphore + as_completed)",
        "You summarise business documents in three sentences.",
        "Summarise document {doc_id}:\n\n{text}",
        _documents, _edits("documents"), _documents_drive,
        full={"docs": 80, "words": 200}, quick={"docs": 8, "words": 40},
    ),
    Workload(
        "reviews", "review analysis (gather over restaurants and batches)",
        "You analyse restaurant reviews: overall sentiment, top themes, one action item.",
        "Reviews of {restaurant}:\n{reviews}",
        _reviews, _edits("reviews"), _reviews_drive,
        full={"restaurants": 10, "reviews": 30}, quick={"restaurants": 2, "reviews": 10},
    ),
    Workload(
        "rag", "RAG with changing data (depends_on + invalidate)",
        "You answer questions from the given context only.",
        "Answer the question based on the following context:\n\nContext:\n{context}\n\n"
        "Question: {query}\n\nAnswer:",
        _rag, _edits("rag"), _rag_drive,
        full={"docs": 30, "questions": 40, "requests": 120},
        quick={"docs": 6, "questions": 6, "requests": 16},
    ),
    Workload(
        "paraphrase", "paraphrased questions (traps mixed in)",
        "You are a restaurant's support assistant. Answer from this policy only.\n\n{policy}",
        "{question}",
        _paraphrase, _edits("paraphrase"), _paraphrase_drive,
        full={"topics": 30, "requests": 150}, quick={"topics": 6, "requests": 24},
    ),
)  # fmt: skip
