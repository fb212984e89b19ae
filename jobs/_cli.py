"""What every stage shares at the edge: arguments, configuration, session, stage_runs, errors.

A stage module defines ``add_arguments(parser)``, optionally ``check(args, config)`` (fast
validation before Spark starts) and ``run(ctx) -> StageResult``, as its ``STAGE``; its
``main()`` calls ``run_stages([STAGE])`` (``all`` passes a ``StageRange``). Errors end the
process with one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import re
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from pyspark.sql import Row, SparkSession

from skillrank.config import PROJECT_ROOT, Config, ConfigError, load_config, read_properties
from skillrank.session import build_spark, hadoop_path, resolve_path
from skillrank.tables import SPECS, conform, declare_tables, table_name

if TYPE_CHECKING:  # torch is not imported before Spark starts
    import pyarrow as pa
    from torch import Tensor

    from skillrank.evaluate import CoCounts
    from skillrank.trainer import EpochRecord


class StageError(RuntimeError):
    """An expected failure (bad input, nothing to do that should have been there)."""


# Every line a stage writes goes through this logger: INFO and DEBUG to stdout, WARNING and
# above to stderr, as text ("[stage] message", the default) or one JSON object per line.
LOG = logging.getLogger("skillrank")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class _TextFormat(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stage = getattr(record, "stage", None)
        return f"[{stage}] {record.getMessage()}" if stage else record.getMessage()


class _JsonFormat(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        at = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        fields: dict[str, object] = {"time": at, "level": record.levelname}
        fields |= {k: getattr(record, k, None) for k in ("stage", "run_id")}
        return json.dumps(fields | {"message": record.getMessage()})


def configure_logging(level: str, form: str) -> None:
    """Send LOG's records at `level` and above to stdout/stderr in `form` (text or json)."""
    LOG.handlers.clear()
    LOG.propagate = False
    LOG.setLevel(level)
    formatter = _JsonFormat() if form == "json" else _TextFormat()
    out, err = logging.StreamHandler(sys.stdout), logging.StreamHandler(sys.stderr)
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(formatter)
        LOG.addHandler(handler)


class LogWriter(io.TextIOBase):
    """A text stream whose every line is an INFO record of `log` (the trainers' `log`)."""

    def __init__(self, log: logging.LoggerAdapter) -> None:
        super().__init__()
        self._log, self._pending = log, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            self._log.info(f"  {line}")
        return len(text)


@dataclass
class Handoff:
    """What a stage leaves to the later stages of the same run_stages call (one application),
    so that they need not read or compute it again (jobs._runs): the run id and phi_t train
    published (load_phi) and its epochs (training_history), the prepare run id and the
    co-occurrence counts of its train split that train counted (training_counts), the run id
    and the columns of its published rankings, neighbours and background that evaluate and
    report read (ranking_columns), the run id and the evaluation rows that evaluate wrote
    or kept (evaluation_rows), and the id of the run train published with the run tables a
    later stage has written its rows to since (replace_run_rows: the others hold none)."""

    phi: tuple[str, Tensor] | None = None
    history: tuple[str, list[EpochRecord]] | None = None
    counts: tuple[str, CoCounts] | None = None
    rankings: tuple[str, dict[str, pa.Table]] | None = None
    evaluation: tuple[str, list[dict[str, Any]]] | None = None
    published: tuple[str, set[str]] | None = None


@dataclass
class StageContext:
    spark: SparkSession
    config: Config
    workdir: Path
    run_id: str
    args: argparse.Namespace
    handoff: Handoff = field(default_factory=Handoff)

    def table(self, key: str) -> str:
        return table_name(self.config, key)

    @property
    def log(self) -> logging.LoggerAdapter:
        """LOG, its records marked with this stage and run."""
        return logging.LoggerAdapter(
            LOG, {"stage": self.run_id.split("-", 1)[0], "run_id": self.run_id}
        )

    @contextmanager
    def step(self, label: str) -> Iterator[None]:
        """Log a progress line with the time a step of the stage took."""
        clock = time.monotonic()
        yield
        self.log.info(f"  {label} ({time.monotonic() - clock:.1f}s)")


@dataclass
class StageResult:
    rows_in: int
    rows_out: int
    rows_dropped: dict[str, int] = field(default_factory=dict)
    input_versions: dict[str, int] = field(default_factory=dict)
    output_versions: dict[str, int] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)
    # Non-zero: the stage did its work but the process must exit with this code, after its
    # summary and before any later stage (train's rejected run: EXIT_REJECTED).
    exit_code: int = 0


@dataclass(frozen=True)
class StageTime:
    """One finished stage of a process: what `all`'s closing table shows."""

    stage: str
    seconds: float
    rows_in: int
    rows_out: int


@dataclass(frozen=True)
class Stage:
    name: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[StageContext], StageResult]
    check: Callable[[argparse.Namespace, Config], None] = lambda args, config: None


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (no usage dump) and exits 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def common_parser(prog: str) -> argparse.ArgumentParser:
    """The options every stage takes (see README: spark-submit.sh)."""
    parser = _OneLineParser(prog=prog)
    parser.add_argument(
        "--workdir",
        default=str(PROJECT_ROOT / "var"),
        help="everything the run writes (default: var/ in the project, wherever it is run from)",
    )
    parser.add_argument("--env", default="local", help="configuration overlay conf/env/<env>.yml")
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML overlay after --env, before --conf (repeatable; a later one wins)",
    )
    parser.add_argument(
        "--properties-file",
        metavar="FILE",
        help="Spark properties (spark.* keys, as spark-submit's), before --conf",
    )
    parser.add_argument(
        "--conf", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    parser.add_argument("--master", help="Spark master URL (default: spark.master of the config)")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="INFO", help="default INFO")
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="json: one object a line"
    )
    return parser


def config_of(args: argparse.Namespace) -> Config:
    """The configuration the common options name: conf/, --env, --config files, then the
    --properties-file settings, then --conf (a later one wins)."""
    properties = read_properties(args.properties_file) if args.properties_file else []
    return load_config(args.env, [*properties, *args.conf], args.config)


@dataclass(frozen=True)
class StageRange:
    """A command that runs some of `stages`, in order, chosen by its own options (`all`)."""

    name: str
    stages: list[Stage]
    add_arguments: Callable[[argparse.ArgumentParser], None]
    select: Callable[[argparse.Namespace], list[Stage]]


def _name_and_stages(command: list[Stage] | StageRange) -> tuple[str, list[Stage]]:
    """The command's name (a list of stages is named by its last) and every stage it may run."""
    if isinstance(command, StageRange):
        return command.name, command.stages
    return command[-1].name, command


def parse_stage_args(
    command: list[Stage] | StageRange, argv: list[str] | None
) -> tuple[argparse.Namespace, Config, list[Stage]]:
    """Parse the command line of one or more stages (or of a range) and load the configuration;
    the stages to run, each one's check passed."""
    name, stages = _name_and_stages(command)
    parser = common_parser(f"spark-submit.sh {name}")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check everything, print what would run and with which settings; start nothing",
    )
    for stage in stages:
        stage.add_arguments(parser)
    if isinstance(command, StageRange):
        command.add_arguments(parser)
    args = parser.parse_args(argv)
    config = config_of(args)
    chosen = command.select(args) if isinstance(command, StageRange) else stages
    for stage in chosen:
        stage.check(args, config)
    return args, config, chosen


def require_table(
    args: argparse.Namespace, config: Config, key: str, missing: str, writer: str
) -> None:
    """Fail before Spark starts when table `key` (written by stage `writer`) does not exist.

    Decidable only for the embedded default, a warehouse on this machine with the metastore
    of --workdir: the table's Delta log is then a directory there. With a warehouse
    elsewhere or an external metastore the stage finds out when it reads the table.
    """
    table_dir = local_table_dir(args, config, key)
    if table_dir is not None and not (table_dir / "_delta_log").is_dir():
        database, table = config.catalog.database, config.catalog.tables[key]
        raise StageError(
            f"{missing} in {Path(args.workdir).resolve()}: {database}.{table} does not exist"
            f" there yet (run {writer}, or all, first)"
        )


def local_table_dir(args: argparse.Namespace, config: Config, key: str) -> Path | None:
    """Where table `key` lives under the embedded default (a warehouse on this machine, the
    metastore of --workdir); None when tables live elsewhere."""
    if not embedded_catalog(config):
        return None
    warehouse = config.catalog.warehouse_dir
    database, table = config.catalog.database, config.catalog.tables[key]
    return Path(args.workdir).resolve() / warehouse / f"{database}.db" / table.lower()


def embedded_catalog(config: Config) -> bool:
    """Whether the tables live under the work directory, in its own Derby metastore (the
    embedded default), rather than in a warehouse or metastore elsewhere."""
    return not (
        "://" in config.catalog.warehouse_dir
        or "spark.hadoop.hive.metastore.uris" in config.spark.extra_conf
    )


def run_stages(
    command: list[Stage] | StageRange,
    argv: list[str] | None = None,
    epilogue: Callable[[StageContext, list[StageTime]], list[str]] | None = None,
) -> int:
    """Run stages (or the stages a range picks) in order in one SparkSession, recording each
    in stage_runs.

    `epilogue`, when given, prints a closing summary after the last stage (from the stages'
    times and row counts). Returns the exit code.
    """
    name, _ = _name_and_stages(command)
    prog = f"skillrank {name}"
    try:
        args, config, stages = parse_stage_args(command, argv)
    except (ConfigError, StageError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print("\n".join(dry_run_lines(args, config, stages)))
        return 0
    configure_logging(args.log_level, args.log_format)
    workdir = Path(args.workdir).resolve()
    master = args.master or config.spark.master
    spark = build_spark(config, workdir, master, app_name=f"skillrank-{name}")
    declare_tables(spark, config, ["stage_runs"])
    cleared = clear_staging(spark, resolve_path(workdir, config.catalog.staging_dir))
    if cleared:
        LOG.info(f"removed {cleared} staging entries of killed runs", extra={"stage": name})
    times: list[StageTime] = []
    handoff = Handoff()
    for stage in stages:
        ctx = StageContext(spark, config, workdir, _new_run_id(stage.name), args, handoff)
        started = datetime.now(UTC)
        clock = time.monotonic()
        ctx.log.info(f"run {ctx.run_id} (workdir {workdir}, master {master})")
        try:
            result = stage.run(ctx)
        except Exception as exc:  # one line for the user, the trace for the log
            message = _one_line(exc)
            log = workdir / "logs" / f"{ctx.run_id}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(traceback.format_exc())
            _record(ctx, stage.name, started, clock, None, message)
            LOG.error(f"{prog}: error: {stage.name} failed: {message} (trace: {log})")
            if isinstance(command, StageRange) and stage is not stages[0]:
                LOG.error(f"{prog}: the stages before {stage.name} succeeded: rerun from it"
                          f" with `{name} --from {stage.name}`")  # fmt: skip
            return 1
        _record(ctx, stage.name, started, clock, result, None)
        for line in result.summary:
            ctx.log.info(line)
        times.append(
            StageTime(stage.name, time.monotonic() - clock, result.rows_in, result.rows_out)
        )
        ctx.log.info(f"done in {times[-1].seconds:.1f}s")
        if result.exit_code:
            if stage is not stages[-1]:
                later = ", ".join(s.name for s in stages[stages.index(stage) + 1 :])
                LOG.error(f"{prog}: not run after {stage.name}'s exit code {result.exit_code}:"
                          f" {later}")  # fmt: skip
            return result.exit_code
    if epilogue is not None:
        for line in epilogue(ctx, times):
            LOG.info(line)
    return 0


def dry_run_lines(args: argparse.Namespace, config: Config, stages: list[Stage]) -> list[str]:
    """What a run would do: its stages (every check passed), where, and every setting."""
    workdir = Path(args.workdir).resolve()
    lines = [
        f"dry run: would run {', '.join(s.name for s in stages)}; checks passed, nothing"
        " started or written",
        f"  workdir {workdir}{'' if workdir.exists() else ' (not created yet)'},"
        f" master {args.master or config.spark.master}",
        f"  configuration {config.fingerprint()} (conf/, --env {args.env}, --config,"
        " --properties-file, --conf):",
    ]

    def walk(prefix: str, value: object) -> Iterator[str]:
        if isinstance(value, dict) and value and not prefix.endswith(("extra_conf", "hive_conf")):
            for key, item in value.items():
                yield from walk(f"{prefix}.{key}" if prefix else key, item)
        else:
            yield f"    {prefix} = {json.dumps(value)}"

    return lines + list(walk("", config.to_dict()))


def inputs_fingerprint(*settings: object) -> str:
    """A digest of what a stage's output depends on besides the tables and files it reads:
    `settings` (JSON; any other scalar, such as a YAML date, as its text) and the code, every
    Python and C source file under skillrank/ and jobs/ (path and bytes), so that a new
    version of the code never keeps an output of the old one."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for package in ("skillrank", "jobs"):
        for source in sorted((PROJECT_ROOT / package).rglob("*")):
            if source.suffix in (".py", ".c"):
                digest.update(source.relative_to(PROJECT_ROOT).as_posix().encode() + b"\0")
                digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def file_digests(paths: Iterable[Path]) -> dict[str, str]:
    """path -> SHA-256 of its bytes, for the files among `paths` that exist: data files a
    stage reads, for ``inputs_fingerprint``."""
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest() for path in paths if path.is_file()
    }


def clear_staging(spark: SparkSession, root: str) -> int:
    """Delete what killed runs left in the staging directory; how many entries went.

    A run removes its own <staging_dir>/<run_id> when it ends; one killed outright cannot.
    One SkillRank process at a time uses a work directory (the launcher's lock), so at the
    start of a process every such entry there is a leftover. Only entries named like a run
    id go: whatever else is there is not SkillRank's.
    """
    path, fs = hadoop_path(spark, root)
    if not fs.exists(path):
        return 0
    named = run_id_pattern("[a-z]+")
    entries = [e for e in fs.listStatus(path) if named.fullmatch(e.getPath().getName())]
    for entry in entries:
        fs.delete(entry.getPath(), True)
    return len(entries)


def _new_run_id(stage: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stage}-{stamp}-{uuid.uuid4().hex[:8]}"


def run_id_pattern(stage: str) -> re.Pattern[str]:
    """Run ids of `stage` (a regular expression) as _new_run_id makes them."""
    return re.compile(rf"{stage}-[0-9]{{8}}T[0-9]{{6}}Z-[0-9a-f]{{8}}")


def run_id_of(stage: str) -> Callable[[str], str]:
    """An argparse type: a run id of `stage` as _new_run_id makes them, else a usage error
    (exit 2 before Spark starts; whether the run exists is the stage's to find out)."""
    pattern = run_id_pattern(stage)

    def parse(text: str) -> str:
        if not pattern.fullmatch(text):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a {stage} run id ({stage}-YYYYMMDDTHHMMSSZ-xxxxxxxx)"
            )
        return text

    return parse


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first if isinstance(exc, StageError) else f"{type(exc).__name__}: {first}"


def _record(
    ctx: StageContext,
    stage: str,
    started: datetime,
    clock: float,
    result: StageResult | None,
    error: str | None,
) -> None:
    row = Row(
        run_id=ctx.run_id,
        stage=stage,
        status="failed" if error else "succeeded",
        started_at=started,
        ended_at=datetime.now(UTC),
        duration_seconds=time.monotonic() - clock,
        rows_in=result.rows_in if result else None,
        rows_out=result.rows_out if result else None,
        rows_dropped=result.rows_dropped if result else None,
        input_versions=result.input_versions if result else None,
        output_versions=result.output_versions if result else None,
        config_fingerprint=ctx.config.fingerprint(),
        config_json=json.dumps(ctx.config.to_dict(), sort_keys=True),
        error=error,
    )
    df = ctx.spark.createDataFrame([row], SPECS["stage_runs"].schema)
    conform(df, "stage_runs").write.insertInto(ctx.table("stage_runs"))
