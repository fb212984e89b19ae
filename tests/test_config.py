"""The configuration object: loading, overrides, and every kind of bad value."""

from __future__ import annotations

import math
import subprocess
import sys
import time
import typing
from dataclasses import fields
from pathlib import Path
from typing import Annotated
from xml.etree import ElementTree

import pytest
import yaml
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs._launch import _archive_classes
from jobs._launch import main as launch
from skillrank import session
from skillrank.config import CONF_DIR, Bound, Config, ConfigError, GenerateConfig, load_config
from skillrank.session import driver_environment, local_path, resolve_path, spark_settings


def test_defaults_hold_the_papers_six_cities_and_industries() -> None:
    config = load_config()
    assert config.prepare.cities == [
        "SAN_FRANCISCO_BAY_AREA",
        "NEW_YORK_METROPOLITAN_AREA",
        "SEATTLE",
        "PITTSBURGH",
        "MUMBAI",
        "NEW_DELHI",
    ]
    assert len(config.prepare.industries) == 6
    assert config.prepare.split_fractions == {"train": 0.9, "validation": 0.05, "test": 0.05}
    assert config.spark.master == "local[*]"


def test_overrides_are_typed_and_change_the_fingerprint() -> None:
    base = load_config()
    changed = load_config(
        overrides=["prepare.min_job_profiles=7", "prepare.cities=[SEATTLE, MUMBAI]"]
    )
    assert changed.prepare.min_job_profiles == 7
    assert changed.prepare.cities == ["SEATTLE", "MUMBAI"]
    assert changed.fingerprint() != base.fingerprint()
    assert load_config().fingerprint() == base.fingerprint()


def test_evaluate_defaults_bootstrap_and_bucket_titles() -> None:
    evaluate = load_config().evaluate
    assert (evaluate.bootstrap_samples, evaluate.title_buckets) == (1000, [5, 20, 50])
    changed = load_config(overrides=["evaluate.title_buckets=[2, 100]"]).evaluate
    assert changed.title_buckets == [2, 100]


def test_extra_spark_conf_takes_free_form_keys() -> None:
    config = load_config(
        overrides=[
            "spark.extra_conf.spark.executor.memory=2g",
            "sql.hive_conf.hive.server2.authentication.ldap.url=ldaps://ldap.example.com",
        ]
    )
    assert config.spark.extra_conf == {"spark.executor.memory": "2g"}
    assert config.sql.hive_conf == {
        "hive.server2.authentication.ldap.url": "ldaps://ldap.example.com"
    }


def test_spark_settings_pass_through_as_written() -> None:
    # As spark-submit's own --conf: a spark.* key that is not the spark section's own goes
    # to Spark with its text unchanged (YAML would have made "true" a boolean, "010" 10).
    config = load_config(
        overrides=[
            "spark.executor.memory=4g",
            "spark.sql.adaptive.enabled=true",
            "spark.extra_conf.spark.task.cpus=010",
            "spark.driver_memory=2g",  # the section's own key
        ]
    )
    assert config.spark.extra_conf == {
        "spark.executor.memory": "4g",
        "spark.sql.adaptive.enabled": "true",
        "spark.task.cpus": "010",
    }
    assert config.spark.driver_memory == "2g"
    settings = spark_settings(config, Path("/tmp/w"))
    assert (settings["spark.executor.memory"], settings["spark.driver.memory"]) == ("4g", "2g")


@pytest.mark.parametrize(
    ("text", "number"),
    [("1e-3", 0.001), ("1E5", 100000.0), ("2.5e+2", 250.0), (".5", 0.5), ("+3", 3.0)],
)
def test_numbers_are_read_in_every_usual_spelling(text: str, number: float) -> None:
    # PyYAML (YAML 1.1) reads 1e-3 and 1E5 as text: the number keys take them all the same.
    assert load_config(overrides=[f"train.learning_rate={text}"]).train.learning_rate == number


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.learning_rate=1e", "'train.learning_rate' must be a number, got '1e'"),
        ("train.learning_rate=fast", "'train.learning_rate' must be a number, got 'fast'"),
        ("prepare.min_job_profile=3", "unknown config key 'prepare.min_job_profile'"),
        ("nosuch.key=1", "unknown config key 'nosuch.key'"),
        ("prepare.min_job_profiles=three", "'prepare.min_job_profiles' must be an integer"),
        ("prepare.min_job_profiles=0", "'prepare.min_job_profiles' must be >= 1"),
        ("prepare.job_weighting=random", "'prepare.job_weighting' must be one of uniform, tenure"),
        ("prepare.cities=[SEATTLE, ATLANTIS]", "prepare.cities: unknown ATLANTIS"),
        ("prepare.industries=[Farming]", "prepare.industries: unknown Farming"),
        ("prepare.split_fractions.train=0.8", "must be > 0 and sum to 1"),
        ("train.prior_strength=.inf", "'train.prior_strength' must be a finite number > 0"),
        ("train.learning_rate=1e999", "'train.learning_rate' must be a finite number > 0"),
        ("prepare.cities=SEATTLE", "'prepare.cities' must be a list"),
        ("novalue", "--conf expects key=value"),
        ("evaluate.bootstrap_samples=0", "'evaluate.bootstrap_samples' must be >= 1"),
        ("evaluate.bootstrap_samples=1.5", "'evaluate.bootstrap_samples' must be an integer"),
        ("evaluate.bootstrap_seed=-1", "'evaluate.bootstrap_seed' must be >= 0, got -1"),
        ("evaluate.title_buckets=[5, 5, 50]", "evaluate.title_buckets must list strictly"),
        ("evaluate.title_buckets=[20, 5]", "evaluate.title_buckets must list strictly"),
        ("evaluate.title_buckets=[1, 20]", "'evaluate.title_buckets[0]' must be >= 2, got 1"),
        ("evaluate.title_buckets=[]", "evaluate.title_buckets must list strictly"),
        ("evaluate.title_buckets=5", "'evaluate.title_buckets' must be a list"),
        ("evaluate.title_min_profiles=50", "unknown config key 'evaluate.title_min_profiles'"),
        ("train.model=foo", "'train.model' must be one of mixture, softmax"),
        ("train.prior_strength=0", "'train.prior_strength' must be > 0, got 0.0"),
        ("train.prior_strength=-3.5", "'train.prior_strength' must be > 0, got -3.5"),
        ("train.word_prior_strength=0", "'train.word_prior_strength' must be > 0"),
        ("train.background_weight=1", "'train.background_weight' must be in [0, 1), got 1.0"),
        ("train.background_weight=-0.1", "'train.background_weight' must be in [0, 1)"),
        (
            "train.title_prior=letters",
            "'train.title_prior' must be one of neighbours, words, popularity",
        ),
        ("train.l2=-1.0", "'train.l2' must be >= 0, got -1.0"),
        (
            "prepare.max_unrecognized_share=1.5",
            "'prepare.max_unrecognized_share' must be in [0, 1], got 1.5",
        ),
        (
            "prepare.max_unrecognized_share=lots",
            "'prepare.max_unrecognized_share' must be a number",
        ),
        (
            "generate.location_pattern_rate=-0.1",
            "'generate.location_pattern_rate' must be in [0, 1]",
        ),
    ],
)
def test_bad_overrides_name_the_problem(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(overrides=[override])
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def _bounded_keys() -> list[tuple[str, Bound, type, bool]]:
    """(key, bound, number type, is a list) of every setting with a Bound, read off the
    Config dataclasses: a key that gains a bound is covered without touching this test."""
    found = []
    for section, cls in typing.get_type_hints(Config).items():
        for name, hint in typing.get_type_hints(cls, include_extras=True).items():
            listed = typing.get_origin(hint) in (list, dict)
            item = typing.get_args(hint)[-1] if listed else hint
            if typing.get_origin(item) is Annotated:
                number, bound = typing.get_args(item)
                found.append((f"{section}.{name}", bound, number, listed))
    return found


def _outside(bound: Bound, number: type) -> str:
    """A value just outside the bound, as written on a command line."""
    step = 1 if number is int else 0.5
    if bound.high != math.inf:
        return str(bound.high if bound.high_open else bound.high + step)
    return str(bound.low if bound.low_open else bound.low - step)


def test_a_bad_unrecognized_share_exits_2_before_spark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "w"
    args = ["prepare", "--strict", "--conf", "prepare.max_unrecognized_share=2", "--workdir"]
    assert launch([*args, str(workdir)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "'prepare.max_unrecognized_share' must be in [0, 1], got 2.0" in line
    assert not workdir.exists()  # no JVM, no work directory


def test_the_alias_map_is_checked_on_load(tmp_path: Path) -> None:
    aliases = yaml.safe_load((CONF_DIR / "aliases.yml").read_text(encoding="utf-8"))
    aliases["cities"]["SEATTLE"]["region"] = "US-XX"
    path = tmp_path / "aliases.yml"
    path.write_text(yaml.safe_dump(aliases), encoding="utf-8")
    with pytest.raises(ConfigError, match="cities.SEATTLE must hold region"):
        load_config(overrides=[f"prepare.aliases_file={path}"])
    del aliases["other_places"]
    path.write_text(yaml.safe_dump(aliases), encoding="utf-8")
    with pytest.raises(ConfigError, match="expected sections"):
        load_config(overrides=[f"prepare.aliases_file={path}"])


def test_every_bounded_key_refuses_a_value_outside_it_before_spark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bounded = _bounded_keys()
    keys = {key for key, _, _, _ in bounded}
    rates = {f"generate.{f.name}" for f in fields(GenerateConfig) if f.name.endswith("_rate")}
    assert rates | {"train.batch_size", "train.learning_rate", "train.patience"} <= keys
    assert {"evaluate.ks", "train.segment_prior_strengths", "sql.port"} <= keys
    started = time.monotonic()
    for key, bound, number, listed in bounded:
        value = _outside(bound, number)
        if key == "prepare.split_fractions":
            key, value = "prepare.split_fractions.test", value
        elif listed:
            value = f"[{value}]"
        code = launch(["prepare", "--conf", f"{key}={value}", "--workdir", str(tmp_path / "w")])
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and f"must be {bound}" in line and key.split(".")[-1] in line, line
    assert not (tmp_path / "w").exists()  # no JVM, no work directory
    print(f"{len(bounded)} bounded keys refused in {time.monotonic() - started:.1f} s")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.model=softmax", "train.learning_rate=50", "train.l2=0.02"],
         "train.l2 must be >= 0 and below 1 / train.learning_rate, got 0.02"),
        (["evaluate.ks=[10, 20, 10]"], "evaluate.ks lists a value twice: [10, 20, 10]"),
        (["evaluate.ks=[]"], "evaluate.ks must list cut-offs >= 1"),
        (["train.segments=[city, city]"], "train.segments lists a value twice"),
        (["generate.profiles=10", "generate.shards=20"], "must not exceed generate.profiles"),
        (["generate.same_occupation_rate=0.9", "generate.switch_rate=0.2"],
         "switch_rate must be <= 1"),
        (["generate.recrawl_gap_days=[10, 5]"], "recrawl_gap_days must be [min, max]"),
        (["generate.recrawl_gap_days=[10]"], "recrawl_gap_days must be [min, max]"),
        (["catalog.metastore_dir=."], "catalog.metastore_dir must name a directory of its own"),
        (["train.checkpoint_dir=../w"], "train.checkpoint_dir must name a directory of its own"),
        (["catalog.staging_dir=warehouse/tmp"],
         "catalog.warehouse_dir ('warehouse') and catalog.staging_dir ('warehouse/tmp') overlap"),
        (["generate.crawl_start=next monday"], "generate.crawl_start must be YYYY-MM-DD"),
        (["generate.city_rate=0.5", "generate.other_locations=[]"],
         "generate.other_locations must not be empty"),
    ],
)  # fmt: skip
def test_rules_across_keys_are_checked_on_load(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(overrides=overrides)
    assert message in str(error.value)


def test_unknown_environment_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown environment 'mars' \(known: .*local"):
        load_config("mars")


def test_the_first_resolution_asks_maven_central_alone(tmp_path: Path) -> None:
    # No JARs recorded in this Ivy directory yet: Spark resolves the packages with the
    # project's Ivy settings, whose one repository is Maven Central.
    config = load_config(overrides=[f"spark.ivy_dir={tmp_path / 'ivy'}"])
    settings = spark_settings(config, tmp_path)
    assert settings["spark.jars.packages"].startswith("io.delta:delta-spark_")
    resolvers = ElementTree.parse(settings["spark.jars.ivySettings"]).getroot().find("resolvers")
    assert resolvers is not None
    assert [(r.tag, r.get("root")) for r in resolvers] == [
        ("ibiblio", "https://repo1.maven.org/maven2/")
    ]


def test_cluster_overlay_loads_with_object_store_and_external_metastore(tmp_path: Path) -> None:
    config = load_config("cluster")
    settings = spark_settings(config, tmp_path)
    assert settings["spark.sql.warehouse.dir"] == "s3a://skillrank-warehouse/warehouse"
    assert settings["spark.hadoop.hive.metastore.uris"].startswith("thrift://")
    assert settings["spark.executor.memory"] == "8g"
    assert config.spark.master.startswith("spark://")


def test_a_local_driver_listens_on_loopback_unless_told_otherwise() -> None:
    assert driver_environment("local[*]", {"PATH": "/bin"}) == {
        "PATH": "/bin",
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    assert driver_environment("local[2]", {"SPARK_LOCAL_IP": "10.0.0.5"}) == {
        "SPARK_LOCAL_IP": "10.0.0.5"
    }
    assert driver_environment("spark://10.0.0.1:7077", {"PATH": "/bin"}) == {"PATH": "/bin"}


def test_python_workers_run_the_drivers_interpreter(spark: SparkSession) -> None:
    # Not whichever python3 comes first on the PATH (before build_spark named it, the shared
    # session's workers ran the system's, without the project's packages).
    interpreter = F.udf(lambda _: sys.executable, "string")  # `sys` is the worker's there
    assert spark.range(1).select(interpreter("id")).first()[0] == sys.executable


def test_drivers_map_the_class_archive_once_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session, "CLASS_ARCHIVE_DIR", tmp_path)
    config = load_config()

    def options() -> str:
        return spark_settings(config, tmp_path)["spark.driver.extraJavaOptions"]

    assert "SharedArchiveFile" not in options()
    archive = session.class_archive(config)
    assert archive.parent == tmp_path
    archive.write_bytes(b"")
    assert options().endswith(f" -XX:SharedArchiveFile={archive} {session.QUIET_CLASS_SHARING}")
    # Another JAR set is another archive.
    other = load_config(overrides=[f"spark.ivy_dir={tmp_path / 'ivy'}"])
    assert session.class_archive(other) != archive


def test_a_failed_class_archive_is_not_tried_again_by_every_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A failed attempt leaves a marker: later stages start without the archive at once
    # (not after another minute's attempt each); only `setup` tries again.
    monkeypatch.setattr(session, "CLASS_ARCHIVE_DIR", tmp_path)
    config = load_config()
    failed = tmp_path / f"{session.class_archive(config).name}.failed"
    failed.touch()
    clock = time.monotonic()
    _archive_classes(config, retry=False)
    assert time.monotonic() - clock < 1.0
    assert sorted(tmp_path.iterdir()) == [failed]
    assert capsys.readouterr().err == ""


def test_the_shared_session_maps_the_class_archive(spark: SparkSession) -> None:
    # tests/run.sh runs `setup` first, which builds the archive: the JVM must have accepted it
    # (it refuses, silently, one that does not match its build or class path). Without it,
    # the only classes mapped are those of the JDK's own archive, at most the 1,397 lines of
    # its lib/classlist (1,231 in a fresh session); with it, 9,790 in a fresh session and
    # 20,419 at the end of a full suite run.
    pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()  # type: ignore[union-attr]
    printed = subprocess.run(["jcmd", str(pid), "PerfCounter.print"], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
    counters = dict(line.split("=", 1) for line in printed.splitlines() if "=" in line)
    mapped = int(counters["java.cls.sharedLoadedClasses"])
    assert mapped > 5_000, mapped


def test_config_files_overlay_the_environment_and_conf_overrides_them(tmp_path: Path) -> None:
    first, second = tmp_path / "site.yml", tmp_path / "night.yml"
    first.write_text("train:\n  prior_strength: 50.0\n  max_epochs: 7\n")
    second.write_text("train:\n  max_epochs: 9\npublish:\n  top_k: 12\n")
    config = load_config("local", ["train.prior_strength=70"], [str(first), str(second)])
    assert (config.train.prior_strength, config.train.max_epochs) == (70.0, 9)
    assert config.publish.top_k == 12
    assert load_config("local", [], [str(first)]).train.max_epochs == 7
    for text, message in (
        ("train:\n  bogus: 1\n", "unknown config key 'train.bogus'"),
        ("- 1\n", "expected a mapping of sections"),
        ("train:\n  max_epochs: 0\n", "'train.max_epochs' must be >= 1"),
    ):
        first.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config("local", [], [str(first)])


def test_a_work_directory_path_reaches_spark_as_written(tmp_path: Path) -> None:
    spaced = tmp_path / "work dir"
    uri = resolve_path(spaced, "shards")
    assert uri == f"file:{spaced}/shards"  # Hadoop would read "%20" as three characters
    assert local_path(uri) == spaced / "shards"
    assert local_path("file:///data/crawl") == Path("/data/crawl")
    assert local_path("s3a://bucket/shards") is None
    assert resolve_path(spaced, "s3a://bucket/shards") == "s3a://bucket/shards"
