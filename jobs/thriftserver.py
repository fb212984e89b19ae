"""thriftserver: Spark's JDBC/ODBC server (HiveThriftServer2) over a work directory's tables.

    ./spark-submit.sh thriftserver start|stop|status [--port N] [--workdir DIR] [--conf ...]

`start` runs two background processes and returns once both accept connections:

- a Derby network server on 127.0.0.1:<sql.metastore_port> that holds the work directory's
  metastore database. The embedded Derby admits one process at a time; with the database
  served over the network, the Thrift server, batch stages and spark-sql all use it at once
  (skillrank.session switches to the network URL while this server is up);
- HiveThriftServer2 on <sql.host>:<sql.port> with the project's Spark settings (Delta,
  warehouse), so beeline or any JDBC/ODBC client reaches the tables and views.

`stop` stops both and leaves nothing running; `status` says whether the server is up and
where (exit 0), or that it is not running (exit 3). Their pids, addresses and logs are in
<workdir>/<sql.state_dir>; a state file whose process is gone is stale and is cleared by the
next `start`. `start` and `stop` take the work directory's lock: while a batch stage runs
they exit with code 75, so a running stage never sees its metastore switch underneath it.
See docs/sql.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from skillrank.config import Config, ConfigError
from skillrank.servers import (
    METASTORE,
    THRIFTSERVER,
    ServerState,
    is_loopback,
    live_state,
    port_open,
    read_state,
    remove_state,
    state_dir,
    write_state,
)
from skillrank.session import derby_server_classpath, package_jars, spark_settings

ACTIONS = ("start", "stop", "status")
# `status` when the server is not running (the LSB convention for "program is not running").
EXIT_NOT_RUNNING = 3
_STOP_WAIT_SECONDS = 60
LABELS = {METASTORE: "metastore (Derby network) server", THRIFTSERVER: "Thrift server"}


class ServerError(RuntimeError):
    """A server did not start or stop; the message says why and where its log is."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS, help="start, stop or status")
    parser.add_argument("--port", type=int, help="Thrift server port (default sql.port)")


def check(args: argparse.Namespace, config: Config) -> None:
    """Refuse, before anything starts, a bind address that would expose an open server: the
    server's own settings as it gets them (sql.hive_conf may set either)."""
    hive_conf = _hive_conf(config, config.sql.port)
    host = hive_conf["hive.server2.thrift.bind.host"]
    if hive_conf["hive.server2.authentication"].upper() in _OPEN and not is_loopback(host):
        raise ConfigError(
            f"refusing to bind the Thrift server to {host} without authentication:"
            " set sql.authentication (LDAP, KERBEROS or CUSTOM) and its hive.server2.*"
            " settings in sql.hive_conf (docs/sql.md), or keep sql.host on 127.0.0.1"
        )


# HiveServer2's modes that let anyone in.
_OPEN = ("NONE", "NOSASL")


def _hive_conf(config: Config, port: int) -> dict[str, str]:
    """HiveServer2's settings: sql.host, the port and sql.authentication, then sql.hive_conf."""
    return {
        "hive.server2.thrift.bind.host": config.sql.host,
        "hive.server2.thrift.port": str(port),
        "hive.server2.authentication": config.sql.authentication.upper(),
        **config.sql.hive_conf,
    }


def jdbc_url(state: ServerState, config: Config) -> str:
    host = "127.0.0.1" if state.host in ("0.0.0.0", "::") else state.host
    return f"jdbc:hive2://{host}:{state.port}/{config.catalog.database}"


def status(config: Config, workdir: Path) -> int:
    thrift = live_state(config, workdir, THRIFTSERVER)
    metastore = live_state(config, workdir, METASTORE)
    if thrift is not None and port_open(_client_host(thrift.host), thrift.port):
        print(
            f"thriftserver: up at {jdbc_url(thrift, config)} (pid {thrift.pid}, since"
            f" {thrift.started_at}; log {thrift.log}); metastore served on 127.0.0.1:"
            f"{metastore.port if metastore else '?'}"
        )
        return 0
    if thrift is not None:
        print(f"thriftserver: starting or not answering (pid {thrift.pid}; log {thrift.log})")
        return EXIT_NOT_RUNNING
    line = "thriftserver: not running"
    if metastore is not None:
        line += f"; its metastore server is still up (pid {metastore.pid}): run stop"
    elif read_state(config, workdir, THRIFTSERVER) is not None:
        line += " (a stale state file of a dead server is there; start clears it)"
    print(line)
    return EXIT_NOT_RUNNING


def stop(config: Config, workdir: Path) -> int:
    """Stop both servers (Thrift first, then the metastore) and clear their state."""
    stopped = [
        f"{LABELS[kind]} (pid {pid})"
        for kind in (THRIFTSERVER, METASTORE)
        if (pid := _stop_one(config, workdir, kind)) is not None
    ]
    print(f"thriftserver: stopped {', '.join(stopped)}" if stopped else "thriftserver: not running")
    return 0


def start(
    args: argparse.Namespace,
    config: Config,
    workdir: Path,
    command: Callable[[dict[str, str], list[str]], list[str]],
    environment: dict[str, str],
) -> int:
    """Start the metastore server, then the Thrift server (`command`: its spark-submit line
    from the Spark settings and the trailing arguments). The Ivy JARs must be resolved."""
    thrift = live_state(config, workdir, THRIFTSERVER)
    if thrift is not None and live_state(config, workdir, METASTORE) is not None:
        print(f"thriftserver: already running at {jdbc_url(thrift, config)} (pid {thrift.pid})")
        return 0
    for kind in (THRIFTSERVER, METASTORE):  # half a server, or stale files: start afresh
        if _stop_one(config, workdir, kind) is not None:
            print(f"thriftserver: stopped the leftover {LABELS[kind]} of an earlier start")
    port = args.port or config.sql.port
    for what, at in (("Thrift server", port), ("metastore server", config.sql.metastore_port)):
        if port_open("127.0.0.1", at):
            raise ServerError(
                f"port {at} for the {what} is in use by another program: choose another"
                f" ({'--port' if at == port else '--conf sql.metastore_port='})"
            )
    logs = state_dir(config, workdir)
    logs.mkdir(parents=True, exist_ok=True)
    metastore = _start_metastore(config, workdir, logs)
    try:
        thrift = _start_thrift(config, workdir, logs, port, command, environment)
    except BaseException:
        _stop_one(config, workdir, METASTORE)
        raise
    print(f"thriftserver: up at {jdbc_url(thrift, config)} (pid {thrift.pid}; log {thrift.log})")
    print(
        f"thriftserver: metastore served on 127.0.0.1:{metastore.port} (pid {metastore.pid});"
        " batch stages on this work directory use it while the server runs"
    )
    print(f'  connect: beeline -u "{jdbc_url(thrift, config)}" -n "$USER"')
    print(f"  stop:    ./spark-submit.sh thriftserver stop --workdir {workdir}")
    return 0


def _start_metastore(config: Config, workdir: Path, logs: Path) -> ServerState:
    metastore_dir = (workdir / config.catalog.metastore_dir).resolve()
    port = config.sql.metastore_port
    java, *control = _derby_control(config, "start", port)
    argv = [
        java,
        f"-Dderby.system.home={metastore_dir.parent}",
        f"-Dderby.stream.error.file={logs / 'derby.log'}",
        *control,
        "-noSecurityManager",
    ]
    return _launch(config, workdir, METASTORE, argv, "127.0.0.1", port, logs, os.environ.copy())


def _start_thrift(
    config: Config,
    workdir: Path,
    logs: Path,
    port: int,
    command: Callable[[dict[str, str], list[str]], list[str]],
    environment: dict[str, str],
) -> ServerState:
    settings = spark_settings(config, workdir)  # the metastore is now served: network URL
    # The Thrift server's sessions load the catalog classes from the driver's classpath.
    settings["spark.driver.extraClassPath"] = ":".join(package_jars(config))
    settings["spark.app.name"] = f"skillrank-thriftserver ({workdir})"
    hive_conf = _hive_conf(config, port)
    trailing = [
        "--class",
        "org.apache.spark.sql.hive.thriftserver.HiveThriftServer2",
        "spark-internal",
    ]
    for key, value in hive_conf.items():
        trailing += ["--hiveconf", f"{key}={value}"]
    argv = command(settings, trailing)
    return _launch(config, workdir, THRIFTSERVER, argv, config.sql.host, port, logs, environment)


def _launch(
    config: Config,
    workdir: Path,
    kind: str,
    argv: list[str],
    host: str,
    port: int,
    logs: Path,
    environment: dict[str, str],
) -> ServerState:
    """Start a server in its own session (it outlives this process); wait until it answers."""
    log = logs / f"{kind}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=logs,
            env=environment,
        )
    state = ServerState(
        kind=kind,
        pid=process.pid,
        host=host,
        port=port,
        log=str(log),
        started_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    write_state(config, workdir, state)
    deadline = time.monotonic() + config.sql.start_timeout_seconds
    print(f"thriftserver: starting the {LABELS[kind]} (pid {process.pid}, log {log})", flush=True)
    while not port_open(_client_host(host), port):
        if process.poll() is not None or time.monotonic() > deadline:
            reason = (
                f"exited with code {process.returncode}"
                if process.poll() is not None
                else f"did not answer on port {port} within {config.sql.start_timeout_seconds} s"
            )
            _stop_one(config, workdir, kind)
            raise ServerError(f"the {LABELS[kind]} {reason}: see {log}\n{_tail(log)}")
        time.sleep(1)
    return state


def _stop_one(config: Config, workdir: Path, kind: str) -> int | None:
    """Stop the recorded server of this kind if it is alive, and clear its state; its pid."""
    live = live_state(config, workdir, kind)
    if live is not None:
        if kind == METASTORE:  # a clean shutdown closes the database (no recovery needed)
            subprocess.run(
                _derby_control(config, "shutdown", live.port),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=_STOP_WAIT_SECONDS,
                check=False,
            )
        for sig, wait in ((signal.SIGTERM, _STOP_WAIT_SECONDS), (signal.SIGKILL, 10)):
            deadline = time.monotonic() + wait
            while live_state(config, workdir, kind) is not None and time.monotonic() < deadline:
                try:
                    os.killpg(live.pid, sig)
                except ProcessLookupError:
                    break
                time.sleep(0.5)
    remove_state(config, workdir, kind)
    return live.pid if live is not None else None


def _derby_control(config: Config, action: str, port: int) -> list[str]:
    """Command line of Derby's NetworkServerControl for `action` (start, shutdown)."""
    java = shutil.which("java", path=_java_path()) or "java"
    classpath = ":".join(derby_server_classpath(config))
    control = "org.apache.derby.drda.NetworkServerControl"
    return [java, "-cp", classpath, control, action, "-h", "127.0.0.1", "-p", str(port)]


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _java_path() -> str:
    java_home = os.environ.get("JAVA_HOME")
    path = os.environ.get("PATH", "")
    return f"{java_home}/bin:{path}" if java_home else path


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
