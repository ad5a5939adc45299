"""Each guard vetoes its kind of near-miss and lets rewordings through (examples not from DEV)."""

from __future__ import annotations

import pytest

from llmcache.semantic.guards import GUARDS, veto

VETOED = [
    (
        "numbers",
        "How many vacation days do I get after 3 years?",
        "How many vacation days do I get after 5 years?",
    ),
    ("numbers", "Is the museum open in July?", "Is the museum open in November?"),
    ("numbers", "Can I get a refund within two weeks?", "Can I get a refund within three weeks?"),
    ("negation", "Can I park here?", "Can't I park here?"),
    ("negation", "Does the gym allow guests?", "Does the gym not allow guests?"),
    ("negation", "How do I lock my screen?", "How do I unlock my screen?"),
    ("negation", "Which fees increased this month?", "Which fees decreased this month?"),
    ("entities", "How do I install Docker on Ubuntu?", "How do I install Docker on Fedora?"),
    (
        "entities",
        "Move my files from Dropbox to OneDrive",
        "Move my files from OneDrive to Dropbox",
    ),
    ("quotes", 'What does "idempotent" mean?', 'What does "immutable" mean?'),
    ("scope", "How do I delete all my photos?", "How do I delete only my photos?"),
    (
        "scope",
        "What are the side effects of this medicine?",
        "What are the side effects of this medicine for my son?",
    ),
    ("swap", "How long should I boil an egg?", "How long should I boil a potato?"),
    ("asked", "How long does the ferry take to Skye?", "How much does the ferry cost to Skye?"),
    ("asked", "Where can I renew my passport?", "When can I renew my passport?"),
    (
        "template",  # one template, three slots filled differently (the workloads' menu job)
        "Menu item: Spicy Ramen\nNotes: house recipe, garlic and ginger\n"
        "Give carbohydrates, protein, fat, fiber, sodium, kcal.",
        "Menu item: Ramen\nNotes: house recipe, leek and miso\n"
        "Give carbohydrates, protein, fat, fiber, sodium, kcal.",
    ),
    (
        "template",
        "Summarise the attached invoice from Northwind for the finance team in three bullets.",
        "Summarise the attached contract from Northwind for the legal team in three bullets.",
    ),
]

ALLOWED = [
    ("How do I change my email address?", "How can I change my email address?"),
    ("What are your opening hours on Sunday?", "Hi! What are your opening hours on Sunday? Thanks"),
    ("Do you ship to Canada?", "do you ship to canada"),
    ("How do I cancel my gym membership?", "How do I cancle my gym membership?"),
    ("Can I bring 2 bags?", "Can I bring two bags?"),
    ("What's the price for non-residents?", "How much is it if I'm not a resident?"),
    ("How much does shipping to Ireland cost?", "What is the price of shipping to Ireland?"),
    (  # long and mostly the same words, but only function words differ: one question
        "Could you please tell me what the opening hours of the main library are on a Sunday?",
        "Can you tell me what the opening hours of the main library are on Sunday, please?",
    ),
]


@pytest.mark.parametrize(("guard", "cached", "new"), VETOED)
def test_guard_vetoes(guard: str, cached: str, new: str) -> None:
    assert veto(cached, new) == guard
    assert veto(new, cached) is not None  # symmetric in effect


@pytest.mark.parametrize(("cached", "new"), ALLOWED)
def test_rewordings_pass(cached: str, new: str) -> None:
    assert veto(cached, new) is None


def test_guard_names_are_distinct() -> None:
    names = [guard.name for guard in GUARDS]
    assert (
        sorted(names)
        == sorted(set(names))
        == ["asked", "entities", "negation", "numbers", "quotes", "scope", "swap", "template"]
    )
