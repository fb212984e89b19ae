"""The launcher behind ./spark-submit.sh: validate, then hand over to spark-submit or spark-sql.

    ./spark-submit.sh <stage> [--workdir DIR] [--env NAME] [--conf key=value ...] [--master URL]

Arguments and configuration are checked here first, so a bad key, a missing input or a
wrong option fails in a second with one line, before a JVM starts or a table is touched.
Then the work directory is locked (one SkillRank process per work directory; a second one
exits with code 75 naming the holder) and the process becomes spark-submit.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib
import io
import multiprocessing
import os
import sys
import tempfile
import time
import zipfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from jobs import thriftserver
from jobs._cli import (
    StageError,
    common_parser,
    config_of,
    dry_run_lines,
    embedded_catalog,
    parse_stage_args,
)
from skillrank.config import PROJECT_ROOT, Config, ConfigError
from skillrank.servers import served_metastore_port
from skillrank.session import (
    QUIET_CLASS_SHARING,
    build_spark,
    class_archive,
    driver_environment,
    package_jars,
    repair_metastore,
    spark_settings,
)
from skillrank.tables import table_name

STAGE_NAMES = (
    *("generate", "ingest", "prepare", "train", "evaluate", "report", "all"),
    *("runs", "maintain"),
)
TOOLS = ("setup", "sql", "thriftserver")
USAGE = (
    "usage: spark-submit.sh <stage> [--workdir DIR] [--env NAME] [--config FILE]..."
    " [--conf KEY=VALUE]... [--master URL] [stage options]\n"
    "       spark-submit.sh --version\n"
    f"  stages: {', '.join(STAGE_NAMES)}\n"
    "  runs [list | show ID | promote ID | pin ID | unpin] [--reason TEXT]: the train runs,"
    " and which one the views show\n"
    "  maintain [--unsafe-retention]: drop old runs' rows, OPTIMIZE and VACUUM every table\n"
    "  setup: create the environment and resolve the Delta JARs\n"
    '  sql [-e "SELECT ..."] [-f FILE]: spark-sql on the same metastore\n'
    "  thriftserver start|stop|status [--port N]: JDBC/ODBC server on the same tables"
)


# The project's packages that executors import, zipped for --py-files (git-ignored cache).
PYFILES_PACKAGES = ("skillrank", "jobs")
PYFILES_DIR = PROJECT_ROOT / ".cache" / "pyfiles"
# A zip no launch has used for this long is removed (a run in flight serves its own zip to
# executors that start late, so zips are not removed as soon as the sources change).
PYFILES_UNUSED_SECONDS = 7 * 24 * 3600

# Exit code when the work directory is busy: EX_TEMPFAIL, "try again later".
EXIT_BUSY = 75
LOCK_FILE = ".skillrank.lock"


class WorkdirBusy(RuntimeError):
    """Another SkillRank process holds the work directory."""


def lock_workdir(workdir: Path, command: str) -> int:
    """Take the work directory's lock for this process and what it execs; its descriptor.

    One SkillRank process at a time per work directory: the embedded Derby metastore admits
    a single process, and two runs of a stage must not write the same tables at once. The
    lock (flock) is released by the kernel when the process ends, however it ends, so a
    killed run never leaves it behind. Raises WorkdirBusy naming the holder.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(workdir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 1000).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise WorkdirBusy(
            f"work directory {workdir} is in use by {holder}; wait for it to end"
            " or use another --workdir"
        ) from None
    os.ftruncate(fd, 0)
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    os.write(fd, f"{command} (pid {os.getpid()}, started {started})\n".encode())
    os.set_inheritable(fd, True)  # held on by spark-submit after execve
    return fd


def _spark_bin(name: str) -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / name)


def _spark_args(settings: dict[str, str], master: str) -> list[str]:
    args = ["--master", master]
    for key, value in settings.items():
        args += ["--conf", f"{key}={value}"]
    return args


def python_files_zip(directory: Path = PYFILES_DIR) -> Path:
    """The zip of the skillrank and jobs sources that stages pass to --py-files; its path.

    Built in `directory` when the sources change: the name carries a hash of the contents
    (entries have a fixed date, so the same sources give the same bytes), and a run in flight
    keeps serving its own zip to executors that start late. Each launch touches its zip;
    zips (and partial files) unused for PYFILES_UNUSED_SECONDS are removed. The packages'
    (empty) top-level __init__.py stay out: in the zip each package is then a namespace
    portion, which the regular package of the source tree overrides (PEP 420).
    spark-submit puts --py-files ahead of PYTHONPATH on the driver too, and the driver must
    import the source tree, since the configuration, the taxonomy and the kernel's C source
    are found next to the modules. Executors, which have only the zip, import from it.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for package in PYFILES_PACKAGES:
            root = PROJECT_ROOT / package
            # zipimport sees a namespace portion only through the directory's own entry.
            archive.writestr(zipfile.ZipInfo(f"{package}/"), b"")
            for source in sorted(root.rglob("*.py")):
                if source == root / "__init__.py":
                    continue
                entry = zipfile.ZipInfo(source.relative_to(PROJECT_ROOT).as_posix())
                entry.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(entry, source.read_bytes())
    data = buffer.getvalue()
    target = directory / f"skillrank-{hashlib.sha256(data).hexdigest()[:16]}.zip"
    try:
        os.utime(target)  # in use again
    except FileNotFoundError:
        directory.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        partial.write_bytes(data)
        partial.replace(target)  # atomic: a concurrent launch never sees half a zip
    unused_since = time.time() - PYFILES_UNUSED_SECONDS
    for old in directory.glob("skillrank-*"):
        with contextlib.suppress(FileNotFoundError):  # a concurrent launch removed it first
            if old != target and old.stat().st_mtime < unused_since:
                old.unlink()
    return target


def _environment(master: str) -> dict[str, str]:
    env = driver_environment(master, os.environ)
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    return env


def _resolve_jars(config: Config, workdir: Path, master: str) -> None:
    """Resolve (once) and cache the Ivy packages: Delta, Derby's network server and client."""
    spark = build_spark(config, workdir, master, "skillrank-setup")
    spark.range(1).count()
    spark.stop()


def _archive_classes(config: Config, retry: bool) -> None:
    """Write the driver JVM's class archive (session.class_archive), once per Java, pyspark
    and JAR set: a driver in a separate process (a JVM per process) declares two tables on a
    scratch work directory, writes one and reads the other, then dumps the classes it loaded
    as it exits. Only for the embedded default: the scratch run must not reach a shared
    warehouse or metastore. After a failed attempt only `retry` (setup) tries again."""
    target = class_archive(config)
    failed = target.with_name(f"{target.name}.failed")
    if target.is_file() or not embedded_catalog(config) or (failed.is_file() and not retry):
        return
    print("spark-submit.sh: archiving the Spark driver's classes (once, about a minute)",
          file=sys.stderr)  # fmt: skip
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    loader = multiprocessing.get_context("spawn").Process(
        target=_load_classes, args=(config, partial)
    )
    loader.start()
    loader.join()
    if loader.exitcode == 0 and partial.is_file():
        partial.replace(target)  # atomic: a concurrent launch maps a whole archive or none
        for old in target.parent.glob("spark-*"):
            if old != target:
                old.unlink(missing_ok=True)
    else:  # the runs work without it, only slower
        partial.unlink(missing_ok=True)
        failed.touch()
        print("spark-submit.sh: warning: no class archive written; runs start without it"
              " (`setup` tries again)", file=sys.stderr)  # fmt: skip


def _load_classes(config: Config, archive: Path) -> None:
    """_archive_classes' driver: its JVM writes `archive` when it exits."""
    from pyspark import SparkContext

    from skillrank.tables import SPECS, declare_tables

    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        options = spark_settings(config, workdir)["spark.driver.extraJavaOptions"]
        # The archive holds what was loaded, whichever compiler ran it: C1 alone costs less.
        dump = f"{options} -XX:TieredStopAtLevel=1 -XX:ArchiveClassesAtExit={archive}"
        spark = build_spark(
            config, workdir, "local[2]", "skillrank-setup-classes",
            extra={
                "spark.ui.enabled": "false",
                "spark.driver.extraJavaOptions": f"{dump} {QUIET_CLASS_SHARING}",
            },
        )  # fmt: skip
        # Tables of both kinds (partitioned, with constraints), written and read: the
        # classes of a run's first steps. A stage loads the rest as it goes.
        declare_tables(spark, config, ["stage_runs", "job_skill_rank"])
        record = spark.createDataFrame([], SPECS["stage_runs"].schema)
        record.write.insertInto(table_name(config, "stage_runs"))
        spark.table(table_name(config, "job_skill_rank")).groupBy("run_id").count().collect()
        jvm = SparkContext._gateway.proc  # type: ignore[union-attr]
        spark.stop()
        jvm.stdin.close()  # the JVM exits when its parent's pipe closes, and dumps then
        jvm.wait()


def _thriftserver(
    args: argparse.Namespace, config: Config, workdir: Path, master: str, prog: str
) -> int:
    if args.action == "stop":
        return thriftserver.stop(config, workdir)
    if repair_metastore(config, workdir):
        print(f"{prog}: warning: removed a half-created metastore of a killed run", file=sys.stderr)

    def submit(settings: dict[str, str], tail: list[str]) -> list[str]:
        return [_spark_bin("spark-submit"), *_spark_args(settings, master), *tail]

    try:
        return thriftserver.start(args, config, workdir, submit, _environment(master))
    except thriftserver.ServerError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1


def version() -> str:
    """This checkout's version and those of the packages it runs on."""
    packages = [f"{name} {metadata.version(name)}" for name in _PACKAGES]
    python = sys.version.split()[0]
    return f"skillrank {metadata.version('skillrank')} ({', '.join(packages)}, Python {python})"


_PACKAGES = ("pyspark", "delta-spark", "torch", "pyarrow")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(version())
        return 0
    command, rest = argv[0], argv[1:]
    prog = f"spark-submit.sh {command}"
    if command not in STAGE_NAMES + TOOLS:
        known = ", ".join(STAGE_NAMES + TOOLS)
        print(f"{prog}: error: unknown stage {command!r} (known: {known})", file=sys.stderr)
        return 2
    try:
        if command in STAGE_NAMES:
            module = importlib.import_module(f"jobs.{command}")
            args, config, stages = parse_stage_args(
                module.ALL if command == "all" else [module.STAGE], rest
            )
            if args.dry_run:
                print("\n".join(dry_run_lines(args, config, stages)))
                return 0
            passthrough = rest
        elif command == "thriftserver":
            parser = common_parser(prog)
            thriftserver.add_arguments(parser)
            args, passthrough = parser.parse_args(rest), []
            config = config_of(args)
            thriftserver.check(args, config)
        else:
            args, passthrough = common_parser(prog).parse_known_args(rest)
            config = config_of(args)
    except (ConfigError, StageError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    workdir = Path(args.workdir).resolve()
    master = args.master or config.spark.master
    if command == "thriftserver" and args.action == "status":
        return thriftserver.status(config, workdir)
    if command == "sql" and served_metastore_port(config, workdir) is not None:
        # A client of the metastore the Thrift server serves, like any JDBC client: it takes
        # no lock, so an open shell never makes a batch exit 75 (docs/sql.md).
        print(f"{prog}: on the metastore the Thrift server serves (no lock)", file=sys.stderr)
    else:
        try:
            lock_workdir(workdir, f"{command} {getattr(args, 'action', '')}".strip())
        except WorkdirBusy as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return EXIT_BUSY
        if command == "sql":
            print(
                f"{prog}: the embedded metastore admits one process: batches on {workdir}"
                " exit 75 until this shell ends (`thriftserver start` first lets them share"
                " it; docs/sql.md)",
                file=sys.stderr,
            )

    if command != "thriftserver" or args.action == "start":
        # What set-up leaves when a command that starts Spark runs first: the JARs, then the
        # class archive of the driver JVM that the command starts.
        if not package_jars(config):
            _resolve_jars(config, workdir, master)
        _archive_classes(config, retry=command == "setup")
    if command == "setup":
        print(f"setup: JARs cached: {', '.join(Path(j).name for j in package_jars(config))}")
        archive = class_archive(config)
        print(f"setup: the driver's class archive: {archive if archive.is_file() else 'none'}")
        return 0
    if command == "thriftserver":
        return _thriftserver(args, config, workdir, master, prog)
    settings = spark_settings(config, workdir)
    if command == "sql" and repair_metastore(config, workdir):
        print(f"{prog}: warning: removed a half-created metastore of a killed run", file=sys.stderr)
    if command == "sql":
        workdir.mkdir(parents=True, exist_ok=True)
        cmd = [_spark_bin("spark-sql"), *_spark_args(settings, master), *passthrough]
    else:
        script = str(PROJECT_ROOT / "jobs" / f"{command}.py")
        pyfiles = ["--py-files", str(python_files_zip())]
        cmd = [
            _spark_bin("spark-submit"),
            *_spark_args(settings, master),
            *pyfiles,
            script,
            *passthrough,
        ]
    os.execve(cmd[0], cmd, _environment(master))
    return 0  # not reached: execve replaces the process


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
