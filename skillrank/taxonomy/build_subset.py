"""Derive the taxonomy subset the crawl generator reads from ESCO v1.2.0 and O*NET 29.2.

Run once from the project root (``python -m skillrank.taxonomy.build_subset``); it reads
``../shared/data`` (or ``--source``) and rewrites the ``*.csv.gz`` files beside this module.
The output is byte-identical for the same input. SOURCES.md lists what each file holds and
every change made to the upstream data.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from skillrank.generate import clean_label, normalize_label

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[2] / "shared" / "data"

# ESCO skills listed by at least this many occupations, and O*NET technology examples used
# by at least this share of O*NET occupations, are candidates for generic skills.
ESCO_GENERIC_TOP = 200
ONET_GENERIC_MIN_SHARE = 0.2


def _read_csv(path: Path, tab: bool = False) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        if tab:
            return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
        return list(csv.DictReader(handle))


def _write_csv_gz(path: Path, header: list[str], rows: Sequence[tuple[object, ...]]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    # mtime=0 and no file name in the header, so the bytes depend on the content only.
    with (
        path.open("wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=9, mtime=0) as out,
    ):
        out.write(text.getvalue().encode("utf-8"))
    print(f"{path.name}: {len(rows)} rows, {path.stat().st_size} bytes")


def build(source: Path, target: Path) -> None:
    """Read the upstream files under `source`, write the subset files into `target`."""
    esco = source / "esco-v1.2.0"
    onet = source / "onet-29.2"

    occupations = sorted(_read_csv(esco / "occupations_en.csv"), key=lambda o: o["code"])
    uri_to_code = {o["conceptUri"]: o["code"] for o in occupations}
    titles: list[tuple[object, ...]] = []
    labels_of: dict[str, list[str]] = {}
    for occ in occupations:
        seen: set[str] = set()
        labels = []
        for label in [occ["preferredLabel"], *occ["altLabels"].split("\n")]:
            label = clean_label(label)
            if label and normalize_label(label) not in seen:
                seen.add(normalize_label(label))
                labels.append(label)
        labels_of[occ["code"]] = labels
        titles += [(occ["code"], rank, label) for rank, label in enumerate(labels)]

    relations: dict[tuple[str, str], str] = {}
    for row in _read_csv(esco / "occupation_skill_relations_by_label.csv"):
        key = (uri_to_code[row["occupationUri"]], clean_label(row["skillLabel"]))
        # 17 pairs are listed both ways upstream: essential wins.
        if relations.get(key) != "essential":
            relations[key] = row["relationType"]
    skill_rows = sorted((code, skill, rel) for (code, skill), rel in relations.items())

    alternate = _read_csv(onet / "Alternate Titles.txt", tab=True)
    reported = _read_csv(onet / "Sample of Reported Titles.txt", tab=True)
    onet_by_title: dict[str, set[str]] = defaultdict(set)
    for row in alternate:
        onet_by_title[normalize_label(row["Alternate Title"])].add(row["O*NET-SOC Code"])
    for row in reported:
        onet_by_title[normalize_label(row["Reported Job Title"])].add(row["O*NET-SOC Code"])

    occupation_rows: list[tuple[object, ...]] = []
    for occ in occupations:
        votes = Counter(
            code
            for label in labels_of[occ["code"]]
            for code in onet_by_title[normalize_label(label)]
        )
        # Most shared titles wins; ties go to the smaller O*NET-SOC code.
        linked = min(votes, key=lambda c: (-votes[c], c)) if votes else ""
        occupation_rows.append(
            (occ["code"], occ["iscoGroup"], clean_label(occ["preferredLabel"]), linked)
        )

    technology = _read_csv(onet / "Technology Skills.txt", tab=True)
    tech_rows = sorted(
        {(r["O*NET-SOC Code"], clean_label(r["Example"]), r["Hot Technology"]) for r in technology}
    )
    related = _read_csv(onet / "Related Occupations.txt", tab=True)
    related_rows = [
        (r["O*NET-SOC Code"], r["Related O*NET-SOC Code"], r["Relatedness Tier"], int(r["Index"]))
        for r in related
    ]

    generic: list[tuple[str, str, float]] = []
    esco_breadth = Counter(skill for (_, skill) in relations)
    for skill, count in esco_breadth.most_common(ESCO_GENERIC_TOP):
        generic.append((skill, "esco-occupations", round(count / len(occupations), 4)))
    for collection, name in (
        ("transversalSkillsCollection_en.csv", "esco-transversal"),
        ("digCompSkillsCollection_en.csv", "esco-digcomp"),
    ):
        for row in _read_csv(esco / collection):
            skill = clean_label(row["preferredLabel"])
            generic.append((skill, name, round(esco_breadth[skill] / len(occupations), 4)))
    onet_codes = {r["O*NET-SOC Code"] for r in technology}
    onet_breadth = Counter(skill for (_, skill, _) in tech_rows)
    for skill, count in onet_breadth.most_common():
        share = count / len(onet_codes)
        if share >= ONET_GENERIC_MIN_SHARE:
            generic.append((skill, "onet-technology", round(share, 4)))
    generic.sort(key=lambda g: (-float(g[2]), str(g[1]), str(g[0])))

    target.mkdir(parents=True, exist_ok=True)
    _write_csv_gz(
        target / "occupations.csv.gz",
        ["occupation_id", "isco_group", "label", "onet_code"],
        occupation_rows,
    )
    _write_csv_gz(target / "titles.csv.gz", ["occupation_id", "rank", "title"], titles)
    _write_csv_gz(
        target / "occupation_skills.csv.gz", ["occupation_id", "skill", "relation"], skill_rows
    )
    _write_csv_gz(target / "onet_technology.csv.gz", ["onet_code", "skill", "hot"], tech_rows)
    _write_csv_gz(
        target / "onet_related.csv.gz",
        ["onet_code", "related_code", "tier", "index"],
        related_rows,
    )
    _write_csv_gz(target / "generic_candidates.csv.gz", ["skill", "source", "breadth"], generic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="../shared/data")
    parser.add_argument("--target", type=Path, default=HERE, help="where the subset goes")
    args = parser.parse_args()
    build(args.source, args.target)


if __name__ == "__main__":
    main()
