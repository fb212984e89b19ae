"""The one rule by which names (titles, skills, places, industries) are stored.

Plain Python, no Spark: prepare applies it to the crawl, generate to the taxonomies, the
trainer's evaluation to the planted truth, and the SQL function ``normalize_name``
(skillrank/views.py) repeats it in Spark SQL (docs/sql.md).
"""

from __future__ import annotations

import re
import unicodedata

# A run of whitespace as Python's \s sees it (Unicode White_Space and U+001C..U+001F),
# spelled out so that Java's regex, in the SQL function normalize_name
# (skillrank/views.py), reads the same class: Java's (?U)\s leaves out U+001C..U+001F.
NAME_SPACES = r"[\t\n\x0b\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+"
SPACES = re.compile(NAME_SPACES)


def normalize_text(text: str | None) -> str | None:
    """A name (title, skill, place, industry) as stored: the one rule of docs/sql.md.

    Format characters (Unicode category Cf: zero-width spaces and joiners, bidirectional
    controls, soft hyphen, byte order mark) removed, so ``data<ZWJ>scientist`` becomes
    ``datascientist``; then NFKC, full case folding, whitespace runs as one space, trimmed.
    None, or nothing left -> None. The SQL function ``normalize_name`` does the same.
    """
    if text is None:
        return None
    visible = "".join(c for c in text if unicodedata.category(c) != "Cf")
    folded = SPACES.sub(" ", unicodedata.normalize("NFKC", visible).casefold()).strip(" ")
    return folded or None
