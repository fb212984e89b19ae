"""The one SparkSession factory, and the Spark settings shared with spark-submit and spark-sql.

``spark_settings`` is the single source of the project's Spark configuration (Delta,
warehouse, Derby metastore, time zone); the launcher passes the same settings to
``spark-submit``/``spark-sql`` and ``build_spark`` to a session built from Python.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from skillrank.config import PROJECT_ROOT, Config
from skillrank.servers import served_metastore_port


def resolve_path(workdir: Path, path: str) -> str:
    """A config path as a URI: URIs pass through, relative paths land under the work directory
    as file:<absolute path>, not percent-encoded: Hadoop's Path takes the string as it is, so
    an encoded space would name a directory "%20"."""
    if "://" in path:
        return path
    return f"file:{(workdir / path).resolve()}"


def local_path(uri: str) -> Path | None:
    """The local path of a file: URI as resolve_path writes it (file:/..., file:///...), read
    as Hadoop reads it (no percent-decoding); None for any other scheme."""
    if not uri.startswith("file:"):
        return None
    return Path("/" + uri.removeprefix("file:").lstrip("/"))


def hadoop_path(spark: SparkSession, uri: str) -> tuple[Any, Any]:
    """`uri` as a Hadoop Path and the FileSystem that serves it (py4j objects), through the
    session's Hadoop configuration: how the stages list, read and delete files of any
    scheme Spark reads."""
    path = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(uri)  # type: ignore[union-attr]
    return path, path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())


def _local_path(workdir: Path, path: str) -> Path:
    return (workdir / path).resolve()


def _pyspark_jars() -> Path:
    """The JARs of the Spark distribution in use (pyspark's own, or SPARK_HOME's)."""
    import pyspark

    return Path(os.environ.get("SPARK_HOME") or Path(pyspark.__file__).parent) / "jars"


def derby_version() -> str:
    """Version of the Derby engine pyspark ships (its network server must match it)."""
    engines = sorted(_pyspark_jars().glob("derby-*.jar"))
    if not engines:
        raise RuntimeError(f"no derby-<version>.jar in {_pyspark_jars()}")
    return engines[0].name.removeprefix("derby-").removesuffix(".jar")


# Ivy's repositories for the first resolution: Maven Central alone (see the file).
IVY_SETTINGS = PROJECT_ROOT / "conf" / "ivysettings.xml"


def jar_packages() -> list[str]:
    """Maven coordinates resolved through Ivy: the Delta JAR matching the installed pyspark
    and delta-spark, and Derby's network server and client (for ``thriftserver``)."""
    spark_minor = ".".join(version("pyspark").split(".")[:2])
    derby = derby_version()
    return [
        f"io.delta:delta-spark_{spark_minor}_2.13:{version('delta-spark')}",
        f"org.apache.derby:derbynet:{derby}",
        f"org.apache.derby:derbyclient:{derby}",
    ]


def package_jars(config: Config) -> list[str]:
    """JARs Ivy already resolved for ``jar_packages()``; empty until the first resolution."""
    listing = _jar_listing(config)
    if not listing.is_file():
        return []
    jars = listing.read_text().split()
    return jars if jars and all(Path(j).is_file() for j in jars) else []


def record_package_jars(spark: SparkSession, config: Config) -> list[str]:
    """After Ivy resolved the packages, remember their JARs so later runs skip resolution."""
    jars = sorted(
        uri.removeprefix("file://").removeprefix("file:")
        for uri in (spark.conf.get("spark.jars", "") or "").split(",")
        if uri.endswith(".jar")
    )
    if jars:
        _jar_listing(config).write_text("\n".join(jars) + "\n")
    return jars


def _jar_listing(config: Config) -> Path:
    """Where the resolved JAR list is kept: one file per coordinate set and exclusion list."""
    key = ",".join(jar_packages()) + "|" + ",".join(config.spark.jar_excludes)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    safe = jar_packages()[0].replace(":", "_")
    return PROJECT_ROOT / config.spark.ivy_dir / f"{safe}-{digest}.jars"


def derby_server_classpath(config: Config) -> list[str]:
    """Classpath of Derby's network server: pyspark's Derby engine plus the resolved derbynet."""
    shipped = sorted(str(p) for p in _pyspark_jars().glob("derby*.jar"))
    return shipped + [j for j in package_jars(config) if "_derbynet-" in Path(j).name]


def _derby_client_jars(config: Config) -> list[str]:
    return [j for j in package_jars(config) if "_derbyclient-" in Path(j).name]


# The driver JVM's class-data sharing archive (JDK 13+'s dynamic AppCDS): the classes a Spark
# driver with Delta and the Hive metastore loads, parsed, verified and laid out once by
# `setup` (jobs/_launch.py), mapped by every later driver instead of read from the JARs. A
# driver on a fresh work directory that declares every table loaded 22,147 classes from
# JARs in 17.3-17.5 s of class-loading time without it, 5,478-5,481 in 5.8-6.4 s with it,
# and opened the new metastore in 7.9 s against 4.0-4.6 s (2026-12-03, 2 cores, the JVM's
# own counters, two runs each).
CLASS_ARCHIVE_DIR = PROJECT_ROOT / ".cache" / "jvm"
# The JVM checks an archive against its own build and the class path (JAR sizes and times)
# and runs without it when they differ; by default it says so on standard output, as it does
# for each class it cannot archive. The archive only saves time: it never prints.
QUIET_CLASS_SHARING = "-Xlog:cds=off -Xlog:cds+dynamic=off"


def class_archive(config: Config) -> Path:
    """Where the class archive of this Java, this pyspark and these Delta JARs lives (it may
    not exist yet). A new JDK, pyspark or JAR set gets its own file."""
    home = os.environ.get("JAVA_HOME")
    java = Path(home) / "bin" / "java" if home else Path(shutil.which("java") or "java")
    java = java.resolve()
    stat = java.stat() if java.is_file() else None
    identity = [str(java), str(stat and (stat.st_size, stat.st_mtime_ns)), version("pyspark")]
    digest = hashlib.sha256("\n".join([*identity, *package_jars(config)]).encode())
    return CLASS_ARCHIVE_DIR / f"spark-{digest.hexdigest()[:16]}.jsa"


def spark_settings(config: Config, workdir: Path) -> dict[str, str]:
    """Every Spark setting of the project for this work directory (without the master)."""
    metastore = _local_path(workdir, config.catalog.metastore_dir)
    served_port = served_metastore_port(config, workdir)
    if served_port is None:  # embedded: this process opens the database itself
        metastore_url = f"jdbc:derby:;databaseName={metastore};create=true"
        metastore_driver = "org.apache.derby.jdbc.EmbeddedDriver"  # Hive's default
    else:  # the Thrift server's Derby network server holds it (docs/sql.md)
        metastore_url = f"jdbc:derby://127.0.0.1:{served_port}/{metastore};create=true"
        metastore_driver = "org.apache.derby.jdbc.ClientDriver"
    settings = {
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": resolve_path(workdir, config.catalog.warehouse_dir),
        "spark.hadoop.javax.jdo.option.ConnectionURL": metastore_url,
        "spark.hadoop.javax.jdo.option.ConnectionDriverName": metastore_driver,
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
    archive = class_archive(config)
    if archive.is_file():
        settings["spark.driver.extraJavaOptions"] += (
            f" -XX:SharedArchiveFile={archive} {QUIET_CLASS_SHARING}"
        )
    jars = package_jars(config)
    if jars:
        settings["spark.jars"] = ",".join(jars)
        # The metastore's JDBC driver must be on the driver's own classpath.
        settings["spark.driver.extraClassPath"] = ":".join(_derby_client_jars(config))
    else:
        settings["spark.jars.packages"] = ",".join(jar_packages())
        settings["spark.jars.excludes"] = ",".join(config.spark.jar_excludes)
        settings["spark.jars.ivySettings"] = str(IVY_SETTINGS)
    settings.update(config.spark.extra_conf)
    return settings


# What Derby writes into a database directory (the rest of a complete one: service.properties).
_DERBY_ENTRIES = frozenset(
    ("seg0", "log", "tmp", "db.lck", "dbex.lck", "README_DO_NOT_TOUCH_FILES.txt")
)


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
    if any(entry.name not in _DERBY_ENTRIES for entry in metastore.iterdir()):
        return False  # not Derby's alone: nothing is deleted, and Derby's error says why
    shutil.rmtree(metastore)
    return True


def driver_environment(master: str, env: Mapping[str, str]) -> dict[str, str]:
    """The environment of a driver JVM for `master`, from `env`.

    A local master runs everything on this machine, so its driver, block manager and web UI
    listen on the loopback address only (SPARK_LOCAL_IP: Spark binds the UI to it, or to
    every interface without it), unless `env` already names an address. A cluster's
    executors must reach the driver, so other masters keep Spark's choice.
    """
    chosen = dict(env)
    if master.startswith("local"):
        chosen.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    return chosen


def build_spark(
    config: Config, workdir: Path, master: str, app_name: str, extra: dict[str, str] | None = None
) -> SparkSession:
    """Build (or join) the SparkSession with Delta, the warehouse and the metastore of `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    # pyspark starts the JVM (when none runs yet) with this process's environment. Its Python
    # workers run this interpreter unless told otherwise (spark-submit.sh sets it too), not
    # whichever `python3` comes first on the PATH.
    os.environ.update(driver_environment(master, os.environ))
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
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
    if not package_jars(config):
        record_package_jars(spark, config)
    return spark
