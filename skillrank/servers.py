"""State files of the long-running servers of a work directory (`spark-submit.sh thriftserver`).

While the Thrift server runs, two processes serve the work directory: a Derby network server
that holds the metastore (so that batch stages, spark-sql and the Thrift server can all use
it at once) and HiveThriftServer2 itself. Each is described by a small JSON file under
``<workdir>/<sql.state_dir>``: its pid, address and the marker that its command line must
contain. A file whose process is gone, or whose pid now belongs to another program, is stale
and means "not running".
"""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from skillrank.config import Config

METASTORE = "metastore"
THRIFTSERVER = "thriftserver"
# What each server's command line contains (guards against a reused pid).
MARKERS = {
    METASTORE: "org.apache.derby.drda.NetworkServerControl",
    THRIFTSERVER: "org.apache.spark.sql.hive.thriftserver.HiveThriftServer2",
}


@dataclass(frozen=True)
class ServerState:
    kind: str
    pid: int
    host: str
    port: int
    log: str
    started_at: str


def state_dir(config: Config, workdir: Path) -> Path:
    return (workdir / config.sql.state_dir).resolve()


def state_file(config: Config, workdir: Path, kind: str) -> Path:
    return state_dir(config, workdir) / f"{kind}.json"


def write_state(config: Config, workdir: Path, state: ServerState) -> None:
    """Record a started server (written beside, then renamed: never half a file)."""
    path = state_file(config, workdir, state.kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(asdict(state), indent=2) + "\n", encoding="utf-8")
    partial.replace(path)


def read_state(config: Config, workdir: Path, kind: str) -> ServerState | None:
    """The recorded server of this kind, or None when there is no readable state file."""
    try:
        raw = json.loads(state_file(config, workdir, kind).read_text(encoding="utf-8"))
        return ServerState(**raw)
    except (OSError, ValueError, TypeError):
        return None


def process_alive(pid: int, kind: str) -> bool:
    """Whether `pid` runs and is the server of this kind (not a later process with its pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return MARKERS[kind].encode() in cmdline


def live_state(config: Config, workdir: Path, kind: str) -> ServerState | None:
    """The recorded server of this kind if its process is alive; None otherwise (or stale)."""
    state = read_state(config, workdir, kind)
    return state if state is not None and process_alive(state.pid, kind) else None


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def remove_state(config: Config, workdir: Path, kind: str) -> None:
    state_file(config, workdir, kind).unlink(missing_ok=True)


def served_metastore_port(config: Config, workdir: Path) -> int | None:
    """Port of the Derby network server that holds this work directory's metastore, if any."""
    state = live_state(config, workdir, METASTORE)
    return state.port if state is not None else None


def is_loopback(host: str) -> bool:
    """Whether `host` names only this machine (so an unauthenticated server stays private)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
