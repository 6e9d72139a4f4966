"""A real three-master Redis Cluster on loopback, for tests and ``bench/cluster.py``.

Each node is a ``redis-server`` child with persistence off; ``redis-cli --cluster
create`` assigns the slots, with no replicas unless asked (``replicas=1`` gives each
master one, which the cluster promotes when its master is lost). Slots are moved by
``redis-cli --cluster reshard`` (``reshard``), or step by step (``start_moving``, then
``finish_moving``) to act while a slot migrates. Only the processes started here are
ever signalled. Redis Cluster also listens on port P+10000 (the cluster bus), so each
port is chosen with its bus port free too, and no port of one node is another's bus port.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BUS_OFFSET", "Cluster", "ClusterNodeProcess", "cluster_ports"]

BUS_OFFSET = 10000  # Redis Cluster's bus listens on the client port plus this
HOST = "127.0.0.1"


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def cluster_ports(count: int, *, low: int = 20000, high: int = 55000) -> list[int]:
    """``count`` ports P, each with P and P+10000 free now, no two of them colliding."""
    ports: list[int] = []
    taken: set[int] = set()
    for _ in range(2000):
        port = random.randint(low, high)
        if {port, port + BUS_OFFSET} & taken or not (_free(port) and _free(port + BUS_OFFSET)):
            continue
        ports.append(port)
        taken |= {port, port + BUS_OFFSET}
        if len(ports) == count:
            return ports
    raise RuntimeError(f"found no {count} free port pairs for a Redis Cluster")


def _redis_cli(*args: str, timeout: float = 10.0) -> str:
    done = subprocess.run([shutil.which("redis-cli") or "redis-cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"redis-cli {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done.stdout


@dataclass
class ClusterNodeProcess:
    """One cluster-enabled ``redis-server`` child; ``kill`` is ``kill -9``."""

    port: int
    workdir: Path
    node_timeout_ms: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # cluster-require-full-coverage no: the other masters keep serving their slots
        # once the cluster has marked a lost master failed (see docs/scaling.md).
        # repl-diskless-sync-delay 0: a replica's first sync starts at once, not after 5 s.
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", HOST,
             "--cluster-enabled", "yes", "--cluster-config-file", str(self.workdir / f"nodes-{self.port}.conf"),
             "--cluster-node-timeout", str(self.node_timeout_ms), "--cluster-require-full-coverage", "no",
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "no",
             "--repl-diskless-sync-delay", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def command(self, *args: str) -> str:
        return _redis_cli("-h", HOST, "-p", str(self.port), *args)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """``kill -9``: no goodbye to clients or to the other nodes."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Cluster:
    """``size`` masters with ``replicas`` replicas each, started by ``start`` and stopped by ``stop``."""

    workdir: Path
    size: int = 3
    replicas: int = 0
    node_timeout_ms: int = 1000
    nodes: list[ClusterNodeProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The broker URL naming every node."""
        return "redis+cluster://" + ",".join(f"{HOST}:{node.port}" for node in self.nodes)

    def start(self, timeout: float = 20.0) -> None:
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            raise RuntimeError("redis-server and redis-cli are needed for a Redis Cluster")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nodes = [ClusterNodeProcess(port, self.workdir, self.node_timeout_ms)
                      for port in cluster_ports(self.size * (1 + self.replicas))]
        try:
            for node in self.nodes:
                node.start()
            deadline = time.monotonic() + timeout
            for node in self.nodes:
                self._until(deadline, lambda n=node: "PONG" in n.command("PING"), f"node {node.port} to answer")
            _redis_cli("--cluster", "create", *(f"{HOST}:{n.port}" for n in self.nodes),
                       "--cluster-replicas", str(self.replicas), "--cluster-yes",
                       timeout=max(1.0, deadline - time.monotonic()))
            for node in self.nodes:
                self._until(deadline, lambda n=node: "cluster_state:ok" in n.command("CLUSTER", "INFO"),
                            f"node {node.port} to say cluster_state:ok")
            # A replica whose link to its master is down would not be promoted.
            for node in self.replica_nodes():
                self._until(deadline, lambda n=node: "master_link_status:up" in n.command("INFO", "replication"),
                            f"replica {node.port} to be in sync with its master")
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _until(deadline: float, check: object, what: str) -> None:
        assert callable(check)
        while True:
            try:
                if check():
                    return
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Redis Cluster did not come up: waited for {what}")
            time.sleep(0.05)

    def _table(self) -> list[list[str]]:
        """``CLUSTER NODES`` of a live node, one list of fields per node."""
        for node in self.nodes:
            if node.alive():
                return [line.split() for line in node.command("CLUSTER", "NODES").splitlines() if line.strip()]
        raise LookupError("no node of the cluster is alive")

    def _process(self, fields: list[str]) -> ClusterNodeProcess:
        port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
        return next(n for n in self.nodes if n.port == port)

    def ranges(self) -> list[tuple[int, int, ClusterNodeProcess]]:
        """Every slot range with the master that holds it (asked of a live node)."""
        found = []
        for fields in self._table():
            if "master" not in fields[2]:
                continue
            for span in fields[8:]:
                if not span.startswith("["):  # "[slot->-node]": a migration under way
                    first, _, last = span.partition("-")
                    found.append((int(first), int(last or first), self._process(fields)))
        return found

    def owner(self, slot: int, ranges: list[tuple[int, int, ClusterNodeProcess]] | None = None
              ) -> ClusterNodeProcess:
        """The master that holds ``slot``."""
        for first, last, node in ranges if ranges is not None else self.ranges():
            if first <= slot <= last:
                return node
        raise LookupError(f"no master holds slot {slot}")

    def node_id(self, node: ClusterNodeProcess) -> str:
        return next(fields[0] for fields in self._table() if self._process(fields) is node)

    def replica_nodes(self) -> list[ClusterNodeProcess]:
        return [self._process(fields) for fields in self._table() if "slave" in fields[2].split(",")]

    def replica_of(self, master: ClusterNodeProcess) -> ClusterNodeProcess:
        """The replica that follows ``master``."""
        master_id = self.node_id(master)
        return next(self._process(fields) for fields in self._table()
                    if "slave" in fields[2].split(",") and fields[3] == master_id)

    def is_master(self, node: ClusterNodeProcess) -> bool:
        """True once ``node`` says it is a master (a promoted replica, after a failover)."""
        try:
            return node.command("ROLE").split()[0] == "master"
        except (RuntimeError, subprocess.TimeoutExpired, IndexError):
            return False

    def reshard(self, source: ClusterNodeProcess, target: ClusterNodeProcess, slots: int = 1) -> None:
        """``redis-cli --cluster reshard``: move the ``slots`` lowest slots of ``source`` to ``target``."""
        _redis_cli("--cluster", "reshard", f"{HOST}:{source.port}", "--cluster-from", self.node_id(source),
                   "--cluster-to", self.node_id(target), "--cluster-slots", str(slots), "--cluster-yes",
                   timeout=30)

    def start_moving(self, slot: int, target: ClusterNodeProcess) -> ClusterNodeProcess:
        """Move ``slot``'s keys to ``target`` and leave the slot migrating (its old master
        answers ASK for them) until ``finish_moving``; the old master."""
        source = self.owner(slot)
        source_id, target_id = self.node_id(source), self.node_id(target)
        target.command("CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
        source.command("CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
        while keys := source.command("CLUSTER", "GETKEYSINSLOT", str(slot), "100").split():
            source.command("MIGRATE", HOST, str(target.port), "", "0", "5000", "KEYS", *keys)
        return source

    def finish_moving(self, slot: int, source: ClusterNodeProcess, target: ClusterNodeProcess) -> None:
        """``target`` holds ``slot`` now, as every master is told (the target first)."""
        target_id = self.node_id(target)
        others = [self._process(fields) for fields in self._table()
                  if "master" in fields[2] and "fail" not in fields[2]]
        for node in [target, source, *(n for n in others if n not in (target, source))]:
            node.command("CLUSTER", "SETSLOT", str(slot), "NODE", target_id)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
