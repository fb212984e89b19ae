"""Table declarations: comments for analysts, and docs/tables.md in step with the code."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs._delta_log import live_rows
from skillrank.config import Config, ConfigError
from skillrank.tables import SPECS, declare_tables, table_name
from skillrank.views import VIEWS
from tests.conftest import warehouse_dir

DOCS = Path(__file__).resolve().parent.parent / "docs" / "tables.md"


def test_declared_tables_carry_every_column_comment(spark: SparkSession, config: Config) -> None:
    catalog = replace(config.catalog, database="t_declared")
    local = replace(config, catalog=catalog)
    declare_tables(spark, local, list(SPECS))
    warehouse = warehouse_dir(spark)
    for key, spec in SPECS.items():
        described = {
            r.col_name: r.comment
            for r in spark.sql(f"DESCRIBE TABLE {table_name(local, key)}").collect()
        }
        expected = {f.name: f.metadata["comment"] for f in spec.schema}
        assert {k: described.get(k) for k in expected} == expected, key
        # Created empty: its log adds no data file. Read from the log (the test of the log
        # reader below), not by a count: a table's first count took 0.45-0.57 s and three
        # Spark jobs in a warm session (2026-12-05, ten tables, twice).
        table_dir = warehouse / f"{catalog.database}.db" / catalog.tables[key].lower()
        assert live_rows(table_dir, [spec.schema[0].name]) == [], key


def test_every_column_comment_fits_the_metastore() -> None:
    # The Hive metastore keeps a view's column comments in COLUMNS_V2.COMMENT, VARCHAR(256):
    # a longer one (the current_* views copy their table's) fails every CREATE VIEW, which
    # Derby retries ten times two seconds apart before Spark falls back.
    comments = [(k, f.name, f.metadata["comment"]) for k, s in SPECS.items() for f in s.schema]
    comments += [(v.name, name, comment) for v in VIEWS for name, comment in v.columns]
    assert [(k, c, len(t)) for k, c, t in comments if len(t) > 256] == []


def test_docs_describe_every_table_and_column() -> None:
    text = DOCS.read_text()
    for key, spec in SPECS.items():
        assert f"## `{key}` (owner: {spec.owner})" in text
        for field in spec.schema:
            assert f"| `{field.name}` | {field.dataType.simpleString()} |" in text, (
                key,
                field.name,
            )


def test_published_tables_refuse_impossible_rows(spark: SparkSession, config: Config) -> None:
    local = replace(config, catalog=replace(config.catalog, database="t_checks"))
    declare_tables(spark, local, ["job_skill_rank"])
    declare_tables(spark, local, ["job_skill_rank"])  # again: each constraint is added once
    table = table_name(local, "job_skill_rank")
    # run_id, job_id, job_title, rank, skill_id, skill_name, weight, probability,
    # probability_low, probability_high, rank_best, rank_worst, support
    good = ["'r1'", "0", "'nurse'", "2", "0", "'triage'", "2.5", "0.5", "0.4", "0.6", "1"]
    good += ["NULL", "3"]
    spark.sql(f"INSERT INTO {table} VALUES ({', '.join(good)})")
    names = [f.name for f in SPECS["job_skill_rank"].schema]
    for changes, error in (
        ({"rank": "0", "rank_best": "NULL"}, "CHECK constraint rank_from_1"),
        ({"probability": "1.5", "probability_high": "NULL"}, "CHECK constraint probability_in_0_1"),
        ({"support": "-1"}, "CHECK constraint support_non_negative"),
        ({"skill_name": "NULL"}, "NOT NULL constraint"),
        ({"probability_low": "0.55"}, "CHECK constraint interval_holds_probability"),
        ({"rank_best": "3"}, "CHECK constraint rank_range_holds_rank"),
        ({"rank_worst": "1"}, "CHECK constraint rank_range_holds_rank"),
    ):
        row = [changes.get(name, v) for name, v in zip(names, good, strict=True)]
        with pytest.raises(Exception, match=error):
            spark.sql(f"INSERT INTO {table} VALUES ({', '.join(row)})")
    assert [tuple(r) for r in spark.table(table).collect()] == [
        ("r1", 0, "nurse", 2, 0, "triage", 2.5, 0.5, 0.4, 0.6, 1, None, 3)
    ]


def _older_table(
    spark: SparkSession, config: Config, database: str, key: str, lacking: list[str]
) -> tuple[Config, str]:
    """Table `key` as an older version made it: plain Delta, without the `lacking` columns
    and without constraints, in a new database; the config naming it, and its name."""
    local = replace(config, catalog=replace(config.catalog, database=database))
    declare_tables(spark, local, [])
    table = table_name(local, key)
    columns = [
        f"{f.name} {f.dataType.simpleString()}" for f in SPECS[key].schema if f.name not in lacking
    ]
    spark.sql(f"CREATE TABLE {table} ({', '.join(columns)}) USING delta")
    return local, table


def test_a_table_created_without_its_constraints_gains_them_once(
    spark: SparkSession, config: Config
) -> None:
    local, table = _older_table(spark, config, "t_unchecked", "job_neighbors", [])
    # run_id, job_id, job_title, rank, neighbor_job_id, neighbor_job_title, similarity,
    # neighbor_profiles
    spark.sql(f"INSERT INTO {table} VALUES ('r1', 0, 'nurse', 0, 1, 'welder', 0.5, 9)")  # unchecked
    with pytest.raises(Exception, match=r"1 rows in .* violate the new CHECK constraint \(rank"):
        declare_tables(spark, local, ["job_neighbors"])  # an old row breaks it: refused
    spark.sql(f"DELETE FROM {table} WHERE rank = 0")
    declare_tables(spark, local, ["job_neighbors"])
    declare_tables(spark, local, ["job_neighbors"])  # again: each constraint is added once
    properties = {r.key: r.value for r in spark.sql(f"SHOW TBLPROPERTIES {table}").collect()}
    assert properties["delta.constraints.rank_from_1"] == "rank >= 1"
    assert "delta.constraints.similarity_in_range" in properties
    with pytest.raises(Exception, match="CHECK constraint similarity_in_range"):
        spark.sql(f"INSERT INTO {table} VALUES ('r1', 0, 'nurse', 1, 1, 'welder', 1.5, 9)")


def test_phi_is_written_without_dictionary_pages_and_an_older_phi_gains_the_setting(
    spark: SparkSession, config: Config
) -> None:
    # phi's table property turns Parquet's dictionary encoding off (a run's weights are
    # distinct floats); a phi an older version created without it gains it, in one commit.
    local, table = _older_table(spark, config, "t_dictionary", "phi", [])
    commits = DeltaTable.forName(spark, table).history().count()
    declare_tables(spark, local, ["phi"])
    declare_tables(spark, local, ["phi"])  # again: nothing more to set
    assert DeltaTable.forName(spark, table).history().count() == commits + 1
    fresh = replace(local, catalog=replace(local.catalog, database="t_dictionary_new"))
    declare_tables(spark, fresh, ["phi"])
    for name in (table, table_name(fresh, "phi")):
        properties = {r.key: r.value for r in spark.sql(f"SHOW TBLPROPERTIES {name}").collect()}
        assert properties["parquet.enable.dictionary"] == "false", name
        # Few distinct weights: without the setting, Parquet would store them as a dictionary.
        spark.sql(f"INSERT INTO {name} VALUES ('r1', 0, array(1.0F, 1.0F, 2.0F, 1.0F))")
        location = spark.sql(f"DESCRIBE DETAIL {name}").first().location.removeprefix("file:")
        (data,) = (f for f in Path(location).rglob("*.parquet") if "_delta_log" not in f.parts)
        group = pq.ParquetFile(data).metadata.row_group(0)
        columns = (group.column(i) for i in range(group.num_columns))
        (weights,) = (c for c in columns if c.path_in_schema == "weights.list.element")
        assert not weights.has_dictionary_page and "PLAIN" in weights.encodings, name


def test_a_location_left_by_a_killed_create_is_cleared_but_data_is_kept(
    spark: SparkSession, config: Config
) -> None:
    database = f"t_orphan_{uuid.uuid4().hex[:6]}"
    local = replace(config, catalog=replace(config.catalog, database=database))
    declare_tables(spark, local, [])
    root = spark.catalog.getDatabase(database).locationUri.rstrip("/")
    # Killed between Delta's first commit and the metastore's CREATE: an empty Delta table
    # at the table's location that no catalog entry names.
    spark.range(0).write.format("delta").save(f"{root}/job_vocab")
    declare_tables(spark, local, ["job_vocab"])
    assert spark.table(table_name(local, "job_vocab")).columns == [
        f.name for f in SPECS["job_vocab"].schema
    ]
    # A location holding rows is somebody's data: refused, left as it is.
    spark.range(3).write.format("delta").save(f"{root}/skill_vocab")
    with pytest.raises(ConfigError, match="holds a Delta table with data"):
        declare_tables(spark, local, ["skill_vocab"])
    assert spark.read.format("delta").load(f"{root}/skill_vocab").count() == 3


def test_a_table_of_an_older_version_gains_the_new_columns_in_place(
    spark: SparkSession, config: Config
) -> None:
    local, table = _older_table(spark, config, "t_evolve", "runs", ["model", "validation_ndcg"])
    old = [f for f in SPECS["runs"].schema if f.name not in ("model", "validation_ndcg")]
    values = {"run_id": "'r1'", "status": "'succeeded'", "started_at": "current_timestamp()"}
    row = ", ".join(values.get(f.name, "NULL") for f in old)
    spark.sql(f"INSERT INTO {table} VALUES ({row})")
    declare_tables(spark, local, ["runs"])
    assert spark.table(table).columns == [f.name for f in SPECS["runs"].schema]
    kept = spark.table(table).select("run_id", "status", "model", "validation_ndcg").collect()
    assert [tuple(r) for r in kept] == [("r1", "succeeded", None, None)]


def test_phi_of_the_long_layout_becomes_one_row_per_job_every_run_kept(
    spark: SparkSession, config: Config
) -> None:
    local = replace(config, catalog=replace(config.catalog, database="t_long_phi"))
    declare_tables(spark, local, [])
    table = table_name(local, "phi")
    # phi as versions before 2026-12-01 wrote it: one row per (run, job, skill).
    spark.sql(
        f"CREATE TABLE {table} (run_id string NOT NULL, job_id int NOT NULL, skill_id int NOT"
        " NULL, weight float NOT NULL) USING delta PARTITIONED BY (run_id)"
    )
    long_rows = [
        (run, j, s, j - s / 4 + (run == "r2"))
        for run in ("r1", "r2")
        for j in range(2)
        for s in (2, 0, 1)
    ]
    spark.createDataFrame(
        long_rows, "run_id string, job_id int, skill_id int, weight float"
    ).write.insertInto(table)
    expected = sorted(
        (run, j, [j - s / 4 + (run == "r2") for s in range(3)])
        for run in ("r1", "r2")
        for j in range(2)
    )
    declare_tables(spark, local, ["phi"])
    assert spark.table(table).columns == ["run_id", "job_id", "weights"]
    assert sorted(tuple(r) for r in spark.table(table).collect()) == expected
    assert not spark.catalog.tableExists(f"{table}_long_layout")
    # Killed after the rename (the old table holds runs the new one lacks): taken up again,
    # the runs already converted not twice.
    legacy = f"{table}_long_layout"
    spark.sql(
        f"CREATE TABLE {legacy} (run_id string, job_id int, skill_id int, weight float) USING delta"
    )
    spark.sql(
        f"INSERT INTO {legacy} VALUES ('r1', 0, 0, 9.0), ('r3', 0, 1, 0.5), ('r3', 0, 0, -1.0)"
    )
    declare_tables(spark, local, ["phi"])
    assert sorted(tuple(r) for r in spark.table(table).collect()) == sorted(
        [*expected, ("r3", 0, [-1.0, 0.5])]
    )
    assert not spark.catalog.tableExists(f"{table}_long_layout")


def test_the_log_reader_sees_the_rows_spark_sees_or_says_it_cannot(
    spark: SparkSession, tmp_path: Path
) -> None:
    # jobs._delta_log reads `runs` before Spark starts (checks of --run-id): through
    # checkpoints, updates and deletes it must agree with Delta row for row.
    path = str(tmp_path / "t")
    spark.sql(
        f"CREATE TABLE delta.`{path}` (run_id STRING, status STRING)"
        " USING delta TBLPROPERTIES ('delta.checkpointInterval' = '2')"
    )
    table = DeltaTable.forPath(spark, path)
    for i in range(4):
        spark.createDataFrame([(f"r{i}", "running")], "run_id STRING, status STRING").write.format(
            "delta"
        ).mode("append").save(path)
        if i % 2:
            table.update(F.col("run_id") == f"r{i - 1}", {"status": F.lit("succeeded")})
    table.delete(F.col("run_id") == "r2")
    assert (tmp_path / "t" / "_delta_log" / "_last_checkpoint").is_file()

    def rows() -> list[tuple[object, ...]] | None:
        found = live_rows(tmp_path / "t", ["run_id", "status"])
        return None if found is None else sorted(tuple(r.values()) for r in found)

    expected = sorted(tuple(r) for r in spark.read.format("delta").load(path).collect())
    assert rows() == expected and len(expected) == 3
    assert ("r0", "succeeded") in expected and ("r3", "running") in expected
    # A checkpoint that _last_checkpoint names but that is not there: left to Spark.
    last = tmp_path / "t" / "_delta_log" / "_last_checkpoint"
    named = last.read_text()
    last.write_text('{"version": 99}')
    assert rows() is None
    last.write_text(named)
    assert rows() == expected

    spark.sql(
        f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.columnMapping.mode' = 'name',"
        " 'delta.minReaderVersion' = '2', 'delta.minWriterVersion' = '5')"
    )
    assert rows() is None  # physical column names differ: left to Spark
    assert live_rows(tmp_path / "missing", ["run_id"]) is None
