"""The one SparkSession factory, and the Spark settings shared with spark-submit and spark-sql.

``spark_settings`` is the single source of the project's Spark configuration (Delta,
warehouse, Derby metastore, time zone); the launcher passes the same settings to
``spark-submit``/``spark-sql`` and ``build_spark`` to a session built from Python.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from importlib.metadata import version
from pathlib import Path

from pyspark.sql import SparkSession

from skillrank.config import PROJECT_ROOT, Config


def resolve_path(workdir: Path, path: str) -> str:
    """A config path as a URI: URIs pass through, relative paths land under the work directory."""
    if "://" in path:
        return path
    return (workdir / path).resolve().as_uri()


def _local_path(workdir: Path, path: str) -> Path:
    return (workdir / path).resolve()


def delta_package() -> str:
    """Maven coordinate of the Delta JAR that matches the installed pyspark and delta-spark."""
    spark_minor = ".".join(version("pyspark").split(".")[:2])
    return f"io.delta:delta-spark_{spark_minor}_2.13:{version('delta-spark')}"


def delta_jars(config: Config) -> list[str]:
    """JARs Ivy already resolved for ``delta_package()``; empty until the first resolution."""
    listing = _jar_listing(config)
    if not listing.is_file():
        return []
    jars = listing.read_text().split()
    return jars if jars and all(Path(j).is_file() for j in jars) else []


def record_delta_jars(spark: SparkSession, config: Config) -> list[str]:
    """After Ivy resolved the package, remember its JARs so later runs skip resolution."""
    jars = sorted(
        uri.removeprefix("file://").removeprefix("file:")
        for uri in spark.conf.get("spark.jars", "").split(",")
        if uri.endswith(".jar")
    )
    if jars:
        _jar_listing(config).write_text("\n".join(jars) + "\n")
    return jars


def _jar_listing(config: Config) -> Path:
    """Where the resolved JAR list is kept: one file per coordinate and exclusion list."""
    excludes = hashlib.sha256(",".join(config.spark.delta_jar_excludes).encode()).hexdigest()
    safe = delta_package().replace(":", "_")
    return PROJECT_ROOT / config.spark.ivy_dir / f"{safe}-{excludes[:8]}.jars"


def spark_settings(config: Config, workdir: Path) -> dict[str, str]:
    """Every Spark setting of the project for this work directory (without the master)."""
    metastore = _local_path(workdir, config.catalog.metastore_dir)
    settings = {
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": resolve_path(workdir, config.catalog.warehouse_dir),
        "spark.hadoop.javax.jdo.option.ConnectionURL": (
            f"jdbc:derby:;databaseName={metastore};create=true"
        ),
        "spark.driver.extraJavaOptions": (
            f"-Dderby.system.home={metastore.parent}"
            f" -Dlog4j2.configurationFile={(PROJECT_ROOT / 'conf' / 'log4j2.properties').as_uri()}"
        ),
        "spark.driver.memory": config.spark.driver_memory,
        "spark.sql.shuffle.partitions": str(config.spark.shuffle_partitions),
        # Delta replays its log with this many tasks (default 50: slow for small tables).
        "spark.databricks.delta.snapshotPartitions": str(config.spark.shuffle_partitions),
        "spark.sql.session.timeZone": config.spark.session_timezone,
        "spark.jars.ivy": str(PROJECT_ROOT / config.spark.ivy_dir),
    }
    jars = delta_jars(config)
    if jars:
        settings["spark.jars"] = ",".join(jars)
    else:
        settings["spark.jars.packages"] = delta_package()
        settings["spark.jars.excludes"] = ",".join(config.spark.delta_jar_excludes)
    settings.update(config.spark.extra_conf)
    return settings


def repair_metastore(config: Config, workdir: Path) -> bool:
    """Remove a Derby metastore whose creation a killed process cut short; True if it did.

    Derby writes service.properties first when it creates a database: a metastore directory
    without it never finished creating, so it registers no table, and Derby refuses to open
    it ("Perhaps Derby was brought down in the middle of creating this database"). Call only
    while no other process uses the work directory (the launcher's lock).
    """
    metastore = _local_path(workdir, config.catalog.metastore_dir)
    if not metastore.is_dir() or (metastore / "service.properties").is_file():
        return False
    shutil.rmtree(metastore)
    return True


def build_spark(
    config: Config, workdir: Path, master: str, app_name: str, extra: dict[str, str] | None = None
) -> SparkSession:
    """Build (or join) the SparkSession with Delta, the warehouse and the metastore of `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    if repair_metastore(config, workdir):
        print(
            f"warning: removed the half-created metastore {config.catalog.metastore_dir} of a"
            " killed run; it is created again",
            file=sys.stderr,
        )
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in {**spark_settings(config, workdir), **(extra or {})}.items():
        builder = builder.config(key, value)
    spark = builder.enableHiveSupport().getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    if not delta_jars(config):
        record_delta_jars(spark, config)
    return spark
