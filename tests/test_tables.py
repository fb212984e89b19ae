"""Table declarations: comments for analysts, and docs/tables.md in step with the code."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pyspark.sql import SparkSession

from skillrank.config import Config
from skillrank.tables import SPECS, declare_tables, table_name

DOCS = Path(__file__).resolve().parent.parent / "docs" / "tables.md"


def test_declared_tables_carry_every_column_comment(spark: SparkSession, config: Config) -> None:
    catalog = replace(config.catalog, database="t_declared")
    local = replace(config, catalog=catalog)
    declare_tables(spark, local, list(SPECS))
    for key, spec in SPECS.items():
        described = {
            r.col_name: r.comment
            for r in spark.sql(f"DESCRIBE TABLE {table_name(local, key)}").collect()
        }
        expected = {f.name: f.metadata["comment"] for f in spec.schema}
        assert {k: described.get(k) for k in expected} == expected, key
        assert spark.table(table_name(local, key)).count() == 0


def test_docs_describe_every_table_and_column() -> None:
    text = DOCS.read_text()
    for key, spec in SPECS.items():
        assert f"## `{key}` (owner: {spec.owner})" in text
        for field in spec.schema:
            assert f"| `{field.name}` | {field.dataType.simpleString()} |" in text, (
                key,
                field.name,
            )
