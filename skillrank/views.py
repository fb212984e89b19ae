"""The analysts' views and functions over the published tables (docs/sql.md).

Each answers one question about the current run directly; parameters are plain
columns to filter on (a documented WHERE, with literals or session variables), except the
skill gap, whose list of skills a person holds is an argument of the table function
``skill_gap``. The scalar function ``normalize_name`` spells a name as ``prepare`` stored it.
Every view and every column carries a comment (``DESCRIBE`` shows it).
``train``, the owner of the tables they read, creates them with CREATE OR REPLACE.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pyspark.sql import SparkSession

from skillrank.config import Config
from skillrank.promotion import current_run_sql
from skillrank.publish import RUN_TABLES
from skillrank.tables import SPECS, table_name
from skillrank.text import NAME_SPACES


@dataclass(frozen=True)
class View:
    name: str
    comment: str
    # (column, comment), in the order of the SELECT list.
    columns: tuple[tuple[str, str], ...]
    # SELECT with {table} placeholders (logical table keys) and {current} (the run_id).
    query: str
    # The column of a view with a support floor (publish.view_min_support): the view shows
    # the rows of its table function <name>_supported_by(min_support) at the default floor.
    support: str = ""


_RUN = ("run_id", "train run the row comes from (runs.run_id): the current one")
_PROBABILITY_JOB = "job2vec entry: softmax of the job's phi column over all skills"
_LOW = (
    "probability_low",
    "lower end of the 90% interval of probability (null for train.model=softmax)",
)
_HIGH = ("probability_high", "upper end of the 90% interval of probability")
_RANK_RANGE = (
    ("rank_best", "highest rank the intervals allow (null for train.model=softmax)"),
    (
        "rank_worst",
        "lowest rank the intervals allow; null where the skill may leave the top"
        " publish.top_k (and for train.model=softmax); rank_best = rank_worst: settled",
    ),
)


def _floored(name: str) -> str:
    """The sentence of a floored view's comment that says what it leaves out."""
    return (
        " Rows with support below publish.view_min_support are left out (the others keep"
        f" their rank among all); {name}_supported_by(n) takes another floor."
    )


VIEWS = (
    View(
        "skills_for_job",
        "SkillRank of the current run: the top publish.top_k skills of every job title."
        " Filter: WHERE job_title = '...' ORDER BY rank." + _floored("skills_for_job"),
        (
            ("job_title", "job title, as in job_vocab (spelled by normalize_name)"),
            ("rank", "1 = the job's strongest skill"),
            ("skill_name", "skill"),
            ("weight", "phi[skill, job]; higher is stronger"),
            ("probability", _PROBABILITY_JOB + "; higher is stronger"),
            _LOW,
            _HIGH,
            *_RANK_RANGE,
            ("support", "training profiles holding both the job and the skill"),
            _RUN,
        ),
        "SELECT job_title, rank, skill_name, weight, probability, probability_low,"
        " probability_high, rank_best, rank_worst, support, run_id FROM {job_skill_rank}"
        " WHERE run_id = {current}",
        support="support",
    ),
    View(
        "skills_for_job_in",
        "SkillRank within one city or one industry, current run: the top publish.top_k skills"
        " of a job title among the segment's profiles, shrunk toward the pooled ranking"
        " (skills_for_job) where the segment has few profiles of the job. Filter: WHERE"
        " job_title = '...' AND segment = '...' ORDER BY rank.",
        (
            ("job_title", "job title"),
            ("segment_type", "city or industry"),
            ("segment", "canonical city or industry code (as profiles.city, profiles.industry)"),
            ("rank", "1 = the job's strongest skill in the segment"),
            ("skill_name", "skill"),
            ("probability", "the skill's probability for the job within the segment"),
            _LOW,
            _HIGH,
            *_RANK_RANGE,
            ("lift", "probability / the pooled probability: > 1 means more in this segment"),
            ("support", "training profiles of the segment holding both the job and the skill"),
            ("profiles", "training profiles of the segment holding the job"),
            _RUN,
        ),
        "SELECT job_title, segment_type, segment, rank, skill_name, probability,"
        " probability_low, probability_high, rank_best, rank_worst, lift, support, profiles,"
        " run_id"
        " FROM {job_skill_rank_by_segment} WHERE run_id = {current}",
    ),
    View(
        "distinctive_skills",
        "The skills a segment (city or industry) needs more than the job does overall, current"
        " run: rows of skills_for_job_in with lift > 1, the surest first when ordered by"
        " confident DESC, lift DESC. Filter: WHERE job_title = '...' AND segment = '...'"
        " AND support >= 5 ORDER BY confident DESC, lift DESC.",
        (
            ("job_title", "job title"),
            ("segment_type", "city or industry"),
            ("segment", "canonical city or industry code"),
            ("skill_name", "skill"),
            ("rank", "the skill's rank for the job within the segment"),
            ("probability", "the skill's probability for the job within the segment"),
            _LOW,
            _HIGH,
            ("pooled_probability", "the skill's probability for the job over all profiles"),
            ("lift", "probability / pooled_probability (> 1)"),
            (
                "confident",
                "true when probability_low > pooled_probability: the segment's excess is"
                " unlikely to be sampling noise",
            ),
            ("support", "training profiles of the segment holding both the job and the skill"),
            ("profiles", "training profiles of the segment holding the job"),
            _RUN,
        ),
        "SELECT job_title, segment_type, segment, skill_name, rank, probability,"
        " probability_low, probability_high, probability / lift AS pooled_probability, lift,"
        " probability_low > probability / lift AS confident, support, profiles, run_id"
        " FROM {job_skill_rank_by_segment} WHERE run_id = {current} AND lift > 1",
    ),
    View(
        "jobs_for_skill",
        "The top publish.top_k job titles of every skill in the current run."
        " Filter: WHERE skill_name = '...' ORDER BY rank." + _floored("jobs_for_skill"),
        (
            ("skill_name", "skill, as in skill_vocab (spelled by normalize_name)"),
            ("rank", "1 = the job title that implies the skill most"),
            ("job_title", "job title"),
            ("weight", "phi[skill, job]; higher is stronger"),
            ("probability", "skill2vec entry: softmax of the skill's phi row over all jobs"),
            ("support", "training profiles holding both the job and the skill"),
            _RUN,
        ),
        "SELECT skill_name, rank, job_title, weight, probability, support, run_id"
        " FROM {skill_job_rank} WHERE run_id = {current}",
        support="support",
    ),
    View(
        "similar_jobs",
        "The publish.neighbors_k job titles nearest to every job title (job2vec cosine),"
        " current run. Filter: WHERE job_title = '...' ORDER BY rank." + _floored("similar_jobs"),
        (
            ("job_title", "job title"),
            ("rank", "1 = the most similar other job title"),
            ("similar_job_title", "a similar job title"),
            ("similarity", "cosine similarity of the two job2vec vectors, in [-1, 1]"),
            ("support", "training profiles holding the similar job title"),
            _RUN,
        ),
        "SELECT job_title, rank, neighbor_job_title, similarity, neighbor_profiles, run_id"
        " FROM {job_neighbors} WHERE run_id = {current}",
        support="support",
    ),
    View(
        "similar_skills",
        "The publish.neighbors_k skills nearest to every skill (skill2vec cosine),"
        " current run. Filter: WHERE skill_name = '...' ORDER BY rank."
        + _floored("similar_skills"),
        (
            ("skill_name", "skill"),
            ("rank", "1 = the most similar other skill"),
            ("similar_skill_name", "a similar skill"),
            ("similarity", "cosine similarity of the two skill2vec vectors, in [-1, 1]"),
            ("support", "training profiles holding the similar skill"),
            _RUN,
        ),
        "SELECT skill_name, rank, neighbor_skill_name, similarity, neighbor_profiles, run_id"
        " FROM {skill_neighbors} WHERE run_id = {current}",
        support="support",
    ),
    View(
        "upskilling",
        "Moving from one job title to another: the skills of to_job's SkillRank that to_job"
        " implies more than from_job does, with the difference of their job2vec"
        " probabilities. Filter: WHERE from_job = '...' AND to_job = '...'"
        " ORDER BY probability_gain DESC.",
        (
            ("from_job", "the job title a person holds"),
            ("to_job", "the job title they aim for"),
            ("skill_name", "a skill among to_job's top publish.top_k"),
            ("to_rank", "the skill's rank for to_job"),
            ("to_probability", "job2vec probability of the skill for to_job"),
            (
                "from_probability",
                "job2vec probability of the skill for from_job; 0 when the skill is outside"
                " from_job's top publish.top_k (it is then below from_job's k-th probability)",
            ),
            ("from_rank", "the skill's rank for from_job; null when outside its top k"),
            ("probability_gain", "to_probability - from_probability (> 0); rank by it"),
            ("to_support", "training profiles holding both to_job and the skill"),
            _RUN,
        ),
        "SELECT f.job_title AS from_job, t.job_title AS to_job, t.skill_name,"
        " t.rank AS to_rank, t.probability AS to_probability,"
        " coalesce(h.probability, 0D) AS from_probability, h.rank AS from_rank,"
        " t.probability - coalesce(h.probability, 0D) AS probability_gain,"
        " t.support AS to_support, t.run_id"
        " FROM (SELECT DISTINCT job_title FROM {job_skill_rank} WHERE run_id = {current}) f"
        " CROSS JOIN (SELECT * FROM {job_skill_rank} WHERE run_id = {current}) t"
        " LEFT JOIN (SELECT * FROM {job_skill_rank} WHERE run_id = {current}) h"
        " ON h.job_title = f.job_title AND h.skill_id = t.skill_id"
        " WHERE f.job_title <> t.job_title"
        " AND t.probability > coalesce(h.probability, 0D)",
    ),
    View(
        "run_comparison",
        "How each job title's SkillRank changed between two succeeded runs (any pair, by"
        " run_id; rows of all runs stay in job_skill_rank). Filter: WHERE base_run_id ="
        " '...' AND new_run_id = '...' AND job_title = '...', or WHERE latest_pair for the"
        " current run against the one before it.",
        (
            ("base_run_id", "the earlier run compared (runs.run_id)"),
            ("new_run_id", "the later run compared (runs.run_id)"),
            (
                "latest_pair",
                "true when new_run_id is the current run and base_run_id the succeeded"
                " run that ended before it",
            ),
            ("job_title", "job title"),
            ("skill_name", "a skill in the job's top publish.top_k of either run"),
            ("base_rank", "rank in base_run_id; null when not in its top k"),
            ("new_rank", "rank in new_run_id; null when not in its top k"),
            ("rank_change", "base_rank - new_rank: > 0 moved up; null when in only one run"),
            ("change", "new, dropped, up, down or same"),
            ("base_probability", "job2vec probability in base_run_id; null when not in top k"),
            ("new_probability", "job2vec probability in new_run_id; null when not in top k"),
        ),
        "SELECT base_run_id, new_run_id, latest_pair, job_title, skill_name, base_rank,"
        " new_rank, base_rank - new_rank AS rank_change,"
        " CASE WHEN base_rank IS NULL THEN 'new' WHEN new_rank IS NULL THEN 'dropped'"
        " WHEN new_rank < base_rank THEN 'up' WHEN new_rank > base_rank THEN 'down'"
        " ELSE 'same' END AS change, base_probability, new_probability"
        " FROM (SELECT p.base_run_id, p.new_run_id, p.latest_pair, s.job_title, s.skill_name,"
        " max(CASE WHEN s.run_id = p.base_run_id THEN s.rank END) AS base_rank,"
        " max(CASE WHEN s.run_id = p.new_run_id THEN s.rank END) AS new_rank,"
        " max(CASE WHEN s.run_id = p.base_run_id THEN s.probability END) AS base_probability,"
        " max(CASE WHEN s.run_id = p.new_run_id THEN s.probability END) AS new_probability"
        " FROM (SELECT a.run_id AS base_run_id, b.run_id AS new_run_id,"
        " b.run_id = {current} AND a.run_id = {previous} AS latest_pair"
        " FROM {runs} a JOIN {runs} b ON a.status = 'succeeded' AND b.status = 'succeeded'"
        " AND a.run_id <> b.run_id) p"
        " JOIN {job_skill_rank} s ON s.run_id = p.base_run_id OR s.run_id = p.new_run_id"
        " GROUP BY p.base_run_id, p.new_run_id, p.latest_pair, s.job_title, s.skill_name)",
    ),
)

NORMALIZE_NAME_COMMENT = (
    "A job title, skill, city or industry spelled as prepare stores it: format characters"
    " (Unicode Cf: zero-width, bidirectional controls, soft hyphen) removed, NFKC, full case"
    " folding, whitespace runs as one space, trimmed; NULL when nothing is left. Usage:"
    " WHERE job_title = skillrank.normalize_name('Data Scientist')."
)
SKILL_GAP_COMMENT = (
    "Skill gap: the top skills of target_job (its SkillRank in the current run) that a person"
    " holding held_skills lacks, strongest first. Names are compared through normalize_name;"
    " NULL elements of held_skills are ignored and a NULL list holds nothing. Usage:"
    " SELECT * FROM skillrank.skill_gap('data scientist', array('python', 'sql'))."
)


def view_statements(config: Config) -> dict[str, tuple[str, str]]:
    """Name -> (CREATE OR REPLACE statement, digest of the definition) of every view (the
    current_* views, the analysts' views) and function (normalize_name before skill_gap,
    which calls it)."""
    database = config.catalog.database
    runs = table_name(config, "runs")
    names = {key: table_name(config, key) for key in config.catalog.tables}
    current = current_run_sql(runs, names["run_events"])
    previous = (
        f"(SELECT max_by(run_id, ended_at) FROM {runs} WHERE status = 'succeeded'"
        f" AND ended_at < (SELECT max(ended_at) FROM {runs} WHERE run_id = {current}))"
    )
    current_views = [
        View(
            f"current_{key}",
            f"The current run only (docs/operations.md). {SPECS[key].comment}",
            (),
            f"SELECT * FROM {{{key}}} WHERE run_id = {{current}}",
        )
        for key in ("runs", *RUN_TABLES)
        if key != "phi"
    ]
    current_views.append(
        View(
            "current_phi",
            "The current run only (docs/operations.md). The learned matrix phi, one row per"
            " (job, skill): the table phi's weights arrays exploded.",
            (
                ("run_id", _RUN[1]),
                ("job_id", "job title (job_vocab.job_id)"),
                ("skill_id", "skill (skill_vocab.skill_id)"),
                ("weight", "phi[skill, job]: higher means the job implies the skill more"),
            ),
            "SELECT run_id, job_id, skill_id, weight FROM {phi}"
            " LATERAL VIEW posexplode(weights) entries AS skill_id, weight"
            " WHERE run_id = {current}",
        )
    )
    statements = {}
    for view in (*current_views, *VIEWS):
        columns = ", ".join(f"{name} COMMENT {_quote(text)}" for name, text in view.columns)
        query = view.query.format(current=current, previous=previous, **names)
        if view.support:
            # The rows at any floor, the view's columns; the view calls it at the default.
            function = f"{view.name}{FLOOR_SUFFIX}"
            statements[function] = _function(
                database,
                function,
                f"(min_support BIGINT DEFAULT {config.publish.view_min_support}"
                f" COMMENT {_quote(_FLOOR_ARGUMENT)}) RETURNS TABLE",
                f"The rows of {view.name} that at least min_support training profiles back"
                f" ({view.support} >= min_support); {view.name} itself shows those of the"
                " default (publish.view_min_support).",
                f"SELECT * FROM ({query}) AS shown({', '.join(n for n, _ in view.columns)})"
                # Null: a run published before its table had the column (not floored).
                f" WHERE coalesce({view.support} >= {function}.min_support, true)",
            )
            query = f"SELECT * FROM {database}.{function}()"
        digest = _digest(columns, view.comment, query)
        statements[view.name] = (
            f"CREATE OR REPLACE VIEW {database}.{view.name} {f'({columns})' if columns else ''}"
            f" COMMENT {_quote(view.comment)}"
            f" TBLPROPERTIES ('{_DIGEST_PROPERTY}' = '{digest}') AS {query}",
            digest,
        )
    # skillrank.text.normalize_text in Spark SQL: Java's regex for Cf and whitespace,
    # ICU4J (a JAR of Spark's) for NFKC and full case folding, called through reflect, which
    # fails on NULL (hence the CASE). tests/test_prepare.py checks that the two agree.
    visible = "regexp_replace(s, " + _quote(r"\p{Cf}") + ", '')"
    nfkc = f"reflect('com.ibm.icu.text.Normalizer', 'compose', {visible}, true)"
    folded = f"reflect('com.ibm.icu.lang.UCharacter', 'foldCase', {nfkc}, true)"
    spaced = f"regexp_replace({folded}, {_quote(NAME_SPACES)}, ' ')"
    statements["normalize_name"] = _function(
        database,
        "normalize_name",
        "(s STRING COMMENT 'a name as typed') RETURNS STRING DETERMINISTIC",
        NORMALIZE_NAME_COMMENT,
        f"CASE WHEN s IS NOT NULL THEN nullif(trim({spaced}), '') END",
    )
    signature = (
        "(target_job STRING COMMENT 'the job title aimed for',"
        " held_skills ARRAY<STRING> COMMENT 'the skills the person has')"
        " RETURNS TABLE (gap_rank INT, skill_name STRING, rank INT, probability DOUBLE,"
        " support BIGINT, run_id STRING)"
    )
    # An anti join, not array_contains over transform: Spark calls no SQL function in a
    # lambda. A NULL list explodes to no rows; a NULL element's normalize_name equals nothing.
    body = (
        "SELECT CAST(row_number() OVER (ORDER BY rank) AS INT), skill_name, rank,"
        f" probability, support, run_id FROM {database}.skills_for_job"
        f" LEFT ANTI JOIN (SELECT {database}.normalize_name(s) AS held"
        " FROM explode(skill_gap.held_skills) AS held_skills(s)) ON held = skill_name"
        f" WHERE job_title = {database}.normalize_name(skill_gap.target_job)"
    )
    statements["skill_gap"] = _function(database, "skill_gap", signature, SKILL_GAP_COMMENT, body)
    return statements


def _function(database: str, name: str, signature: str, comment: str, body: str) -> tuple[str, str]:
    """CREATE OR REPLACE FUNCTION and its digest, which the comment carries (functions have
    no properties)."""
    digest = _digest(signature, comment, body)
    described = _quote(f"{comment} [definition {digest}]")
    return (
        f"CREATE OR REPLACE FUNCTION {database}.{name}{signature}"
        f" COMMENT {described} RETURN {body}",
        digest,
    )


def declare_views(spark: SparkSession, config: Config) -> list[str]:
    """Create the views and functions that are missing or defined differently; their names.

    One whose definition is unchanged is left alone: CREATE OR REPLACE drops and recreates it
    in the metastore, and a query arriving in between would not find it (seen by the
    concurrent queries of tests/test_sql.py while a run published).
    """
    database = config.catalog.database
    created = []
    for name, (statement, digest) in view_statements(config).items():
        qualified = f"{database}.{name}"
        if name in _FUNCTIONS:
            unchanged = spark.catalog.functionExists(qualified) and any(
                f"[definition {digest}]" in row[0]
                for row in spark.sql(f"DESCRIBE FUNCTION EXTENDED {qualified}").collect()
            )
        else:
            unchanged = spark.catalog.tableExists(qualified) and any(
                r.key == _DIGEST_PROPERTY and r.value == digest
                for r in spark.sql(f"SHOW TBLPROPERTIES {qualified}").collect()
            )
        if not unchanged:
            spark.sql(statement)
            created.append(name)
    return created


_DIGEST_PROPERTY = "skillrank.definition"
# The table function of each view with a support floor: <view>_supported_by(min_support).
FLOOR_SUFFIX = "_supported_by"
_FLOOR_ARGUMENT = "fewest training profiles a row needs (its support column)"
_FUNCTIONS = (
    "normalize_name",
    "skill_gap",
    *(f"{view.name}{FLOOR_SUFFIX}" for view in VIEWS if view.support),
)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
