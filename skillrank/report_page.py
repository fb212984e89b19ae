"""The report's HTML page: the verdict first, the run's metadata, what SkillRank says about
the most common titles, then the figures and tables, all in one self-contained file.

Every function takes values the caller has read and returns an escaped HTML fragment;
``render_html`` puts them together (figures come from ``skillrank.report``).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass

from skillrank.evaluate import BASELINES, DIFFERENCE
from skillrank.report import MODEL_METHOD, Figure, Scores, best_baseline

# A table of the page: its heading and an HTML fragment (escaped by whoever built it).
Section = tuple[str, str]


@dataclass(frozen=True)
class TitleSkills:
    """One title as "what SkillRank says" shows it: its training profiles, its top skills
    (rank order) and, for some, its nearest titles with their cosine similarity."""

    title: str
    profiles: int
    skills: list[str]
    neighbours: list[tuple[str, float]]


@dataclass(frozen=True)
class TopPair:
    """A row of Table 4: the title's probability of the skill, its lift over the skill's
    background probability, and the training profiles that hold both."""

    job_title: str
    skill_name: str
    lift: float
    probability: float
    support: int


def verdict_html(scores: Scores, family: str) -> str:
    """The page's first paragraph: in words, whether the published model beats each baseline
    on each headline measure (a win or a loss only where the 95% interval of the paired
    difference excludes 0), then the numbers against the best baseline of each."""
    if not any(method == MODEL_METHOD for method, *_ in scores.values):
        return (
            '<p class="verdict"><strong>This run has not been evaluated</strong>: run'
            " ./spark-submit.sh evaluate, then report again, to compare it with the baselines.</p>"
        )
    outcomes: list[tuple[str, dict[str, list[str]]]] = []
    numbers = []
    for headline, cell, name in scores.headlines():
        by_outcome: dict[str, list[str]] = {"beats": [], "ties with": [], "loses to": []}
        for baseline in BASELINES:
            difference = (f"{MODEL_METHOD}{DIFFERENCE}{baseline}", *cell)
            if difference not in scores.intervals:
                continue
            low, high = scores.intervals[difference]
            better, worse = (high < 0, low > 0) if headline.lower_is_better else (low > 0, high < 0)
            by_outcome["beats" if better else "loses to" if worse else "ties with"].append(baseline)
        if not any(by_outcome.values()):
            continue
        outcomes.append((name, by_outcome))
        best = best_baseline(scores, cell, headline.lower_is_better)
        difference = (f"{MODEL_METHOD}{DIFFERENCE}{best}", *cell)
        unit = "test profiles" if cell[2] == "all" else "titles with planted skills"
        count = scores.values.get((MODEL_METHOD, "profiles" if cell[2] == "all" else "titles",
                                   None, cell[2]))  # fmt: skip
        over = f" over {count:,.0f} {unit}" if count is not None else ""
        numbers.append(
            f"{name} {scores.shown((MODEL_METHOD, *cell))} against {best}'s"
            f" {scores.shown((str(best), *cell))}, difference"
            f" {scores.shown(difference, sign='+')}{over}"
        )
    if not outcomes:
        return (
            '<p class="verdict"><strong>No headline measure of this run has an interval'
            "</strong>: evaluate with evaluate.bootstrap_samples of at least 1.</p>"
        )
    everything = all(not o["ties with"] and not o["loses to"] for _, o in outcomes)
    names = _join([name for name, _ in outcomes])
    compared = [b for b in BASELINES if any(b in sum(o.values(), []) for _, o in outcomes)]
    if everything:
        lead = (
            f"The published model ({family}) beats every baseline ({_join(compared)}) on"
            f" every headline measure: {names}."
        )
    else:
        clauses = []
        for name, o in outcomes:
            if not o["ties with"] and not o["loses to"]:
                clauses.append(f"it beats every baseline on {name}")
                continue
            parts = [f"{verb} {_join(methods)}" for verb, methods in o.items() if methods]
            clauses.append(f"on {name} it {_join(parts)}")
        lead = (
            f"The published model ({family}) does not beat every baseline on every headline"
            f" measure: {'; '.join(clauses)}."
        )
    detail = (
        "Against the best baseline of each: "
        + "; ".join(numbers)
        + ". Brackets: 95% bootstrap intervals; a difference is paired over the same profiles"
        " or titles, and counts as a win or a loss only when its interval excludes 0."
    )
    return f'<p class="verdict"><strong>{html.escape(lead)}</strong> {html.escape(detail)}</p>'


def metadata_html(items: Sequence[tuple[str, str]]) -> str:
    """The run's metadata as a two-column table of (what, value) rows."""
    body = "".join(
        f"<tr><th>{html.escape(what)}</th><td>{html.escape(value)}</td></tr>"
        for what, value in items
    )
    return f'<table class="meta"><tbody>{body}</tbody></table>'


def skillrank_says_html(titles: Sequence[TitleSkills]) -> str:
    """One card per title: its top skills in rank order and, where given, its nearest titles."""
    cards = []
    for entry in titles:
        skills = "".join(f"<li>{html.escape(skill)}</li>" for skill in entry.skills)
        card = (
            f"<h3>{html.escape(entry.title)}</h3>"
            f'<p class="count">{entry.profiles:,} training profiles</p><ol>{skills}</ol>'
        )
        if entry.neighbours:
            near = ", ".join(
                f"{html.escape(title)} ({similarity:.2f})" for title, similarity in entry.neighbours
            )
            card += f'<p class="near">Nearest jobs (cosine of job2vec): {near}</p>'
        cards.append(f'<div class="card">{card}</div>')
    return f'<div class="says">{"".join(cards)}</div>'


def top_pairs_html(pairs: Sequence[TopPair]) -> str:
    """Table 4 analogue: one row per job-skill pair, in the order given."""
    body = "".join(
        f"<tr><td>{html.escape(p.job_title)}</td><td>{html.escape(p.skill_name)}</td>"
        f'<td class="num">{p.lift:,.1f}</td><td class="num">{p.probability:.4f}</td>'
        f'<td class="num">{p.support:,}</td></tr>'
        for p in pairs
    )
    return (
        '<table class="pairs"><thead><tr><th>job title</th><th>skill</th>'
        '<th class="num">lift</th><th class="num">probability</th>'
        f'<th class="num">support (profiles)</th></tr></thead><tbody>{body}</tbody></table>'
    )


def render_html(run_id: str, lead: str, sections: Sequence[Figure | Section]) -> str:
    """One self-contained HTML page: the title, ``lead`` (HTML: the verdict), then each
    section in order: a figure inlined with its caption (a map as SVG, any other as PNG),
    or a (heading, HTML fragment) table. Headings and captions are escaped; fragments are
    inserted as they are, so build them with this module's functions."""
    run = html.escape(run_id)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>SkillRank report: run {run}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>SkillRank report: run {run}</h1>",
        lead,
    ]
    for section in sections:
        if isinstance(section, Figure):
            name = html.escape(f"{section.key}.png")
            title = html.escape(section.title)
            if section.svg is not None:
                image = f'<div class="svg" role="img" aria-label="{title}">{section.svg}</div>'
            else:
                data = base64.b64encode(section.png).decode("ascii")
                image = f'<img src="data:image/png;base64,{data}" alt="{title}">'
            parts.append(
                f'<section class="figure" id="{html.escape(section.key)}"><h2>{title}</h2>'
                f'{image}<p class="caption">{html.escape(section.caption)} '
                f'<a href="{name}">{name}</a></p></section>'
            )
        else:
            heading, fragment = section
            parts.append(
                f'<section class="table"><h2>{html.escape(heading)}</h2>{fragment}</section>'
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _join(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" and {items[-1]}"


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;"
    "color:#222}"
    "h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em}h3{font-size:1em;margin:.2em 0}"
    ".verdict{font-size:1.05em;line-height:1.45}"
    "img,.svg svg{max-width:100%;height:auto;border:1px solid #ddd}"
    ".caption{font-size:.92em;color:#444}"
    "table{border-collapse:collapse;font-size:.9em}"
    "th,td{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}"
    ".num{text-align:right;font-variant-numeric:tabular-nums}"
    ".says{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:1em}"
    ".card{border:1px solid #ddd;padding:.6em .8em}.card ol{margin:.3em 0;padding-left:1.6em}"
    ".count,.near{font-size:.85em;color:#555;margin:.2em 0}"
)
