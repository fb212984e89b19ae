"""Synthetic profile crawls grounded in ESCO v1.2.0 and O*NET 29.2, with planted ground truth.

Three pure steps (the job ``jobs/generate.py`` does all reading and writing):

- ``load_taxonomy()`` reads the subset in ``skillrank/taxonomy/`` (see its SOURCES.md).
- ``plan_truth(taxonomy, ...)`` fixes the world for a seed: occupation popularity, the titles
  of each occupation, related occupations, and per occupation the inclusion probability of
  every skill (its essential/optional/technology skills plus the generic skills), and the
  city-specific skills planted per (city, occupation). This is the distribution the
  generator actually samples from, exported by ``truth_tables``.
- ``generate_shard(truth, params, shard_index, ...)`` writes the crawl lines of one shard
  from its own seed stream, so shards are independent and can run in parallel.

Labels are matched the way ``prepare`` matches them: ``normalize_label`` (NFKC, case fold,
collapsed whitespace).
"""

from __future__ import annotations

import bisect
import csv
import gzip
import io
import json
import random
import re
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np

from skillrank.config import GenerateConfig
from skillrank.ingest import REASONS
from skillrank.text import normalize_text

TAXONOMY_DIR = Path(__file__).resolve().parent / "taxonomy"

# Relation codes of an occupation's skill, strongest first.
RELATIONS = ("essential", "optional", "hot_technology", "technology")

# Word lists for synthetic employer names (combined, never real company data).
_COMPANY_STEMS = (
    "Acme", "Apex", "Aurora", "Beacon", "Birch", "Blue Harbor", "Bright", "Cascade", "Cedar",
    "Cobalt", "Crescent", "Crystal", "Delta Ridge", "Ember", "Evergreen", "Falcon", "Fern",
    "Granite", "Harbor", "Horizon", "Indigo", "Iron Gate", "Juniper", "Keystone", "Lakeside",
    "Lumen", "Maple", "Meridian", "Northwind", "Oak Hill", "Orchid", "Pacific Crest", "Pinnacle",
    "Quarry", "Redwood", "Riverbend", "Sable", "Sapphire", "Silver Pine", "Summit", "Sunrise",
    "Tidewater", "Timber", "True North", "Vantage", "Vertex", "Willow", "Winding Creek",
    "Zenith", "Zephyr",
)  # fmt: skip
_COMPANY_NOUNS = (
    "Systems", "Labs", "Health", "Partners", "Capital", "Analytics", "Solutions", "Group",
    "Media", "Realty", "Biosciences", "Works", "Consulting", "Technologies", "Logistics",
    "Foods", "Energy", "Software", "Clinic", "Advisors", "Studios", "Manufacturing",
    "Networks", "Research", "Holdings",
)  # fmt: skip
_COMPANY_SUFFIXES = ("", " Inc.", " LLC", " Ltd")
# Non-ASCII employer names for lines saved in Latin-1 by a broken crawler (invalid UTF-8).
_LATIN1_COMPANIES = (
    "Société Générale de Données",
    "Müller & Söhne",
    "Café Lumière",
    "Señor Técnico",
)
_CONTROL_CHARACTERS = ("\t", "\r", "\u0000", "\u0007", "\u001b")
_BAD_TIMESTAMPS = ("10/01/2026 12:00", "1 Oct 2026", "yesterday", "2026-10-01T25:61:00Z")
_TRAILERS = ("// crawled", '{"page": 2}', "}", ", ")
_EARLIEST_MONTH = 1970 * 12  # no position starts before January 1970


def clean_label(label: str) -> str:
    """Strip and collapse runs of whitespace."""
    return re.sub(r"\s+", " ", label).strip()


def normalize_label(label: str) -> str:
    """The matching key of a title, skill or place: ``prepare``'s normalisation ('' if empty)."""
    return normalize_text(label) or ""


def display_label(label: str) -> str:
    """The natural spelling of a taxonomy label: each word's first letter upper case."""
    return " ".join(w[:1].upper() + w[1:] for w in label.split(" "))


@dataclass(frozen=True)
class Taxonomy:
    """The rows of the taxonomy subset files (see skillrank/taxonomy/SOURCES.md)."""

    occupations: list[dict[str, str]]
    titles: list[dict[str, str]]
    occupation_skills: list[dict[str, str]]
    onet_technology: list[dict[str, str]]
    onet_related: list[dict[str, str]]
    generic_candidates: list[dict[str, str]]


def load_taxonomy(directory: Path = TAXONOMY_DIR) -> Taxonomy:
    """Read the gzip CSV files of the taxonomy subset (default: the copy in the package)."""

    def rows(name: str) -> list[dict[str, str]]:
        with gzip.open(directory / f"{name}.csv.gz", "rt", encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))

    return Taxonomy(
        occupations=rows("occupations"),
        titles=rows("titles"),
        occupation_skills=rows("occupation_skills"),
        onet_technology=rows("onet_technology"),
        onet_related=rows("onet_related"),
        generic_candidates=rows("generic_candidates"),
    )


@dataclass(frozen=True)
class Ragged:
    """Rows of different lengths in flat lists: row r holds ``items[lo:hi]`` with
    ``(lo, hi) = bounds(r)``, each item with its probability within the row (``probs``) and
    the row's cumulative probabilities (``cum``, ending at 1), so one bisect draws from a row."""

    starts: list[int]
    items: list[int]
    probs: list[float]
    cum: list[float]

    @classmethod
    def of(cls, rows: Iterable[tuple[list[int], np.ndarray]]) -> Ragged:
        """The rows of (items, weights) pairs, each row's weights normalised; a row may be
        empty."""
        starts, items, probs, cum = [0], [], [], []
        for members, weights in rows:
            items += members
            if members:
                probs += (weights / weights.sum()).tolist()
                cum += _cumulative(weights)
            starts.append(len(items))
        return cls(starts, items, probs, cum)

    def bounds(self, row: int) -> tuple[int, int]:
        return self.starts[row], self.starts[row + 1]


@dataclass(frozen=True)
class Truth:
    """The planted world: what the generator samples from, by integer index.

    Occupation o has the titles of row o of ``occupation_titles`` and the related occupations
    of row o of ``related`` (``Ragged``: each with its probability), and ``skill_idx[o]``
    with per-position inclusion probabilities ``skill_prob[o]`` (relation code index into
    RELATIONS or -1, generic flag alongside).
    ``segment_idx[city][o]``: the skills a position of occupation o held by a person located
    in that city (canonical code) also lists, each with probability ``segment_rate``; empty
    when no city-specific skills are planted.
    """

    occupation_ids: list[str]
    occupation_labels: list[str]
    isco_groups: list[str]
    onet_codes: list[str]
    popularity: np.ndarray
    popularity_cum: list[float]
    titles: list[str]
    title_keys: list[str]
    occupation_titles: Ragged
    related: Ragged
    skills: list[str]
    skill_keys: list[str]
    skill_idx: list[np.ndarray]
    skill_prob: list[np.ndarray]
    skill_relation: list[np.ndarray]
    skill_generic: list[np.ndarray]
    generic_idx: list[int]
    generic_rate: list[float]
    generic_source: list[str]
    generic_breadth: list[float]
    segment_idx: dict[str, list[np.ndarray]]
    segment_rate: float
    companies: list[str]
    company_cum: list[float]


def _zipf_weights(n: int, exponent: float) -> np.ndarray:
    return 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent


def _cumulative(weights: Iterable[float]) -> list[float]:
    """Cumulative weights normalised to end at 1.0 exactly (for bisect sampling)."""
    cum = np.cumsum(np.asarray(list(weights), dtype=np.float64))
    out = (cum / cum[-1]).tolist()
    out[-1] = 1.0
    return out


def plan_truth(taxonomy: Taxonomy, knobs: GenerateConfig, segment_cities: list[str]) -> Truth:
    """Fix the planted world for `knobs.seed` from the taxonomy and the `generate` knobs.

    Occupation popularity is Zipf over a seeded random order, times `focus_boost` for ISCO
    sub-major groups in `focus_isco_groups`. A position lists each skill of its occupation
    with probability rate(relation) x U(rate_jitter, 1), and generic skill k (by breadth)
    with probability generic_rate / k**generic_zipf, independently. Each city of
    `segment_cities` gets, per occupation, `segment_skills` skills the occupation neither
    lists nor has as generic, listed with probability `segment_skill_rate` (``_plan_segments``).
    The steps below draw from one seed stream in this order.
    """
    rng = np.random.default_rng(np.random.SeedSequence(knobs.seed, spawn_key=(0,)))
    occupations = taxonomy.occupations
    ids = [o["occupation_id"] for o in occupations]
    index_of = {oid: i for i, oid in enumerate(ids)}
    popularity = _occupation_popularity(occupations, knobs, rng)
    titles, title_keys, occupation_titles = _occupation_titles(taxonomy, index_of, knobs)
    related = _related_occupations(occupations, taxonomy.onet_related, popularity)
    skills = _SkillNames()
    relation_of = _skill_relations(taxonomy, index_of, skills)
    generic_idx, generic_source, generic_breadth = _generic_skills(taxonomy, skills, knobs)
    generic_rates = (
        knobs.generic_rate * _zipf_weights(len(generic_idx), knobs.generic_zipf)
    ).tolist()
    listed = _listed_skills(
        relation_of, dict(zip(generic_idx, generic_rates, strict=True)), knobs, rng
    )
    company_names = _company_names(knobs.companies, rng)
    return Truth(
        occupation_ids=ids,
        occupation_labels=[o["label"] for o in occupations],
        isco_groups=[o["isco_group"] for o in occupations],
        onet_codes=[o["onet_code"] for o in occupations],
        popularity=popularity,
        popularity_cum=_cumulative(popularity),
        titles=titles,
        title_keys=title_keys,
        occupation_titles=occupation_titles,
        related=related,
        skills=skills.names,
        skill_keys=skills.keys,
        skill_idx=listed.idx,
        skill_prob=listed.prob,
        skill_relation=listed.relation,
        skill_generic=listed.generic,
        generic_idx=generic_idx,
        generic_rate=generic_rates,
        generic_source=generic_source,
        generic_breadth=generic_breadth,
        segment_idx=_plan_segments(
            knobs.seed, segment_cities, listed.idx, len(skills.keys), knobs.segment_skills
        ),
        segment_rate=knobs.segment_skill_rate,
        companies=company_names,
        company_cum=_cumulative(_zipf_weights(len(company_names), knobs.company_zipf)),
    )


def _occupation_popularity(
    occupations: list[dict[str, str]], knobs: GenerateConfig, rng: np.random.Generator
) -> np.ndarray:
    """Zipf over a seeded random order of the occupations, boosted for the focus groups;
    sums to 1."""
    n_occ = len(occupations)
    rank = np.empty(n_occ, dtype=np.int64)
    rank[rng.permutation(n_occ)] = np.arange(n_occ)
    boost = np.array(
        [
            knobs.focus_boost if o["isco_group"][:2] in knobs.focus_isco_groups else 1.0
            for o in occupations
        ]
    )
    popularity = _zipf_weights(n_occ, knobs.occupation_zipf)[rank] * boost
    popularity /= popularity.sum()
    return popularity


def _occupation_titles(
    taxonomy: Taxonomy, index_of: dict[str, int], knobs: GenerateConfig
) -> tuple[list[str], list[str], Ragged]:
    """The titles as shown and their matching keys (merged by key, first spelling kept), and
    each occupation's titles, Zipf by rank: the preferred label (rank 0) is the most common,
    alternatives follow."""
    title_keys: list[str] = []
    titles: list[str] = []
    key_index: dict[str, int] = {}
    per_occ_titles: list[list[int]] = [[] for _ in index_of]
    for row in sorted(
        taxonomy.titles, key=lambda r: (index_of[r["occupation_id"]], int(r["rank"]))
    ):
        key = normalize_label(row["title"])
        if key not in key_index:
            key_index[key] = len(title_keys)
            title_keys.append(key)
            titles.append(display_label(row["title"]))
        per_occ_titles[index_of[row["occupation_id"]]].append(key_index[key])
    occupation_titles = Ragged.of(
        (members, _zipf_weights(len(members), knobs.title_zipf)) for members in per_occ_titles
    )
    return titles, title_keys, occupation_titles


def _related_occupations(
    occupations: list[dict[str, str]], onet_related: list[dict[str, str]], popularity: np.ndarray
) -> Ragged:
    """Each occupation's related ones, drawn by popularity: the same ISCO unit group, or
    linked to an O*NET primary related occupation."""
    by_isco: dict[str, list[int]] = defaultdict(list)
    by_onet: dict[str, list[int]] = defaultdict(list)
    for i, o in enumerate(occupations):
        by_isco[o["isco_group"]].append(i)
        if o["onet_code"]:
            by_onet[o["onet_code"]].append(i)
    primary: dict[str, list[str]] = defaultdict(list)
    for row in onet_related:
        if row["tier"].startswith("Primary"):
            primary[row["onet_code"]].append(row["related_code"])
    rows = []
    for i, o in enumerate(occupations):
        linked = set(by_isco[o["isco_group"]])
        for code in primary.get(o["onet_code"], ()):
            linked.update(by_onet.get(code, ()))
        linked.discard(i)
        ordered = sorted(linked)
        rows.append((ordered, popularity[ordered]))
    return Ragged.of(rows)


class _SkillNames:
    """Skills merged by matching key, numbered in the order first seen; the first spelling
    seen is kept for display."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.names: list[str] = []
        self._index: dict[str, int] = {}

    def id(self, label: str) -> int:
        key = normalize_label(label)
        if key not in self._index:
            self._index[key] = len(self.keys)
            self.keys.append(key)
            self.names.append(display_label(label))
        return self._index[key]


def _skill_relations(
    taxonomy: Taxonomy, index_of: dict[str, int], skills: _SkillNames
) -> list[dict[int, str]]:
    """Per occupation, skill id -> its closest relation (RELATIONS order): ESCO's essential
    and optional skills, then O*NET's (hot) technologies."""
    relation_of: list[dict[int, str]] = [{} for _ in index_of]

    def relate(occ: int, label: str, relation: str) -> None:
        sid = skills.id(label)
        current = relation_of[occ].get(sid)
        if current is None or RELATIONS.index(relation) < RELATIONS.index(current):
            relation_of[occ][sid] = relation

    for row in taxonomy.occupation_skills:
        relate(index_of[row["occupation_id"]], row["skill"], row["relation"])
    technology: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in taxonomy.onet_technology:
        technology[row["onet_code"]].append((row["skill"], row["hot"]))
    for i, o in enumerate(taxonomy.occupations):
        for label, hot in technology.get(o["onet_code"], ()):
            relate(i, label, "hot_technology" if hot == "Y" else "technology")
    return relation_of


def _generic_skills(
    taxonomy: Taxonomy, skills: _SkillNames, knobs: GenerateConfig
) -> tuple[list[int], list[str], list[float]]:
    """The `generic_skills` broadest candidates: their ids, sources and breadths."""
    generic_idx: list[int] = []
    generic_source: list[str] = []
    generic_breadth: list[float] = []
    for row in taxonomy.generic_candidates:  # sorted by breadth, broadest first
        sid = skills.id(row["skill"])
        if sid not in generic_idx and len(generic_idx) < knobs.generic_skills:
            generic_idx.append(sid)
            generic_source.append(row["source"])
            generic_breadth.append(float(row["breadth"]))
    return generic_idx, generic_source, generic_breadth


@dataclass(frozen=True)
class _ListedSkills:
    """Per occupation: the skills a position lists (ids ascending), each one's probability,
    relation code (index into RELATIONS, -1 for a generic skill only) and generic flag."""

    idx: list[np.ndarray]
    prob: list[np.ndarray]
    relation: list[np.ndarray]
    generic: list[np.ndarray]


def _listed_skills(
    relation_of: list[dict[int, str]],
    generic_of: dict[int, float],
    knobs: GenerateConfig,
    rng: np.random.Generator,
) -> _ListedSkills:
    """Each occupation's own skills at rate(relation) x U(rate_jitter, 1), combined with the
    generic skills' rates as independent events."""
    base_rate = {
        "essential": knobs.essential_rate,
        "optional": knobs.optional_rate,
        "hot_technology": knobs.hot_technology_rate,
        "technology": knobs.technology_rate,
    }
    listed = _ListedSkills([], [], [], [])
    for relations_of_occ in relation_of:
        own = sorted(relations_of_occ)
        jitter = rng.uniform(knobs.rate_jitter, 1.0, size=len(own))
        prob = {
            sid: base_rate[relations_of_occ[sid]] * j for sid, j in zip(own, jitter, strict=True)
        }
        for sid, g in generic_of.items():
            prob[sid] = 1.0 - (1.0 - prob.get(sid, 0.0)) * (1.0 - g)
        members = sorted(prob)
        listed.idx.append(np.array(members, dtype=np.int64))
        listed.prob.append(np.array([prob[s] for s in members]))
        relations = [
            RELATIONS.index(relations_of_occ[s]) if s in relations_of_occ else -1 for s in members
        ]
        listed.relation.append(np.array(relations, dtype=np.int8))
        listed.generic.append(np.array([s in generic_of for s in members]))
    return listed


def _company_names(count: int, rng: np.random.Generator) -> list[str]:
    """`count` (at most all) company names made of a stem, a noun and a suffix, in a seeded
    order."""
    names = [
        stem + " " + noun + suffix
        for suffix in _COMPANY_SUFFIXES
        for stem in _COMPANY_STEMS
        for noun in _COMPANY_NOUNS
    ]
    chosen = rng.permutation(len(names))[: min(count, len(names))]
    return [names[c] for c in chosen]


def _plan_segments(
    seed: int, cities: list[str], listed: list[np.ndarray], n_skills: int, count: int
) -> dict[str, list[np.ndarray]]:
    """Per city, per occupation: `count` distinct skills among those the occupation does not list.

    `listed[o]` holds occupation o's planted skills (its own and the generic ones). Each city
    draws from its own seed stream, (seed, 2, crc32 of its code), so its skills depend on
    neither the other cities configured nor plan_truth's stream; with `count` 0 nothing is drawn.
    """
    if count == 0:
        return {}
    fewest = n_skills - max(len(own) for own in listed)
    if count > fewest:
        raise ValueError(
            f"generate.segment_skills ({count}) exceeds the {fewest} skills some occupation "
            "does not list"
        )
    planted: dict[str, list[np.ndarray]] = {}
    for city in sorted(set(cities)):
        key = (2, zlib.crc32(city.encode()))
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))
        per_occupation = []
        for own in listed:
            excluded = set(own.tolist())
            chosen: set[int] = set()
            while len(chosen) < count:  # rejection: the excluded skills are few
                for s in rng.integers(n_skills, size=count).tolist():
                    if s not in excluded and len(chosen) < count:
                        chosen.add(s)
            per_occupation.append(np.array(sorted(chosen), dtype=np.int64))
        planted[city] = per_occupation
    return planted


def truth_tables(truth: Truth) -> dict[str, dict[str, list[object]]]:
    """The planted truth as column dicts: occupations, titles, occupation_skills, generic_skills,
    segment_skills.

    ``titles``: P(title | occupation). ``occupation_skills``: the probability that one
    position of the occupation lists the skill (what single-position profiles show).
    ``segment_skills``: the city-specific skills on top of those, per (city, occupation);
    every column present even when it has no rows.
    """
    n_occ = len(truth.occupation_ids)
    titles: dict[str, list[object]] = defaultdict(list)
    for o in range(n_occ):
        for j in range(*truth.occupation_titles.bounds(o)):
            t = truth.occupation_titles.items[j]
            titles["title"].append(truth.titles[t])
            titles["title_key"].append(truth.title_keys[t])
            titles["occupation_id"].append(truth.occupation_ids[o])
            titles["probability"].append(truth.occupation_titles.probs[j])
    skills: dict[str, list[object]] = defaultdict(list)
    for o in range(n_occ):
        for s, p, r, g in zip(
            truth.skill_idx[o].tolist(),
            truth.skill_prob[o].tolist(),
            truth.skill_relation[o].tolist(),
            truth.skill_generic[o].tolist(),
            strict=True,
        ):
            skills["occupation_id"].append(truth.occupation_ids[o])
            skills["skill"].append(truth.skills[s])
            skills["skill_key"].append(truth.skill_keys[s])
            skills["relation"].append(RELATIONS[r] if r >= 0 else None)
            skills["is_generic"].append(g)
            skills["probability"].append(p)
    segments: dict[str, list[object]] = {
        name: []
        for name in (
            "segment_type", "segment", "occupation_id", "skill_key", "skill_label", "probability"
        )
    }  # fmt: skip
    for city in sorted(truth.segment_idx):
        for o, planted in enumerate(truth.segment_idx[city]):
            for s in planted.tolist():
                segments["segment_type"].append("city")
                segments["segment"].append(city)
                segments["occupation_id"].append(truth.occupation_ids[o])
                segments["skill_key"].append(truth.skill_keys[s])
                segments["skill_label"].append(truth.skills[s])
                segments["probability"].append(truth.segment_rate)
    return {
        "occupations": {
            "occupation_id": list(truth.occupation_ids),
            "label": list(truth.occupation_labels),
            "isco_group": list(truth.isco_groups),
            "onet_code": [c or None for c in truth.onet_codes],
            "popularity": truth.popularity.tolist(),
        },
        "titles": dict(titles),
        "occupation_skills": dict(skills),
        "generic_skills": {
            "skill": [truth.skills[s] for s in truth.generic_idx],
            "skill_key": [truth.skill_keys[s] for s in truth.generic_idx],
            "source": list(truth.generic_source),
            "breadth": list(truth.generic_breadth),
            "rate": list(truth.generic_rate),
        },
        "segment_skills": segments,
    }


# How real profiles write a place (docs/generator.md, `location_pattern_rate`).
PLACE_SHAPES = (
    "{name}",
    "Greater {name} Area",
    "{name} Area",
    "{name} Metropolitan Area",
    "{name} Metro Area",
    "{name} Metro",
    "{name}, {region}",
    "{name}, {region}, {country}",
    "{name}, {country}",
    "{name} Area, {country}",
)


@dataclass(frozen=True)
class CrawlParams:
    """How profiles are drawn from the truth and written: the `generate` section as configured
    (`knobs`, conf/skillrank.yml) and what the crawl takes from conf/aliases.yml and from
    ingest's limits.

    `cities`/`industries`: canonical code -> spellings of the places and industries the
    default filter keeps; `city_parts`: city code -> (its names, the spellings of its region,
    those of its country), for `knobs.location_pattern_rate`; `title_aliases`/`skill_aliases`:
    normalised label -> alternative spellings. The ingest limits shape the malformed lines.
    """

    knobs: GenerateConfig
    cities: dict[str, list[str]]
    city_parts: dict[str, tuple[list[str], list[str], list[str]]]
    industries: dict[str, list[str]]
    title_aliases: dict[str, list[str]]
    skill_aliases: dict[str, list[str]]
    max_line_bytes: int
    max_field_chars: int
    max_skills_ingest: int


@dataclass
class ShardStats:
    """Counts of one shard (or, merged, of the whole crawl)."""

    profiles: int = 0
    profiles_in_scope: int = 0
    snapshots: int = 0
    duplicate_lines: int = 0
    malformed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    lines: int = 0
    positions: int = 0
    skills: int = 0
    # Profiles in scope (final snapshot) holding each title / skill key.
    title_profiles: Counter[str] = field(default_factory=Counter)
    skill_profiles: Counter[str] = field(default_factory=Counter)

    def merge(self, other: ShardStats) -> None:
        """Add the counts of `other` into this one."""
        for name in ("profiles", "profiles_in_scope", "snapshots", "duplicate_lines", "lines"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.positions += other.positions
        self.skills += other.skills
        for reason, n in other.malformed.items():
            self.malformed[reason] += n
        self.title_profiles.update(other.title_profiles)
        self.skill_profiles.update(other.skill_profiles)


@dataclass(frozen=True)
class Shard:
    """The lines of one crawl file (bytes: some malformed lines are not UTF-8) and its counts."""

    lines: list[bytes]
    stats: ShardStats


def shard_ranges(profiles: int, shards: int) -> list[tuple[int, int]]:
    """(first profile number, profile count) of each shard: an even split of `profiles`."""
    bounds = [profiles * i // shards for i in range(shards + 1)]
    return [(bounds[i], bounds[i + 1] - bounds[i]) for i in range(shards)]


def generate_shard(
    truth: Truth,
    params: CrawlParams,
    shard_index: int,
    first_profile: int,
    n_profiles: int,
    seed: int,
) -> Shard:
    """Generate the crawl lines of profiles first_profile .. first_profile + n_profiles - 1.

    The shard draws from its own seed stream (`seed`, `shard_index`), so any shard can be
    generated alone, in any order, with the same bytes. Lines come out in a seeded shuffle:
    every snapshot of a profile, duplicate copies and malformed lines, one JSON object each.
    """
    # spawn(3)'s first two children are spawn(2)'s: the third, for city-specific skills,
    # leaves the streams of a crawl without them as they were.
    np_seq, py_seq, segment_seq = np.random.SeedSequence(seed, spawn_key=(1, shard_index)).spawn(3)
    gen = _ShardGenerator(
        truth, params, np.random.default_rng(np_seq), py_seq, np.random.default_rng(segment_seq)
    )
    for number in range(first_profile, first_profile + n_profiles):
        gen.add_profile(f"p-{number:07d}")
    gen.rnd.shuffle(gen.lines)
    gen.stats.lines = len(gen.lines)
    return Shard(gen.lines, gen.stats)


@dataclass
class _Position:
    occupation: int
    title_key: str
    title: str
    company: str
    start: int  # months since year 0
    end: int | None


class _ShardGenerator:
    """The mutable state of one shard's generation (random streams, lines, counts)."""

    def __init__(
        self,
        truth: Truth,
        params: CrawlParams,
        rng: np.random.Generator,
        py_seq: np.random.SeedSequence,
        segment_rng: np.random.Generator,
    ) -> None:
        self.truth = truth
        self.p = params
        self.rng = rng
        self.segment_rng = segment_rng
        self.rnd = random.Random(int(py_seq.generate_state(1, dtype=np.uint64)[0]))
        self.lines: list[bytes] = []
        self.stats = ShardStats()
        start = date.fromisoformat(params.knobs.crawl_start)
        self.crawl_start = datetime(start.year, start.month, start.day, tzinfo=UTC)
        self.city_codes = sorted(params.cities)
        self.industry_codes = sorted(params.industries)
        self.malformers: dict[str, Callable[[dict[str, object]], bytes]] = {
            "empty_line": self._empty_line,
            "line_too_long": self._line_too_long,
            "invalid_utf8": self._invalid_utf8,
            "invalid_json": self._invalid_json,
            "not_an_object": self._not_an_object,
            "missing_field": self._missing_field,
            "wrong_type": self._wrong_type,
            "invalid_timestamp": self._invalid_timestamp,
            "future_timestamp": self._future_timestamp,
            "too_many_items": self._too_many_items,
            "field_too_long": self._field_too_long,
            "control_characters": self._control_characters,
        }

    # --- sampling helpers -------------------------------------------------------------

    def _pick(self, cum: list[float], lo: int = 0, hi: int | None = None) -> int:
        """Index into [lo, hi) drawn by cumulative weights normalised per range."""
        hi = len(cum) if hi is None else hi
        return min(bisect.bisect_right(cum, self.rnd.random(), lo, hi), hi - 1)

    def _occupation(self) -> int:
        return self._pick(self.truth.popularity_cum)

    def _previous_occupation(self, occ: int) -> int:
        """The occupation of the job before (or after) one in `occ`: same, related or any."""
        r = self.rnd.random()
        if r < self.p.knobs.switch_rate:
            return self._occupation()
        related = self.truth.related
        lo, hi = related.bounds(occ)
        if r < self.p.knobs.switch_rate + self.p.knobs.same_occupation_rate or lo == hi:
            return occ
        return related.items[self._pick(related.cum, lo, hi)]

    def _title(self, occ: int) -> tuple[str, str]:
        """A title of occupation `occ`: its matching key and how this profile spells it."""
        t = self.truth
        titles = t.occupation_titles
        title = titles.items[self._pick(titles.cum, *titles.bounds(occ))]
        key = t.title_keys[title]
        return key, self._variant(t.titles[title], self.p.title_aliases.get(key))

    def _company(self) -> str:
        return self.truth.companies[self._pick(self.truth.company_cum)]

    def _variant(self, text: str, aliases: list[str] | None = None) -> str:
        """A natural spelling of `text`: an alias, another case, or odd spacing, sometimes."""
        rnd, p = self.rnd, self.p
        if aliases and rnd.random() < p.knobs.alias_variant_rate:
            text = rnd.choice(aliases)
        if rnd.random() < p.knobs.case_variant_rate:
            text = rnd.choice((text.lower(), text.upper(), text[:1].upper() + text[1:].lower()))
        if " " in text and rnd.random() < p.knobs.spacing_variant_rate:
            text = text.replace(" ", rnd.choice(("  ", "\u00a0")), 1)
        return text

    def _tenure(self) -> int:
        return 1 + int(self.rnd.expovariate(1.0 / self.p.knobs.tenure_months_mean))

    # --- one person -------------------------------------------------------------------

    def add_profile(self, profile_id: str) -> None:
        """One person: when they were crawled, their career at each snapshot, the skills
        they list, where they live and work, then a line per snapshot (the random draws in
        this order, which fixes the shard's bytes)."""
        crawled = self._crawl_times()
        months = [c.year * 12 + c.month - 1 for c in crawled]
        snapshots = self._snapshots(months)
        held, source_of, order, spelled = self._skills(snapshots[-1])
        p = self.p
        city = self._choose(
            self.city_codes,
            p.knobs.city_rate,
            p.knobs.missing_location_rate,
            len(p.knobs.other_locations),
        )
        industry = self._choose(
            self.industry_codes,
            p.knobs.industry_rate,
            p.knobs.missing_industry_rate,
            len(p.knobs.other_industries),
        )
        if isinstance(city, str) and city in self.truth.segment_idx:
            self._add_city_skills(
                self.truth.segment_idx[city], list(held), source_of, order, spelled
            )
        self.stats.profiles += 1
        for i, (when, current) in enumerate(zip(crawled, snapshots, strict=True)):
            final = i == len(snapshots) - 1
            present = {pos.occupation for pos in current}
            skill_ids = [
                s
                for s in order
                if source_of[s] & present
                and (final or self.rnd.random() >= p.knobs.recrawl_skill_drop_rate)
            ]
            del skill_ids[p.max_skills_ingest :]  # a site lists at most so many skills
            record: dict[str, object] = {
                "profile_id": profile_id,
                "crawled_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "location": self._location(city),
                "industry": self._place(industry, p.industries, p.knobs.other_industries),
                "positions": [
                    {
                        "title": pos.title,
                        "company": pos.company,
                        "start": _month(pos.start),
                        "end": None if pos.end is None else _month(pos.end),
                    }
                    for pos in current
                ],
                "skills": [spelled[s] for s in skill_ids],
            }
            self._emit(record)
            if final:
                self._count_final(current, skill_ids, city, industry)

    def _crawl_times(self) -> list[datetime]:
        """When the person's profile was crawled: once, or recrawled after gaps."""
        rnd, knobs = self.rnd, self.p.knobs
        n_snapshots = 1
        if rnd.random() < knobs.recrawl_rate:
            n_snapshots = 3 if rnd.random() < knobs.third_snapshot_rate else 2
        crawled = [
            self.crawl_start + timedelta(seconds=rnd.randrange(knobs.crawl_window_days * 86400))
        ]
        for _ in range(n_snapshots - 1):
            gap = rnd.randint(knobs.recrawl_gap_days[0], knobs.recrawl_gap_days[1])
            crawled.append(crawled[-1] + timedelta(days=gap, seconds=rnd.randrange(86400)))
        return crawled

    def _snapshots(self, months: list[int]) -> list[list[_Position]]:
        """The career at each crawl (`months` of the crawls), most recent position first: at
        the first, built backwards in time; at a later one, sometimes a new current job (the
        previous one ends when it starts)."""
        rnd, knobs = self.rnd, self.p.knobs
        n_positions = 1 + min(
            int(self.rng.poisson(knobs.extra_positions_mean)), knobs.max_positions - 1
        )
        occupations = [self._occupation()]
        for _ in range(n_positions - 1):
            occupations.append(self._previous_occupation(occupations[-1]))
        end: int | None = (
            None if rnd.random() < knobs.current_job_rate else months[0] - rnd.randint(1, 6)
        )
        cursor = months[0] if end is None else end
        positions: list[_Position] = []
        for occ in occupations:
            start = max(cursor - self._tenure(), _EARLIEST_MONTH)
            positions.append(_Position(occ, *self._title(occ), self._company(), start, end))
            end = max(start - rnd.randint(0, 3), _EARLIEST_MONTH)
            cursor = end
        snapshots = [list(positions)]
        for i in range(1, len(months)):
            current = snapshots[-1]
            if len(current) < knobs.max_positions and rnd.random() < knobs.recrawl_new_job_rate:
                last = current[0]
                earliest = max(months[i - 1], last.start) + 1
                start = rnd.randint(min(earliest, months[i]), months[i])
                occ = self._previous_occupation(last.occupation)
                end = start if last.end is None else min(last.end, start)
                ended = _Position(
                    last.occupation, last.title_key, last.title, last.company, last.start, end
                )
                new = _Position(occ, *self._title(occ), self._company(), start, None)
                current = [new, ended, *current[1:]]
            snapshots.append(current)
        return snapshots

    def _skills(
        self, final: list[_Position]
    ) -> tuple[dict[int, np.ndarray], dict[int, set[int]], list[int], dict[int, str]]:
        """Independent draws per distinct occupation of the final career: the skills each
        occupation gave (`held`), the occupations behind each skill, the person's one order
        of their skills, and how the person spells each."""
        t = self.truth
        held: dict[int, np.ndarray] = {}
        for occ in dict.fromkeys(pos.occupation for pos in final):
            draw = self.rng.random(len(t.skill_prob[occ])) < t.skill_prob[occ]
            held[occ] = t.skill_idx[occ][draw]
        source_of: dict[int, set[int]] = defaultdict(set)
        for occ, planted_ids in held.items():
            for s in planted_ids.tolist():
                source_of[s].add(occ)
        order = list(source_of)
        self.rnd.shuffle(order)
        spelled = {
            s: self._variant(t.skills[s], self.p.skill_aliases.get(t.skill_keys[s])) for s in order
        }
        return held, source_of, order, spelled

    def _add_city_skills(
        self,
        planted: list[np.ndarray],
        occupations: list[int],
        source_of: dict[int, set[int]],
        order: list[int],
        spelled: dict[int, str],
    ) -> None:
        """Draw the city's planted skills of each occupation held, as the occupation's own.

        A skill drawn joins `source_of` under that occupation (so re-crawl snapshots treat it
        like the others); one not listed yet also takes a random place in `order` and a spelling.
        """
        t, p = self.truth, self.p
        for occ in occupations:
            skills = planted[occ]
            drawn = skills[self.segment_rng.random(len(skills)) < t.segment_rate]
            for s in drawn.tolist():
                if s not in source_of:
                    order.insert(int(self.segment_rng.integers(len(order) + 1)), s)
                    spelled[s] = self._variant(t.skills[s], p.skill_aliases.get(t.skill_keys[s]))
                source_of.setdefault(s, set()).add(occ)

    def _choose(
        self, codes: list[str], rate: float, missing: float, n_other: int
    ) -> str | int | None:
        """A canonical code (str) with probability `rate`, None, or an index of the others."""
        r = self.rnd.random()
        if r < rate:
            return self.rnd.choice(codes)
        if r < rate + missing or n_other == 0:
            return None
        return self.rnd.randrange(n_other)

    def _place(
        self, choice: str | int | None, spellings: dict[str, list[str]], others: list[str]
    ) -> str | None:
        if choice is None:
            return None
        if isinstance(choice, str):
            return self._variant(self.rnd.choice(spellings[choice]))
        return self._variant(others[choice])

    def _location(self, choice: str | int | None) -> str | None:
        """A location: a city's spelling, or with `location_pattern_rate` one of the shapes
        real profiles write, or another place (no draw at rate 0: the crawl stays as it was)."""
        p = self.p
        if not (
            isinstance(choice, str)
            and p.knobs.location_pattern_rate
            and self.rnd.random() < p.knobs.location_pattern_rate
        ):
            return self._place(choice, p.cities, p.knobs.other_locations)
        names, regions, countries = p.city_parts[choice]
        shape = self.rnd.choice(PLACE_SHAPES)
        return self._variant(
            shape.format(
                name=self.rnd.choice(names),
                region=self.rnd.choice(regions),
                country=self.rnd.choice(countries),
            )
        )

    def _count_final(
        self, positions: list[_Position], skill_ids: list[int], city: object, industry: object
    ) -> None:
        self.stats.positions += len(positions)
        self.stats.skills += len(skill_ids)
        if isinstance(city, str) and isinstance(industry, str):
            self.stats.profiles_in_scope += 1
            self.stats.title_profiles.update({pos.title_key for pos in positions})
            self.stats.skill_profiles.update(self.truth.skill_keys[s] for s in skill_ids)

    def _emit(self, record: dict[str, object]) -> None:
        line = _dumps(record)
        self.lines.append(line)
        self.stats.snapshots += 1
        if self.rnd.random() < self.p.knobs.duplicate_rate:
            self.lines.append(line)
            self.stats.duplicate_lines += 1
        if self.rnd.random() < self.p.knobs.malformed_rate:
            reason = REASONS[self.rnd.randrange(len(REASONS))]
            self.lines.append(self.malformers[reason](dict(record)))
            self.stats.malformed[reason] += 1

    # --- malformed lines: each must fail exactly its own check of ingest.parse_lines ------

    def _empty_line(self, record: dict[str, object]) -> bytes:
        return self.rnd.choice((b"", b"   "))

    def _line_too_long(self, record: dict[str, object]) -> bytes:
        # An unknown field is ignored by the parser; the size alone is the problem.
        filler = " ".join(self.truth.skills[s] for s in self.truth.generic_idx) or "lorem ipsum"
        repeat = self.p.max_line_bytes // len(filler.encode()) + 2
        record["summary"] = " ".join([filler] * repeat)
        return _dumps(record)

    def _invalid_utf8(self, record: dict[str, object]) -> bytes:
        positions = _positions_of(record)
        if positions:
            positions[0]["company"] = self.rnd.choice(_LATIN1_COMPANIES)
        else:
            record["location"] = "Zürich, Switzerland"
        text = json.dumps(record, ensure_ascii=False)
        return text.encode("latin-1", errors="replace")

    def _invalid_json(self, record: dict[str, object]) -> bytes:
        text = json.dumps(record, ensure_ascii=False)
        if self.rnd.random() < 0.5:  # something after the object: a crawler's comment
            return f"{text} {self.rnd.choice(_TRAILERS)}".encode()
        return text[: self.rnd.randrange(1, len(text))].encode()

    def _not_an_object(self, record: dict[str, object]) -> bytes:
        return _dumps([record])

    def _missing_field(self, record: dict[str, object]) -> bytes:
        name = self.rnd.choice(("profile_id", "crawled_at"))
        how = self.rnd.randrange(3)
        if how == 0:
            del record[name]
        else:
            record[name] = None if how == 1 else ""
        return _dumps(record)

    def _wrong_type(self, record: dict[str, object]) -> bytes:
        how = self.rnd.randrange(4)
        positions = _positions_of(record)
        if how == 0:
            record["profile_id"] = int(str(record["profile_id"]).removeprefix("p-"))
        elif how == 1:
            record["skills"] = ", ".join(str(s) for s in record["skills"])  # type: ignore[attr-defined]
        elif how == 2 and positions:
            record["positions"] = positions[0]
        else:
            record["location"] = {"name": record["location"], "country": None}
        return _dumps(record)

    def _invalid_timestamp(self, record: dict[str, object]) -> bytes:
        record["crawled_at"] = self.rnd.choice(_BAD_TIMESTAMPS)
        return _dumps(record)

    def _future_timestamp(self, record: dict[str, object]) -> bytes:
        # A crawler clock set decades ahead: later than any ingest's tolerance.
        record["crawled_at"] = f"{2090 + self.rnd.randrange(10)}-01-01T00:00:00Z"
        return _dumps(record)

    def _too_many_items(self, record: dict[str, object]) -> bytes:
        n = self.p.max_skills_ingest + 1 + self.rnd.randrange(50)
        pool = self.truth.skills
        record["skills"] = [pool[self.rnd.randrange(len(pool))] for _ in range(n)]
        return _dumps(record)

    def _field_too_long(self, record: dict[str, object]) -> bytes:
        # Keyword stuffing: a title that lists skills until it is over the limit.
        words: list[str] = []
        while len(" | ".join(words)) <= self.p.max_field_chars:
            words.append(self.truth.skills[self.rnd.randrange(len(self.truth.skills))])
        stuffed = " | ".join(words)
        positions = _positions_of(record)
        if positions:
            positions[0]["title"] = stuffed
        else:
            record["skills"] = [stuffed]
        return _dumps(record)

    def _control_characters(self, record: dict[str, object]) -> bytes:
        char = self.rnd.choice(_CONTROL_CHARACTERS)
        positions = _positions_of(record)
        if positions:
            title = str(positions[0]["title"])
            cut = self.rnd.randrange(len(title) + 1)
            positions[0]["title"] = title[:cut] + char + title[cut:]
        else:
            record["location"] = f"{record['location'] or ''}{char}"
        return _dumps(record)


def _positions_of(record: dict[str, object]) -> list[dict[str, object]]:
    """The record's positions, copied so that editing them leaves the valid line alone."""
    positions = [dict(pos) for pos in record["positions"]]  # type: ignore[attr-defined]
    record["positions"] = positions
    return positions


def _dumps(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def _month(months: int) -> str:
    return f"{months // 12:04d}-{months % 12 + 1:02d}"


def gzip_lines(lines: list[bytes], level: int) -> bytes:
    """The lines, newline-terminated, as gzip bytes that depend on the content only."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=buffer, mode="wb", compresslevel=level, mtime=0) as out:
        for line in lines:
            out.write(line)
            out.write(b"\n")
    return buffer.getvalue()


def vocabulary_estimate(
    stats: ShardStats, min_title_profiles: int, min_skill_profiles: int
) -> dict[str, int]:
    """Distinct title and skill keys held by at least the minimum number of in-scope profiles.

    A rough preview of the prepare stage's vocabularies (which count training profiles only).
    """
    return {
        "titles": sum(1 for n in stats.title_profiles.values() if n >= min_title_profiles),
        "skills": sum(1 for n in stats.skill_profiles.values() if n >= min_skill_profiles),
    }
