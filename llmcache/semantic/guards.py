"""Guards: cheap, explainable vetoes of near-misses that a similarity score cannot see.

Two questions can be close in embedding space and still need different
answers: "...in 2023" / "...in 2024", "Can I..." / "Can't I...", "...on
easyJet" / "...on Ryanair", "...for all users" / "...for one user". Each guard
extracts the *features* of one kind that decide the answer, from each text,
and vetoes a match whose features differ. They follow from how such meaning
is written (closed word classes, digits, capitals, quotes), not from lists
fitted to the tuning pairs, so they generalise to questions never seen:

* ``numbers``: every number (digits, number words, ordinals) and every date
  word (months, weekdays, relative days like today/tomorrow).
* ``negation``: the count of negators (not, n't, no, never, without...) and of
  negating prefixes on a shared stem (include/exclude, able/unable...).
* ``entities``: names and product names, i.e. capitalised words that do not
  start a sentence, acronyms, and tokens mixing letters with digits or case
  (iPhone, GPT-4). A name on one side must appear on the other.
* ``quotes``: text in quotes or backticks must be the same.
* ``swap``: a minimal edit that changes one or two content words of an
  otherwise identical question (chicken/beef, account/joint account).
* ``scope``: quantifiers and restrictive words (all, only, first, each...)
  and the person asking about (my child / I, we / they...).

The word classes they read are in :mod:`llmcache.semantic.guard_words`.

``GUARDS_VERSION`` is part of every scope id: changing a guard's rules starts
a fresh index instead of reinterpreting old entries.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from llmcache.semantic.guard_words import (
    DATE_WORDS,
    FUNCTION_WORDS,
    NEG_PREFIXES,
    NEGATORS,
    NOT_NAMES,
    NUMBER_VALUES,
    NUMBER_WORDS,
    OPPOSITE,
    PERIODS,
    PERSONS,
    RELATIVE,
    SCOPE_WORDS,
)

__all__ = [
    "GUARDS",
    "GUARDS_VERSION",
    "Guard",
    "veto",
]

GUARDS_VERSION = 3

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’\-+.&/]*[A-Za-z0-9+]|[A-Za-z0-9]")
_SENTENCE_END = re.compile(r"[.!?:;]\s*$")

# Phatic openers and closers (greetings, thanks, fillers): they carry no question.
_PHATIC_START = re.compile(
    r"^\s*(?:(?:hi|hello|hey|hiya|good\s+(?:morning|afternoon|evening)|morning|evening"
    r"|afternoon|ok(?:ay)?|so|um+|uh+|er+|erm|right|quick question|just wondering"
    r"|sorry(?:\s+to\s+bother\s+you)?(?:\s*,?\s*but)?|please"
    r"|excuse me|thanks|cheers)\b[\s,!.:;\-]*)+",
    re.IGNORECASE,
)
_PHATIC_END = re.compile(
    r"[\s,!.:;\-]*(?:(?:thanks|thank you|cheers|ta|please|pls|thx)(?:\s+(?:so much|a lot|"
    r"in advance|very much))?|any help appreciated|much appreciated)[\s!.,:;]*$",
    re.IGNORECASE,
)


def strip_phatic(text: str) -> str:
    """The text without a leading greeting or filler and a closing thanks."""
    stripped = _PHATIC_END.sub("", _PHATIC_START.sub("", text))
    return stripped or text


@dataclass(frozen=True)
class Guard:
    """One guard: a name (its stats counter) and the test that vetoes a pair."""

    name: str
    vetoes: Callable[[str, str], bool]


def _words(text: str) -> list[str]:
    return [word.strip("'’-.&/") for word in _WORD.findall(text)]


def _lower(text: str) -> list[str]:
    return [w.lower().replace("’", "'") for w in _words(text)]


def _bare(word: str) -> str:
    return word.replace("'", "")


_DIGITS = re.compile(r"\d+(?:[.,/:]\d+)*")


@functools.lru_cache(maxsize=65_536)
def _singular(word: str) -> str:
    """A date word's plural or one-typo spelling as the date word (Mondays, Mondys)."""
    if word in DATE_WORDS or len(word) < 5:
        return word
    if word.endswith("s") and word[:-1] in DATE_WORDS:
        return word[:-1]
    for date in DATE_WORDS:
        # A typo keeps the first letter, in practice; checking it first keeps this cheap.
        if date[0] == word[0] and len(date) >= 5 and abs(len(date) - len(word)) <= 2:
            base = word[:-1] if word.endswith("s") and not date.endswith("s") else word
            if _edit_distance(base, date) <= 1:
                return date
    return word


def numbers(text: str) -> Counter[str]:
    """Numbers, number words, dates: the features the numbers guard compares.

    "two" and "2" are one number; "Mondays" and "Monday" one day.
    """
    text = strip_phatic(text)
    found: Counter[str] = Counter(
        match.replace(",", "") for match in _DIGITS.findall(text.replace("’", "'"))
    )
    words = [_singular(word) for word in _lower(text)]
    for i, word in enumerate(words):
        if word in NUMBER_VALUES:
            found[NUMBER_VALUES[word]] += 1
        elif word in NUMBER_WORDS or word in DATE_WORDS:
            found[word] += 1
        elif word in RELATIVE and i + 1 < len(words) and words[i + 1] in PERIODS:
            found[f"{word} {words[i + 1]}"] += 1
        elif (
            "-" in word
            and not any(c.isdigit() for c in word)  # its digits are counted already
            and any(
                part in NUMBER_WORDS or part in DATE_WORDS or part in PERIODS
                for part in word.split("-")
            )
        ):
            found[word] += 1  # same-day, two-year, half-term: a quantity in a compound
    # "may" is a month only as a capitalised word inside a sentence.
    if "may" in found and not re.search(r"(?<![.?!]\s)(?<!^)\bMay\b", text.strip()):
        del found["may"]
    return found


def negations(text: str) -> int:
    """How many negators the text has ("non-" prefixes too: non-members, not members)."""
    count = 0
    for word in _lower(strip_phatic(text)):
        bare = _bare(word)
        if bare in NEGATORS or word.endswith("n't") or word.startswith("non-"):
            count += 1
    return count


def _negated_stem(a: set[str], b: set[str]) -> bool:
    """A word on one side is a negating prefix plus a word on the other (mute/unmute)."""
    for word in a - b:
        for prefix in NEG_PREFIXES:
            if word.startswith(prefix) and len(word) - len(prefix) >= 3:
                stem = word[len(prefix) :].lstrip("-")
                if stem in b and stem not in a:
                    return True
    return False


def _base(word: str) -> str:
    """The word without a regular inflection (increased, includes, adding) if that is listed."""
    if word in OPPOSITE:
        return word
    for suffix, repl in (("ing", ""), ("ing", "e"), ("ed", ""), ("d", ""), ("s", ""), ("es", "")):
        if word.endswith(suffix) and word[: -len(suffix)] + repl in OPPOSITE:
            return word[: -len(suffix)] + repl
    return word


def _opposed(a: set[str], b: set[str]) -> bool:
    """One side has a word, the other its opposite (and not the word itself)."""
    a_base, b_base = {_base(w) for w in a}, {_base(w) for w in b}
    for word in a_base - b_base:
        other = OPPOSITE.get(word)
        if other is not None and other in b_base and other not in a_base:
            return True
    return False


def negation_vetoes(first: str, second: str) -> bool:
    if negations(first) != negations(second):
        return True
    a, b = set(_lower(first)), set(_lower(second))
    return _negated_stem(a, b) or _negated_stem(b, a) or _opposed(a, b) or _opposed(b, a)


def names(text: str) -> list[str]:
    """Names and product names in order, lower-cased; adjacent capitalised words are one name.

    A name is a word capitalised inside a sentence, an acronym, or a token that
    mixes letters with digits or case (iPhone, GPT-4).
    """
    found: list[str] = []
    start = True
    last_end = -10
    for match in _WORD.finditer(text):
        raw = match.group().strip("'’-.&/")
        word = raw.lower().replace("’", "'")
        sentence_start = start
        start = bool(_SENTENCE_END.search(text[match.end() : match.end() + 2]))
        if not raw or word in NOT_NAMES or word.split("'")[0] in NOT_NAMES:
            continue
        if not any(c.isalpha() for c in raw):
            continue
        mixed = any(c.isdigit() for c in raw) or any(c.isupper() for c in raw[1:])
        if mixed or (raw[0].isupper() and not sentence_start):
            word = word.split("'")[0]
            if found and text[last_end : match.start()].strip() == "":
                found[-1] = f"{found[-1]} {word}"  # Hargreaves Lansdown, British Gas
            else:
                found.append(word)
            last_end = match.end()
    return found


def entities(text: str) -> set[str]:
    """The words of the names in ``text`` (see :func:`names`)."""
    return {word for name in names(text) for word in name.split()}


def entity_vetoes(first: str, second: str) -> bool:
    a_words, b_words = set(_lower(first)), set(_lower(second))
    a_words |= {w.split("'")[0] for w in a_words}
    b_words |= {w.split("'")[0] for w in b_words}
    # A name counts as present when the other side has it in any case or position.
    if entities(first) - b_words or entities(second) - a_words:
        return True
    # The same names in another order swap roles: "from A to B" / "from B to A".
    a_names, b_names = names(first), names(second)
    shared = set(a_names) & set(b_names)
    a_order = [name for name in dict.fromkeys(a_names) if name in shared]
    b_order = [name for name in dict.fromkeys(b_names) if name in shared]
    return len(shared) >= 2 and a_order != b_order


_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”|`([^`]+)`|(?<![A-Za-z])'([^']+)'(?![A-Za-z])")


def quotes(text: str) -> set[str]:
    return {
        next(group for group in match.groups() if group).strip().lower()
        for match in _QUOTED.finditer(text)
    }


def quote_vetoes(first: str, second: str) -> bool:
    return quotes(first) != quotes(second)


def scope_words(text: str) -> tuple[frozenset[str], frozenset[str]]:
    words = _lower(text)
    scope = frozenset(w for w in words if w in SCOPE_WORDS)
    persons = frozenset(PERSONS[w] for w in words if w in PERSONS)
    return scope, persons


def scope_vetoes(first: str, second: str) -> bool:
    (scope_a, persons_a), (scope_b, persons_b) = scope_words(first), scope_words(second)
    if scope_a != scope_b:
        return True
    # Adding "I"/"my" to a question asks the same thing; a different third party does not.
    return bool((persons_a ^ persons_b) - {"self", "us"})


# What a question asks for. "How long does delivery take?" and "How much is
# delivery?" share every content word and ask for a duration and an amount.
# Plain "how" and "what" are left out: rewordings trade them freely ("How do I..."
# / "What's the way to...").
_ASKED_ALONE = {
    "where": "place",
    "when": "time",
    "who": "person",
    "whom": "person",
    "why": "reason",
}
_ASKED_AFTER_HOW = {
    "long": "duration",
    "much": "amount",
    "many": "count",
    "far": "distance",
    "often": "frequency",
    "old": "age",
    "soon": "time",
}


def asked(text: str) -> frozenset[str]:
    """The kinds of answer a question asks for (place, time, amount...), from its wh-words."""
    words = _lower(text)
    kinds = {_ASKED_ALONE[w] for w in words if w in _ASKED_ALONE}
    kinds |= {
        _ASKED_AFTER_HOW[b]
        for a, b in itertools.pairwise(words)
        if a == "how" and b in _ASKED_AFTER_HOW
    }
    kinds |= {"time" for a, b in itertools.pairwise(words) if a == "what" and b == "time"}
    return frozenset(kinds)


def asked_vetoes(first: str, second: str) -> bool:
    """Both ask for a kind of answer, and not for the same one: "how long" / "how much"."""
    a, b = asked(first), asked(second)
    return bool(a) and bool(b) and not (a & b)


def number_vetoes(first: str, second: str) -> bool:
    return numbers(first) != numbers(second)


def _content(text: str) -> list[str]:
    words = [_bare(word) for word in _lower(strip_phatic(text))]
    return [NUMBER_VALUES.get(word, word) for word in words if word not in FUNCTION_WORDS]


@functools.lru_cache(maxsize=65_536)
def _variant(a: str, b: str) -> bool:
    """Spellings or inflections of one word: centre/center, waiting/wait, electricty."""
    if a == b:
        return True
    short, long_ = sorted((a, b), key=len)
    if len(short) >= 4 and long_.startswith(short[: max(4, len(short) - 1)]):
        return True
    allowed = 1 if len(short) < 8 else 2
    if len(short) < 4 or len(long_) - len(short) > allowed:
        return False
    return _edit_distance(a, b) <= allowed


def _edit_distance(a: str, b: str) -> int:
    """Damerau-Levenshtein (optimal string alignment): a swapped pair of letters is one typo."""
    rows = [list(range(len(b) + 1))]
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            row[j] = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


def _unmatched(words: list[str], others: list[str]) -> list[str]:
    return [word for word in words if not any(_variant(word, other) for other in others)]


def swap_vetoes(first: str, second: str) -> bool:
    """A minimal edit of a content word: all but one or two content words shared.

    "...chicken dish..." / "...beef dish...", "...account..." / "...joint
    account...": when the rest is word for word the same, the word that
    changed is what the question is about. A reworded question changes many
    words, and is left to the similarity score.
    """
    a, b = _content(first), _content(second)
    gone, new = _unmatched(a, b), _unmatched(b, a)
    changed = len(gone) + len(new)
    shared = len(a) - len(gone)
    return 0 < changed <= 2 and shared >= 1


def template_vetoes(first: str, second: str) -> bool:
    """Two fillings of one template: most words shared in long runs, content words changed.

    A templated prompt ("Menu item: {dish}\nNotes: {notes}\nGive carbohydrates,
    protein...") keeps every word of its template and changes only its slots,
    which are what it is about; the template's words make the two texts close
    for any embedding. A reworded question shares short runs at most. The swap
    guard sees one or two changed words; this one any number, once runs of two
    or more words in order make up half the longer text. Only for texts of 12
    words or more: a template is long, and in a short question a changed verb
    phrase ("set up" / "create") is more often a synonym, which the similarity
    score judges.
    """
    a, b = _lower(first), _lower(second)
    longest = max(len(a), len(b))
    if longest < 12:
        return False
    blocks = difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks()
    if sum(block.size for block in blocks if block.size >= 2) * 2 < longest:
        return False
    first_content, second_content = _content(first), _content(second)
    return bool(
        _unmatched(first_content, second_content) or _unmatched(second_content, first_content)
    )


GUARDS: tuple[Guard, ...] = (
    Guard("numbers", number_vetoes),
    Guard("negation", negation_vetoes),
    Guard("entities", entity_vetoes),
    Guard("quotes", quote_vetoes),
    Guard("scope", scope_vetoes),
    Guard("swap", swap_vetoes),
    Guard("template", template_vetoes),
    Guard("asked", asked_vetoes),
)


def veto(first: str, second: str, guards: Iterable[Guard] = GUARDS) -> str | None:
    """The name of the first guard that vetoes serving ``first``'s answer for ``second``."""
    for guard in guards:
        if guard.vetoes(first, second):
            return guard.name
    return None
