-- The DuckDB side of benchmarks/etl.py: the same parse, quarantine, deduplicate, normalise,
-- filter and count as Spark's ingest + prepare, on the same crawl files.
-- Double-brace placeholders are filled in by etl.py (files, ingest limits, the filter); the
-- table place_alias(kind, spelling, code) is loaded by etl.py from conf/aliases.yml, keyed
-- by the spelling normalised as prepare does it (skillrank.prepare.alias_lookup).
-- Results: tables etl_counts (one row) and etl_reasons (reason, n).

SET TimeZone = 'UTC';

-- Every line as text. The CSV reader has no delimiter, quote or escape that JSON uses, so
-- a line is one value; lines it cannot read (invalid UTF-8, mostly) land in reject_errors.
CREATE TEMP TABLE parsed AS
WITH raw AS (
    SELECT
        line,
        CASE WHEN strlen(line) <= {{max_line_bytes}} AND json_valid(line) THEN line END AS js
    FROM read_csv(
        {{files}},
        columns = {'line': 'VARCHAR'},
        header = false,
        auto_detect = false,
        delim = E'\x01',
        quote = '',
        escape = '',
        ignore_errors = true,
        store_rejects = true,
        rejects_table = 'crawl_rejects',
        rejects_scan = 'crawl_reject_scans'
    )
),
object AS (
    SELECT
        line,
        js,
        json_type(js) AS kind,
        CASE WHEN json_type(js) = 'OBJECT' THEN json_extract(
            js,
            ['$.profile_id', '$.crawled_at', '$.location', '$.industry', '$.positions', '$.skills']
        ) END AS v
    FROM raw
),
typed AS (
    SELECT
        line,
        js,
        kind,
        v[5] AS j_positions,
        v[6] AS j_skills,
        json_type(v[1]) AS k_profile_id,
        json_type(v[2]) AS k_crawled_at,
        json_type(v[3]) AS k_location,
        json_type(v[4]) AS k_industry,
        json_type(v[5]) AS k_positions,
        json_type(v[6]) AS k_skills,
        CASE WHEN json_type(v[1]) = 'VARCHAR' THEN v[1] ->> '$' END AS profile_id,
        CASE WHEN json_type(v[2]) = 'VARCHAR' THEN v[2] ->> '$' END AS crawled_at,
        CASE WHEN json_type(v[3]) = 'VARCHAR' THEN v[3] ->> '$' END AS location,
        CASE WHEN json_type(v[4]) = 'VARCHAR' THEN v[4] ->> '$' END AS industry
    FROM object
),
checked AS (
    SELECT
        *,
        -- positions: absent, null, or an array of objects whose four fields are strings or null
        k_positions IS NULL OR k_positions = 'NULL' OR (
            k_positions = 'ARRAY'
            AND coalesce(list_bool_and([t = 'OBJECT' FOR t IN json_type(j_positions, '$[*]')]), true)
            AND coalesce(list_bool_and([
                t IN ('VARCHAR', 'NULL') FOR t IN list_concat(
                    json_type(j_positions, '$[*].title'), json_type(j_positions, '$[*].company'),
                    json_type(j_positions, '$[*].start'), json_type(j_positions, '$[*].end'))
            ]), true)
        ) AS positions_ok,
        k_skills IS NULL OR k_skills = 'NULL' OR (
            k_skills = 'ARRAY'
            AND coalesce(
                list_bool_and([t IN ('VARCHAR', 'NULL') FOR t IN json_type(j_skills, '$[*]')]), true)
        ) AS skills_ok,
        -- every string of the known fields, for the length and control-character checks
        list_concat(
            [profile_id, crawled_at, location, industry],
            CASE WHEN k_positions = 'ARRAY' THEN list_concat(
                json_extract_string(j_positions, '$[*].title'),
                json_extract_string(j_positions, '$[*].company'),
                json_extract_string(j_positions, '$[*].start'),
                json_extract_string(j_positions, '$[*].end')) END,
            CASE WHEN k_skills = 'ARRAY' THEN json_extract_string(j_skills, '$[*]') END
        ) AS strings
    FROM typed
),
judged AS (
    SELECT
        line,
        profile_id,
        try_cast(crawled_at AS TIMESTAMPTZ) AS crawled_at,
        location,
        industry,
        CASE
            WHEN line IS NULL OR trim(line) = '' THEN 'empty_line'
            WHEN strlen(line) > {{max_line_bytes}} THEN 'line_too_long'
            WHEN js IS NULL THEN 'invalid_json'
            WHEN kind <> 'OBJECT' THEN 'not_an_object'
            WHEN k_profile_id IS NULL OR k_profile_id = 'NULL'
                OR (k_profile_id = 'VARCHAR' AND trim(profile_id) = '') THEN 'missing_field'
            WHEN k_crawled_at IS NULL OR k_crawled_at = 'NULL'
                OR (k_crawled_at = 'VARCHAR' AND trim(crawled_at) = '') THEN 'missing_field'
            WHEN k_profile_id <> 'VARCHAR' OR k_crawled_at <> 'VARCHAR'
                OR coalesce(k_location NOT IN ('VARCHAR', 'NULL'), false)
                OR coalesce(k_industry NOT IN ('VARCHAR', 'NULL'), false)
                OR NOT positions_ok OR NOT skills_ok THEN 'wrong_type'
            WHEN try_cast(crawled_at AS TIMESTAMPTZ) IS NULL THEN 'invalid_timestamp'
            WHEN try_cast(crawled_at AS TIMESTAMPTZ) > {{not_after}} THEN 'future_timestamp'
            WHEN k_positions = 'ARRAY' AND json_array_length(j_positions) > {{max_positions}}
                THEN 'too_many_items'
            WHEN k_skills = 'ARRAY' AND json_array_length(j_skills) > {{max_skills}}
                THEN 'too_many_items'
            WHEN coalesce(list_max([length(x) FOR x IN strings]), 0) > {{max_field_chars}}
                THEN 'field_too_long'
            WHEN regexp_matches(array_to_string(strings, ' '), '\p{Cc}') THEN 'control_characters'
        END AS reason
    FROM checked
)
SELECT
    reason,
    profile_id,
    crawled_at,
    location,
    industry,
    CASE WHEN reason IS NULL THEN sha256(line) END AS line_sha256
FROM judged;

-- Lines the CSV reader could not read at all: one reject row per line.
CREATE TEMP TABLE unreadable AS
SELECT
    CASE error_type
        WHEN 'INVALID ENCODING' THEN 'invalid_utf8'
        WHEN 'LINE SIZE OVER MAXIMUM' THEN 'line_too_long'
        ELSE 'unreadable_' || lower(replace(error_type, ' ', '_'))
    END AS reason
FROM (SELECT DISTINCT scan_id, file_id, line, error_type FROM crawl_rejects);

CREATE TEMP TABLE etl_reasons AS
SELECT reason, count(*) AS n
FROM (SELECT reason FROM parsed WHERE reason IS NOT NULL UNION ALL SELECT reason FROM unreadable)
GROUP BY reason;

-- One row per profile: latest crawled_at wins, ties to the smallest line hash (as prepare).
-- Places normalised as lower-case, trimmed, whitespace (Unicode spaces too) collapsed:
-- close to prepare's NFKC + casefold, not identical.
CREATE TEMP TABLE etl_counts AS
WITH latest AS (
    SELECT
        profile_id,
        arg_min(
            {'location': location, 'industry': industry},
            (-epoch_us(crawled_at), line_sha256)
        ) AS snapshot
    FROM parsed
    WHERE reason IS NULL
    GROUP BY profile_id
),
placed AS (
    SELECT city.code AS city, industry.code AS industry
    FROM latest
    LEFT JOIN place_alias AS city
        ON city.kind = 'city'
        AND city.spelling = trim(regexp_replace(lower(snapshot.location), '[\s\p{Z}]+', ' ', 'g'))
    LEFT JOIN place_alias AS industry
        ON industry.kind = 'industry'
        AND industry.spelling
            = trim(regexp_replace(lower(snapshot.industry), '[\s\p{Z}]+', ' ', 'g'))
)
SELECT
    (SELECT count(*) FROM parsed) + (SELECT count(*) FROM unreadable) AS raw_lines,
    (SELECT count(*) FROM parsed WHERE reason IS NULL) AS accepted,
    (SELECT count(*) FROM placed) AS profiles,
    (
        SELECT count(*) FROM placed
        WHERE city IN {{cities}} AND industry IN {{industries}}
    ) AS kept;
