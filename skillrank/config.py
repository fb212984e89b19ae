"""The one configuration object: loaded from conf/, overlaid per environment, overridden per run.

Every section is a frozen dataclass without defaults: the values live in
``conf/skillrank.yml``. A number's range is written next to its field (``Annotated[int,
Bound(1)]``: at least 1). Loading rejects unknown keys, values of the wrong type and values out
of range with a ``ConfigError`` that names the key, and checks the rules that tie several keys
together (``_validate``), all before any Spark work starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
import typing
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"


class ConfigError(ValueError):
    """A configuration or argument problem, reported to the user as one line."""


@dataclass(frozen=True)
class Bound:
    """The range of a number setting (of each item, for a list of numbers), checked on load:
    low <= value <= high, or strict at an open end."""

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def check(self, key: str, value: float) -> None:
        if not math.isfinite(value):  # an open-ended bound still wants a number
            raise ConfigError(f"config key {key!r} must be a finite number {self}, got {value}")
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        if not (above and below):
            raise ConfigError(f"config key {key!r} must be {self}, got {value}")

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        opening, closing = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {opening}{self.low:g}, {self.high:g}{closing}"


AtLeastOne = Annotated[int, Bound(1)]
NonNegativeInt = Annotated[int, Bound(0)]
NonNegative = Annotated[float, Bound(0.0)]
Positive = Annotated[float, Bound(0.0, low_open=True)]
Rate = Annotated[float, Bound(0.0, 1.0)]  # a probability
Port = Annotated[int, Bound(1, 65535)]


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
    shuffle_partitions: AtLeastOne
    session_timezone: str
    ivy_dir: str
    jar_excludes: list[str]
    extra_conf: dict[str, str]


@dataclass(frozen=True)
class IngestConfig:
    max_line_bytes: AtLeastOne
    max_field_chars: AtLeastOne
    max_positions: AtLeastOne
    max_skills: AtLeastOne
    quarantine_text_chars: AtLeastOne
    future_tolerance_hours: NonNegative


@dataclass(frozen=True)
class PrepareConfig:
    cities: list[str]
    industries: list[str]
    min_job_profiles: AtLeastOne
    min_skill_profiles: AtLeastOne
    max_jobs: NonNegativeInt  # 0: no limit
    max_skills: NonNegativeInt  # 0: no limit
    split_fractions: dict[str, Positive]
    split_salt: str
    job_weighting: Literal["uniform", "tenure"]
    rows_per_shard: AtLeastOne
    aliases_file: str
    # Share of the profiles that pass one filter (city or industry) lost to a value of the
    # other that no alias matches, above which prepare warns (fails with --strict).
    max_unrecognized_share: Rate


@dataclass(frozen=True)
class GenerateConfig:
    profiles: AtLeastOne
    shards: AtLeastOne
    seed: NonNegativeInt
    compress_level: Annotated[int, Bound(1, 9)]
    crawl_start: str
    crawl_window_days: AtLeastOne
    recrawl_rate: Rate
    third_snapshot_rate: Rate
    recrawl_gap_days: list[AtLeastOne]  # [min, max]
    recrawl_new_job_rate: Rate
    recrawl_skill_drop_rate: Rate
    duplicate_rate: Rate
    malformed_rate: Rate
    occupation_zipf: NonNegative
    focus_isco_groups: list[str]
    focus_boost: NonNegative
    title_zipf: NonNegative
    extra_positions_mean: NonNegative
    max_positions: AtLeastOne
    same_occupation_rate: Rate
    switch_rate: Rate
    tenure_months_mean: Positive
    current_job_rate: Rate
    essential_rate: Rate
    optional_rate: Rate
    hot_technology_rate: Rate
    technology_rate: Rate
    rate_jitter: Rate
    generic_skills: NonNegativeInt
    generic_rate: Rate
    generic_zipf: NonNegative
    segment_skills: NonNegativeInt
    segment_skill_rate: Rate
    city_rate: Rate
    industry_rate: Rate
    missing_location_rate: Rate
    missing_industry_rate: Rate
    other_locations: list[str]
    other_industries: list[str]
    companies: AtLeastOne
    company_zipf: NonNegative
    case_variant_rate: Rate
    spacing_variant_rate: Rate
    alias_variant_rate: Rate
    location_pattern_rate: Rate


@dataclass(frozen=True)
class TrainConfig:
    model: Literal["mixture", "softmax"]
    device: str
    seed: NonNegativeInt
    batch_size: AtLeastOne
    optimizer: Literal["sgd", "adam"]
    learning_rate: Positive
    init_std: NonNegative
    max_epochs: AtLeastOne
    patience: AtLeastOne
    min_improvement: NonNegative
    shuffle_buffer: AtLeastOne
    checkpoint_dir: str
    kernel: Literal["fused", "torch"]
    num_processes: AtLeastOne
    local_mode: bool
    skill_bias: bool
    l2: NonNegative
    background_weight: Annotated[float, Bound(0.0, 1.0, high_open=True)]
    prior_strength: Positive
    title_prior: Literal["neighbours", "words", "popularity"]
    word_prior_strength: Positive
    segments: list[Literal["city", "industry"]]
    segment_min_profiles: AtLeastOne
    segment_prior_strengths: list[Positive]


@dataclass(frozen=True)
class PublishConfig:
    top_k: AtLeastOne
    neighbors_k: AtLeastOne
    view_min_support: AtLeastOne
    gate_validation_loss_increase: NonNegative
    gate_ndcg_below_cooccurrence: NonNegative


@dataclass(frozen=True)
class EvaluateConfig:
    ks: list[AtLeastOne]
    smoothing: Positive
    title_k: AtLeastOne
    title_buckets: list[Annotated[int, Bound(2)]]
    batch_size: AtLeastOne
    bootstrap_samples: AtLeastOne
    bootstrap_seed: NonNegativeInt


@dataclass(frozen=True)
class ReportConfig:
    coclusters: AtLeastOne
    cocluster_jobs: AtLeastOne
    cocluster_skills: AtLeastOne
    map_points: AtLeastOne
    map_labels: NonNegativeInt
    top_pairs: AtLeastOne
    top_pairs_min_support: NonNegativeInt
    seed: NonNegativeInt


@dataclass(frozen=True)
class MaintainConfig:
    keep_runs: AtLeastOne
    vacuum_retention_hours: NonNegative
    compact_files_below_mib: AtLeastOne
    remove_checkpoints: bool


@dataclass(frozen=True)
class SqlConfig:
    host: str
    port: Port
    metastore_port: Port
    authentication: str
    hive_conf: dict[str, str]
    state_dir: str
    start_timeout_seconds: AtLeastOne


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
    maintain: MaintainConfig
    sql: SqlConfig

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """A short hash of every setting, recorded in manifests and stage runs."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


SPLITS = ("train", "validation", "test")


def load_config(
    env: str = "local", overrides: list[str] | None = None, files: list[str] | None = None
) -> Config:
    """Read conf/skillrank.yml, overlay conf/env/<env>.yml, then each of `files` (YAML of
    the same shape, --config: settings kept outside the checkout), then apply `key=value`
    overrides (--conf); a later one wins.

    Returns a validated Config; raises ConfigError naming the first bad key.
    """
    raw = _read_yaml(CONF_DIR / "skillrank.yml")
    env_file = CONF_DIR / "env" / f"{env}.yml"
    if not env_file.is_file():
        known = sorted(p.stem for p in (CONF_DIR / "env").glob("*.yml"))
        raise ConfigError(f"unknown environment {env!r} (known: {', '.join(known)})")
    _merge(raw, _read_yaml(env_file) or {}, prefix="")
    for name in files or []:
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"--config {name}: no such file")
        overlay = _read_yaml(path) or {}
        if not isinstance(overlay, dict):
            raise ConfigError(f"--config {name}: expected a mapping of sections, as conf/")
        _merge(raw, overlay, prefix="")
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


# A properties line: the key ends at the first blank, = or :; one = or : may follow.
_PROPERTY = re.compile(r"([^\s=:]+)\s*[=:]?\s*(.*)")


def read_properties(name: str) -> list[str]:
    """The settings of a Spark properties file (spark-submit's --properties-file: `key value`,
    `key=value` or `key: value` per line, # and ! comments) as --conf items; only spark.*
    keys, which reach Spark as `--conf spark.*` does. ConfigError names a bad line."""
    path = Path(name)
    if not path.is_file():
        raise ConfigError(f"--properties-file {name}: no such file")
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.strip()
        if not text or text[0] in "#!":
            continue
        match = _PROPERTY.fullmatch(text)
        if match is None or not match[1].startswith("spark."):
            raise ConfigError(f"--properties-file {name}:{number}: not a spark.* setting: {text!r}")
        items.append(f"{match[1]}={match[2]}")
    return items


# conf/aliases.yml: section -> what it holds (see the file's header).
_ALIAS_LISTS = ("countries", "regions", "industries", "titles", "skills")  # name -> spellings
_ALIAS_NAMES = ("other_places", "other_industries")  # a list of names
_CITY_KEYS = {"region", "names", "spellings"}


def load_aliases(config: Config) -> dict[str, Any]:
    """The alias map of conf/aliases.yml, its shape checked: `cities` (code -> region,
    names, spellings), `countries`, `regions`, `industries`, `titles`, `skills` (name ->
    spellings), `other_places` and `other_industries` (lists of names)."""
    path = PROJECT_ROOT / config.prepare.aliases_file
    data = _read_yaml(path) or {}
    expected = {"cities", *_ALIAS_LISTS, *_ALIAS_NAMES}
    if not isinstance(data, dict) or set(data) != expected:
        found = sorted(data) if isinstance(data, dict) else data
        raise ConfigError(f"{path}: expected sections {sorted(expected)}, got {found}")

    def strings(value: Any) -> bool:
        return isinstance(value, list) and all(isinstance(s, str) for s in value)

    for section in _ALIAS_LISTS:
        mapping = data[section]
        if not isinstance(mapping, dict) or not all(strings(v) for v in mapping.values()):
            raise ConfigError(f"{path}: section {section!r} must map names to lists of strings")
    for section in _ALIAS_NAMES:
        if not strings(data[section]):
            raise ConfigError(f"{path}: section {section!r} must be a list of strings")
    if not isinstance(data["cities"], dict):
        raise ConfigError(f"{path}: section 'cities' must map city codes to their places")
    for code, city in data["cities"].items():
        if not (
            isinstance(city, dict)
            and set(city) == _CITY_KEYS
            and city["region"] in data["regions"]
            and strings(city["names"])
            and strings(city["spellings"])
        ):
            raise ConfigError(
                f"{path}: cities.{code} must hold region (a code of regions), names and"
                " spellings (lists of strings)"
            )
    for region in data["regions"]:
        if str(region).split("-")[0] not in data["countries"]:
            raise ConfigError(f"{path}: regions.{region}: its country is not in countries")
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
    hints = typing.get_type_hints(cls, include_extras=True)
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
    if origin is Annotated:
        inner, *bounds = typing.get_args(hint)
        value = _coerce(value, inner, key)
        for bound in bounds:
            bound.check(key, value)
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
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
    """The rules that tie several keys together (each key's own range is its Bound)."""
    fractions = config.prepare.split_fractions
    if set(fractions) != set(SPLITS):
        raise ConfigError(
            f"prepare.split_fractions must name exactly {', '.join(SPLITS)},"
            f" got {sorted(fractions)}"
        )
    if abs(sum(fractions.values()) - 1.0) > 1e-9:
        raise ConfigError(f"prepare.split_fractions must be > 0 and sum to 1, got {fractions}")
    train = config.train
    if train.model == "softmax" and train.learning_rate * train.l2 >= 1:
        # The decay factor of a step, 1 - learning_rate * l2, must be in (0, 1].
        raise ConfigError(
            f"train.l2 must be >= 0 and below 1 / train.learning_rate, got {train.l2}"
        )
    _distinct("train.segments", train.segments)
    if not train.segment_prior_strengths:
        raise ConfigError("train.segment_prior_strengths must list values > 0, got []")
    if not config.evaluate.ks:
        raise ConfigError("evaluate.ks must list cut-offs >= 1, got []")
    _distinct("evaluate.ks", config.evaluate.ks)
    edges = config.evaluate.title_buckets
    if not edges or any(b <= a for a, b in itertools.pairwise(edges)):
        raise ConfigError(
            f"evaluate.title_buckets must list strictly increasing edges >= 2, got {edges}"
        )
    _validate_generate(config)
    _validate_directories(config)
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


def _distinct(key: str, values: list[Any]) -> None:
    if len(set(values)) != len(values):
        raise ConfigError(f"{key} lists a value twice: {values}")


def _validate_directories(config: Config) -> None:
    """The directories the stages own inside a work directory: each its own. Starting a
    process clears the run-named entries of staging_dir and recreates a half-created Derby
    metastore_dir, maintain empties checkpoint_dir: none may be the work directory itself or
    hold another (each may be an absolute path or URI instead)."""
    c = config.catalog
    owned = {
        f"catalog.{name}": getattr(c, name)
        for name in ("warehouse_dir", "metastore_dir", "shards_dir", "crawl_dir", "staging_dir")
    } | {
        "catalog.reports_dir": c.reports_dir,
        "train.checkpoint_dir": config.train.checkpoint_dir,
        "sql.state_dir": config.sql.state_dir,
    }
    parts = {}
    for key, value in owned.items():
        path = value.strip().rstrip("/")
        if not path or ".." in path.split("/") or path.split("/") == ["."]:
            raise ConfigError(f"{key} must name a directory of its own, got {value!r}")
        parts[key] = tuple(p for p in path.split("/") if p not in ("", "."))
    for (key, a), (other, b) in itertools.combinations(parts.items(), 2):
        if a[: len(b)] == b or b[: len(a)] == a:
            raise ConfigError(f"{key} ({owned[key]!r}) and {other} ({owned[other]!r}) overlap")


def _validate_generate(config: Config) -> None:
    """The generator's rules across keys: shares that must leave room for each other."""
    g = config.generate
    for name, total in (
        ("generate.same_occupation_rate + generate.switch_rate",
         g.same_occupation_rate + g.switch_rate),
        ("generate.city_rate + generate.missing_location_rate",
         g.city_rate + g.missing_location_rate),
        ("generate.industry_rate + generate.missing_industry_rate",
         g.industry_rate + g.missing_industry_rate),
    ):  # fmt: skip
        if total > 1.0:
            raise ConfigError(f"{name} must be <= 1, got {total}")
    if g.shards > g.profiles:
        raise ConfigError(f"generate.shards ({g.shards}) must not exceed generate.profiles")
    gap = g.recrawl_gap_days
    if len(gap) != 2 or gap[0] > gap[1]:
        raise ConfigError(
            f"generate.recrawl_gap_days must be [min, max] with 1 <= min <= max, got {gap}"
        )
    try:
        date.fromisoformat(g.crawl_start)
    except ValueError as exc:
        raise ConfigError(
            f"generate.crawl_start must be YYYY-MM-DD, got {g.crawl_start!r}"
        ) from exc
    if g.city_rate + g.missing_location_rate < 1 and not g.other_locations:
        raise ConfigError("generate.other_locations must not be empty when city_rate + missing < 1")
    if g.industry_rate + g.missing_industry_rate < 1 and not g.other_industries:
        raise ConfigError(
            "generate.other_industries must not be empty when industry_rate + missing < 1"
        )
