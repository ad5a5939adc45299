"""The closed word classes the guards read: number and date words, negators,
opposites, scope words, persons, and capitalised words that are not names.

Written from how such meaning is expressed in English, not fitted to any
tuning pairs (see :mod:`llmcache.semantic.guards`). A change here changes
what the guards veto: bump ``GUARDS_VERSION`` there with it.
"""

from __future__ import annotations

__all__ = [
    "DATE_WORDS",
    "FUNCTION_WORDS",
    "NEGATORS",
    "NEG_PREFIXES",
    "NOT_NAMES",
    "NUMBER_VALUES",
    "NUMBER_WORDS",
    "OPPOSITE",
    "OPPOSITES",
    "PERIODS",
    "PERSONS",
    "RELATIVE",
    "SCOPE_WORDS",
]

NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    " fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy"
    " eighty ninety hundred thousand million billion half quarter double triple dozen"
    " once twice first second third fourth fifth sixth seventh eighth ninth tenth"
    " single pair couple".split()
)
NUMBER_VALUES = {
    word: str(value)
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen"
        " fourteen fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
DATE_WORDS = frozenset(
    "january february march april may june july august september october november december"
    " jan feb mar apr jun jul aug sep sept oct nov dec monday tuesday wednesday thursday"
    " friday saturday sunday weekend weekday weekdays weekends today tonight tomorrow"
    " yesterday morning afternoon evening night midnight noon daily weekly monthly yearly"
    " annual annually hourly spring summer autumn fall winter christmas easter"
    " overnight".split()
)
# Words that take the sense of "next/last/this" only before a period of time.
RELATIVE = frozenset({"next", "last", "this", "previous", "coming", "past"})
PERIODS = frozenset({"day", "week", "month", "year", "weekend", "term", "quarter", "season"})

NEGATORS = frozenset(
    "not no never none nothing nobody nowhere neither nor without cannot cant dont doesnt"
    " didnt isnt arent wasnt werent wont wouldnt shouldnt couldnt hasnt havent hadnt mustnt"
    " neednt lack lacks lacking fail fails failed refuse refused deny denied".split()
)
# Prefixes that negate a stem ("include"/"exclude" share no prefix rule: listed as pairs).
NEG_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non", "non-", "de", "anti")
OPPOSITES = (
    ("include", "exclude"),
    ("included", "excluded"),
    ("includes", "excludes"),
    ("including", "excluding"),
    ("accept", "reject"),
    ("accepted", "rejected"),
    ("allow", "forbid"),
    ("allowed", "banned"),
    ("allowed", "forbidden"),
    ("with", "without"),
    ("before", "after"),
    ("above", "below"),
    ("over", "under"),
    ("more", "less"),
    ("more", "fewer"),
    ("increase", "decrease"),
    ("raise", "lower"),
    ("higher", "lower"),
    ("maximum", "minimum"),
    ("max", "min"),
    ("add", "remove"),
    ("enable", "disable"),
    ("on", "off"),
    ("open", "close"),
    ("start", "stop"),
    ("start", "end"),
    ("join", "leave"),
    ("buy", "sell"),
    ("send", "receive"),
    ("import", "export"),
    ("upload", "download"),
    ("login", "logout"),
    ("in", "out"),
    ("up", "down"),
    ("early", "late"),
    ("earliest", "latest"),
    ("cheapest", "dearest"),
    ("cheapest", "most"),
    ("best", "worst"),
    ("pass", "fail"),
    ("win", "lose"),
    ("true", "false"),
    ("legal", "illegal"),
    ("public", "private"),
    ("online", "offline"),
    ("refund", "charge"),
    ("arrive", "depart"),
    ("arrivals", "departures"),
    ("inbound", "outbound"),
)
OPPOSITE = {a: b for a, b in OPPOSITES} | {b: a for a, b in OPPOSITES}

SCOPE_WORDS = frozenset(
    "all every each any some only first last most least both either entire whole"
    " single multiple several many few more less fewer always sometimes usually often"
    " rarely ever except excluding including per extra additional another other"
    " minimum maximum max min full partial".split()
)
# Who the question is about: "my child" and "I" ask about different people.
PERSONS = {
    "i": "self",
    "me": "self",
    "my": "self",
    "mine": "self",
    "myself": "self",
    "we": "us",
    "us": "us",
    "our": "us",
    "ours": "us",
    "he": "third",
    "she": "third",
    "him": "third",
    "her": "third",
    "his": "third",
    "they": "third",
    "them": "third",
    "their": "third",
    "child": "child",
    "children": "child",
    "kid": "child",
    "kids": "child",
    "son": "child",
    "daughter": "child",
    "baby": "child",
    "partner": "partner",
    "wife": "partner",
    "husband": "partner",
    "spouse": "partner",
    "parent": "parent",
    "parents": "parent",
    "mum": "parent",
    "mom": "parent",
    "dad": "parent",
    "father": "parent",
    "mother": "parent",
}
# Words written with a capital that are not names.
NOT_NAMES = frozenset({"i", "i'm", "i've", "i'd", "i'll", "ok", "okay", "hi", "hiya", "hello"})

# English function words (a closed class: articles, pronouns, auxiliaries,
# prepositions, conjunctions, wh-words): rewording changes them freely.
FUNCTION_WORDS = frozenset(
    "a an the this that these those i me my mine we us our you your yours he him his she her"
    " it its they them their what which who whom whose when where why how is am are was were"
    " be been being have has had having do does did doing will would shall should can could"
    " may might must ought to of in on at by for with about as into onto from than then so"
    " and or but if because while there here any some get got go going want wanted need"
    " needed like way tell know please just also really actually still s d ll ve re m t"
    " whats hows wheres whens whos im ive id youre theres thats cant dont isnt um uh er erm"
    " hmm".split()
)
