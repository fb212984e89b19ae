"""The one configuration object: loaded from conf/, overlaid per environment, overridden per run.

Every section is a frozen dataclass without defaults: the values live in
``conf/skillrank.yml``. Loading rejects unknown keys and values of the wrong type
with a ``ConfigError`` that names the key, before any Spark work starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"


class ConfigError(ValueError):
    """A configuration or argument problem, reported to the user as one line."""


@dataclass(frozen=True)
class CatalogConfig:
    database: str
    warehouse_dir: str
    metastore_dir: str
    shards_dir: str
    crawl_dir: str
    staging_dir: str
    tables: dict[str, str]
    reports_dir: str


@dataclass(frozen=True)
class SparkConfig:
    master: str
    driver_memory: str
    shuffle_partitions: int
    session_timezone: str
    ivy_dir: str
    jar_excludes: list[str]
    extra_conf: dict[str, str]


@dataclass(frozen=True)
class IngestConfig:
    max_line_bytes: int
    max_field_chars: int
    max_positions: int
    max_skills: int
    quarantine_text_chars: int


@dataclass(frozen=True)
class PrepareConfig:
    cities: list[str]
    industries: list[str]
    min_job_profiles: int
    min_skill_profiles: int
    max_jobs: int
    max_skills: int
    split_fractions: dict[str, float]
    split_salt: str
    job_weighting: Literal["uniform", "tenure"]
    rows_per_shard: int
    aliases_file: str


@dataclass(frozen=True)
class GenerateConfig:
    profiles: int
    shards: int
    seed: int
    compress_level: int
    crawl_start: str
    crawl_window_days: int
    recrawl_rate: float
    third_snapshot_rate: float
    recrawl_gap_days: list[int]
    recrawl_new_job_rate: float
    recrawl_skill_drop_rate: float
    duplicate_rate: float
    malformed_rate: float
    occupation_zipf: float
    focus_isco_groups: list[str]
    focus_boost: float
    title_zipf: float
    extra_positions_mean: float
    max_positions: int
    same_occupation_rate: float
    switch_rate: float
    tenure_months_mean: float
    current_job_rate: float
    essential_rate: float
    optional_rate: float
    hot_technology_rate: float
    technology_rate: float
    rate_jitter: float
    generic_skills: int
    generic_rate: float
    generic_zipf: float
    segment_skills: int
    segment_skill_rate: float
    city_rate: float
    industry_rate: float
    missing_location_rate: float
    missing_industry_rate: float
    other_locations: list[str]
    other_industries: list[str]
    companies: int
    company_zipf: float
    case_variant_rate: float
    spacing_variant_rate: float
    alias_variant_rate: float


@dataclass(frozen=True)
class TrainConfig:
    model: Literal["mixture", "softmax"]
    device: str
    seed: int
    batch_size: int
    optimizer: Literal["sgd", "adam"]
    learning_rate: float
    init_std: float
    max_epochs: int
    patience: int
    min_improvement: float
    shuffle_buffer: int
    checkpoint_dir: str
    kernel: Literal["fused", "torch"]
    num_processes: int
    local_mode: bool
    skill_bias: bool
    l2: float
    background_weight: float
    prior_strength: float
    title_prior: Literal["neighbours", "words", "popularity"]
    word_prior_strength: float
    segments: list[Literal["city", "industry"]]
    segment_min_profiles: int
    segment_prior_strengths: list[float]


@dataclass(frozen=True)
class PublishConfig:
    top_k: int
    neighbors_k: int


@dataclass(frozen=True)
class EvaluateConfig:
    ks: list[int]
    smoothing: float
    title_k: int
    title_buckets: list[int]
    batch_size: int
    bootstrap_samples: int
    bootstrap_seed: int


@dataclass(frozen=True)
class ReportConfig:
    coclusters: int
    cocluster_jobs: int
    cocluster_skills: int
    map_points: int
    map_labels: int
    top_pairs: int
    top_pairs_min_support: int
    seed: int


@dataclass(frozen=True)
class SqlConfig:
    host: str
    port: int
    metastore_port: int
    authentication: str
    hive_conf: dict[str, str]
    state_dir: str
    start_timeout_seconds: int


@dataclass(frozen=True)
class Config:
    catalog: CatalogConfig
    spark: SparkConfig
    ingest: IngestConfig
    prepare: PrepareConfig
    generate: GenerateConfig
    train: TrainConfig
    publish: PublishConfig
    evaluate: EvaluateConfig
    report: ReportConfig
    sql: SqlConfig

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """A short hash of every setting, recorded in manifests and stage runs."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


SPLITS = ("train", "validation", "test")


def load_config(env: str = "local", overrides: list[str] | None = None) -> Config:
    """Read conf/skillrank.yml, overlay conf/env/<env>.yml, apply `key=value` overrides.

    Returns a validated Config; raises ConfigError naming the first bad key.
    """
    raw = _read_yaml(CONF_DIR / "skillrank.yml")
    env_file = CONF_DIR / "env" / f"{env}.yml"
    if not env_file.is_file():
        known = sorted(p.stem for p in (CONF_DIR / "env").glob("*.yml"))
        raise ConfigError(f"unknown environment {env!r} (known: {', '.join(known)})")
    _merge(raw, _read_yaml(env_file) or {}, prefix="")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--conf expects key=value, got {item!r}")
        if _is_spark_setting(key, raw):  # as spark-submit's --conf: to Spark, as written
            _set_dotted(raw, f"spark.extra_conf.{key}", value)
        elif any(f".{section}." in key for section in _FREE_FORM_SECTIONS):
            _set_dotted(raw, key, value)  # other systems' settings keep their spelling
        else:
            _set_dotted(raw, key, yaml.safe_load(value) if value.strip() else "")
    config = _build(Config, raw, prefix="")
    _validate(config)
    return config


def load_aliases(config: Config) -> dict[str, dict[str, list[str]]]:
    """The alias map of conf/aliases.yml: section -> canonical value -> spellings."""
    path = PROJECT_ROOT / config.prepare.aliases_file
    data = _read_yaml(path) or {}
    expected = {"cities", "industries", "titles", "skills"}
    if set(data) != expected:
        raise ConfigError(f"{path}: expected sections {sorted(expected)}, got {sorted(data)}")
    for section, mapping in data.items():
        if not isinstance(mapping, dict) or not all(
            isinstance(v, list) and all(isinstance(s, str) for s in v) for v in mapping.values()
        ):
            raise ConfigError(f"{path}: section {section!r} must map names to lists of strings")
    return data


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}".splitlines()[0]) from exc


def _merge(base: dict[str, Any], overlay: dict[str, Any], prefix: str) -> None:
    for key, value in overlay.items():
        if key not in base:
            raise ConfigError(f"unknown config key {prefix + key!r}")
        if isinstance(base[key], dict) and isinstance(value, dict) and key != "extra_conf":
            _merge(base[key], value, prefix + key + ".")
        else:
            base[key] = value


# Maps whose keys are other systems' dotted setting names (spark.*, hive.server2.*): in
# `--conf spark.extra_conf.spark.executor.memory=2g` everything after them is one key.
_FREE_FORM_SECTIONS = ("extra_conf", "hive_conf")


def _is_spark_setting(key: str, raw: dict[str, Any]) -> bool:
    """A `spark.*` key that is not one of the spark section's own (spark.executor.memory):
    Spark's setting, which `--conf` passes through."""
    parts = key.split(".")
    return len(parts) > 1 and parts[0] == "spark" and parts[1] not in raw["spark"]


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node: Any = raw
    parts = key.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        free_form = i > 0 and parts[i - 1] in _FREE_FORM_SECTIONS
        if not isinstance(node, dict) or (part not in node and not free_form):
            raise ConfigError(f"unknown config key {key!r}")
        if last or free_form:
            node[".".join(parts[i:]) if free_form else part] = value
            return
        node = node[part]


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or '(top)'!r} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise ConfigError(f"unknown config key {prefix + key!r}")
    values = {}
    for name in names:
        if name not in raw:
            raise ConfigError(f"missing config key {prefix + name!r}")
        values[name] = _coerce(raw[name], hints[name], prefix + name)
    return cls(**values)


# A decimal number in any usual spelling: 3, -0.5, .5, 1e-3, 1E5, 2.5e+2.
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    if origin is Literal:
        if value not in typing.get_args(hint):
            choices = ", ".join(map(str, typing.get_args(hint)))
            raise ConfigError(f"config key {key!r} must be one of {choices}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        _, item = typing.get_args(hint)
        return {str(k): _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot in the mantissa) as text
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
        return str(value)
    raise ConfigError(f"config key {key!r}: unsupported type {hint!r}")


def _validate(config: Config) -> None:
    fractions = config.prepare.split_fractions
    if set(fractions) != set(SPLITS):
        raise ConfigError(
            f"prepare.split_fractions must name exactly {', '.join(SPLITS)},"
            f" got {sorted(fractions)}"
        )
    if any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-9:
        raise ConfigError(f"prepare.split_fractions must be >= 0 and sum to 1, got {fractions}")
    positive = {
        "ingest.max_line_bytes": config.ingest.max_line_bytes,
        "ingest.max_field_chars": config.ingest.max_field_chars,
        "ingest.max_positions": config.ingest.max_positions,
        "ingest.max_skills": config.ingest.max_skills,
        "ingest.quarantine_text_chars": config.ingest.quarantine_text_chars,
        "prepare.min_job_profiles": config.prepare.min_job_profiles,
        "prepare.min_skill_profiles": config.prepare.min_skill_profiles,
        "prepare.rows_per_shard": config.prepare.rows_per_shard,
        "spark.shuffle_partitions": config.spark.shuffle_partitions,
        "publish.top_k": config.publish.top_k,
        "publish.neighbors_k": config.publish.neighbors_k,
        "evaluate.title_k": config.evaluate.title_k,
        "evaluate.batch_size": config.evaluate.batch_size,
        "evaluate.bootstrap_samples": config.evaluate.bootstrap_samples,
        "report.coclusters": config.report.coclusters,
        "report.cocluster_jobs": config.report.cocluster_jobs,
        "report.cocluster_skills": config.report.cocluster_skills,
        "report.map_points": config.report.map_points,
        "report.top_pairs": config.report.top_pairs,
        "sql.port": config.sql.port,
        "sql.metastore_port": config.sql.metastore_port,
        "sql.start_timeout_seconds": config.sql.start_timeout_seconds,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"config key {key!r} must be >= 1, got {value}")
    for key in ("max_jobs", "max_skills"):
        if getattr(config.prepare, key) < 0:
            raise ConfigError(
                f"prepare.{key} must be >= 0 (0: no limit), got {getattr(config.prepare, key)}"
            )
    train = config.train
    if not 0.0 <= train.background_weight < 1.0:
        raise ConfigError(
            f"train.background_weight must be in [0, 1), got {train.background_weight}"
        )
    for key in ("prior_strength", "word_prior_strength"):
        if not getattr(train, key) > 0:
            raise ConfigError(f"train.{key} must be > 0, got {getattr(train, key)}")
    if len(set(train.segments)) != len(train.segments):
        raise ConfigError(f"train.segments lists a column twice: {train.segments}")
    strengths = train.segment_prior_strengths
    if not strengths or not all(v > 0 for v in strengths):
        raise ConfigError(f"train.segment_prior_strengths must list values > 0, got {strengths}")
    if train.segment_min_profiles < 1:
        raise ConfigError(
            f"train.segment_min_profiles must be >= 1, got {train.segment_min_profiles}"
        )
    if not train.l2 >= 0:
        raise ConfigError(f"train.l2 must be >= 0, got {train.l2}")
    if not config.evaluate.ks or min(config.evaluate.ks) < 1:
        raise ConfigError(f"evaluate.ks must list cut-offs >= 1, got {config.evaluate.ks}")
    if config.evaluate.smoothing <= 0:
        raise ConfigError(f"evaluate.smoothing must be > 0, got {config.evaluate.smoothing}")
    edges = config.evaluate.title_buckets
    if not edges or edges[0] < 2 or any(b <= a for a, b in itertools.pairwise(edges)):
        raise ConfigError(
            f"evaluate.title_buckets must list strictly increasing edges >= 2, got {edges}"
        )
    if config.evaluate.bootstrap_seed < 0:
        raise ConfigError(
            f"evaluate.bootstrap_seed must be >= 0, got {config.evaluate.bootstrap_seed}"
        )
    aliases = load_aliases(config)
    for key, chosen, known in (
        ("prepare.cities", config.prepare.cities, aliases["cities"]),
        ("prepare.industries", config.prepare.industries, aliases["industries"]),
    ):
        unknown = [c for c in chosen if c not in known]
        if unknown:
            raise ConfigError(
                f"{key}: unknown {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        if not chosen:
            raise ConfigError(f"{key} must list at least one value")
