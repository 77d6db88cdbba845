"""A Ray cluster of several nodes on this machine, for trying `--ray` out, tests and
benchmarks: each node is a real `ray start --block` process on 127.0.0.1 (the head, then
nodes joining it), in a session of its own so that stopping it stops exactly its processes
(never `ray stop`, which stops every Ray cluster of the machine).

    with local_cluster(nodes=2, cpus_per_node=1) as address:
        ...  # imagetext index FOLDER --ray <address>
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _ray_cli() -> str:
    script = Path(sys.executable).parent / "ray"
    return str(script) if script.is_file() else shutil.which("ray") or "ray"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], log) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([_ray_cli(), "start", "--block", "--disable-usage-stats", *args],
                            env=env, start_new_session=True, stdout=log, stderr=log)


def _stop(procs: list[subprocess.Popen], grace: float = 5.0) -> None:
    """SIGTERM to each node's process group, SIGKILL to what is left after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n["Alive"])


@contextmanager
def local_cluster(nodes: int = 2, cpus_per_node: int = 1, timeout: float = 120) -> Iterator[str]:
    """Start a head and `nodes - 1` more nodes on 127.0.0.1, each with `cpus_per_node` CPUs;
    yields the head's address once every node has joined, this process connected to it as
    a driver (ray.init); disconnects and stops them all on exit."""
    import ray

    port = _free_port()
    address = f"127.0.0.1:{port}"
    temp_dir = tempfile.mkdtemp(prefix="ray-imagetext-")
    log = open(os.path.join(temp_dir, "ray-start.log"), "ab")  # noqa: SIM115  (closed below)
    procs = [_start(["--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                     f"--num-cpus={cpus_per_node}", f"--temp-dir={temp_dir}",
                     "--include-dashboard=false"], log)]
    try:
        deadline = time.monotonic() + timeout
        while not _listening(port):  # the head's GCS
            if procs[0].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Ray head did not start (see {log.name})")
            time.sleep(0.5)
        procs += [_start([f"--address={address}", "--node-ip-address=127.0.0.1",
                          f"--num-cpus={cpus_per_node}"], log) for _ in range(nodes - 1)]
        while True:  # the GCS may take its first connections before it is ready for them
            try:
                ray.init(address=address, log_to_driver=False, logging_level="ERROR")
                break
            except ConnectionError:
                if procs[0].poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(1)
        while _alive_nodes() < nodes:
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                raise RuntimeError(f"the Ray nodes did not all join (see {log.name})")
            time.sleep(0.5)
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        _stop(procs)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
