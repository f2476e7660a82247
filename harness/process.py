"""One service as a process of its own (`python -m <service>`): start, wait until ready, stop, kill.

The one supervisor of the project: the tests and the benchmark run the four services with it on
free ports, `make up` / `make down` on their fixed ports. A process started with a `pid_file`
outlives the object that started it: a later `ServiceProcess` with the same pid file (another
command, `make down`) finds it, stops it or kills it.

A process started with `forked=True` (the tests' and the benchmark's, through `harness.system`)
is forked from an interpreter that has imported what the services share already
(multiprocessing's forkserver, as gunicorn's `--preload`), then runs `<service>.__main__` as
`python -m` would, with its own environment, session and log (only /proc/<pid>/environ still
shows the forkserver's, from before the fork). Those imports were most of a
start's CPU: 1.0-1.1 s, against 0.3-0.4 s forked, and the suite starts about a hundred services.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from harness import http_client
from harness.wait import eventually_sync


class NotReady(Exception):
    """A service exited, or did not become ready in time: `reason`, then the tail of its log."""

    def __init__(self, reason: str, log_tail: str) -> None:
        super().__init__(f"{reason}:\n{log_tail}")
        self.reason = reason


@dataclass
class ServiceProcess:
    """`python -m <name>` with `env`, listening on `port`, its output appended to `log_path`."""

    name: str  # the service's package
    port: int
    env: dict[str, str]
    log_path: Path
    pid_file: Path | None = None
    #: Forked from the interpreter that has imported what the services share (see above).
    forked: bool = False
    _proc: subprocess.Popen[bytes] | Forked | None = field(default=None, repr=False)
    #: The pid last seen listening on `port`: a process keeps its listening socket while it runs.
    _seen_listening: int | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The process's id while it runs (started here, or found through the pid file)."""
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        if self.pid_file is None:
            return None
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def returncode(self) -> int | None:
        """How the process started here ended; None while it runs (or if not started here)."""
        return None if self._proc is None else self._proc.poll()

    def start(self) -> int:
        """Start the process in a session of its own; returns its pid."""
        if self.running:
            raise RuntimeError(f"{self.name} is running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.forked:
            self._proc = Forked.start(self.name, self.env, self.log_path)
        else:
            with open(self.log_path, "ab") as log:  # the child keeps its own copy of it
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", self.name],
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        if self.pid_file is not None:
            self.pid_file.parent.mkdir(parents=True, exist_ok=True)
            self.pid_file.write_text(str(self._proc.pid))
        return self._proc.pid

    def ready(self) -> bool:
        """`GET /health/ready` answers 200 and this process is the one listening: its database
        and broker answer. (Another process on the port, which this one then fails to bind, would
        answer for it: the tests would talk to the wrong service.)"""
        try:
            response = http_client.get(f"{self.url}/health/ready?timeout=1", timeout=2)
        except httpx.HTTPError:
            return False
        if response.status_code != 200:
            return False
        # Asked once per process: psutil reads every TCP socket of the machine for it (up to
        # 2,300 in TIME_WAIT during `make test`), and every e2e test waits for its four services.
        pid = self.pid
        if pid is None or (pid != self._seen_listening and not self.listening()):
            return False
        self._seen_listening = pid
        return True

    def listening(self) -> bool:
        """This process holds the listening socket on `port`."""
        pid = self.pid
        if pid is None:
            return False
        try:
            sockets = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:
            return False
        return any(s.status == psutil.CONN_LISTEN and s.laddr.port == self.port for s in sockets)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Returns once the service is ready; `NotReady` if it exits first or the time runs out."""

        def ready_or_exited() -> bool:
            if not self.running:
                code = "" if self.returncode is None else f" with status {self.returncode}"
                raise NotReady(f"{self.name} exited{code}", self.log_tail())
            return self.ready()

        try:
            eventually_sync(ready_or_exited, timeout=timeout, interval=0.05)
        except TimeoutError:
            raise NotReady(f"{self.name} not ready after {timeout:g}s", self.log_tail()) from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """SIGTERM lets it finish what it holds; after `timeout`, or with SIGKILL, it is a crash."""
        if self._proc is not None:
            # Started here: wait through Popen, which keeps the exit status (`returncode`).
            if self._proc.poll() is None:
                self._proc.send_signal(sig)
                try:
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
        elif (pid := self.pid) is not None:
            os.kill(pid, sig)
            try:
                eventually_sync(lambda: not alive(pid), timeout=timeout, interval=0.05)
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                eventually_sync(lambda: not alive(pid), timeout=timeout, interval=0.05)
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no acks, no commits in flight."""
        self.stop(signal.SIGKILL)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop (if running), start and wait until ready."""
        self.stop()
        self.start()
        self.wait_ready(timeout)

    def pause(self) -> None:
        """SIGSTOP: the process holds its connections but answers nothing, heartbeats included."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def metrics(self) -> list[Metric]:
        """This process's Prometheus metrics, as its /metrics shows them now."""
        text = http_client.get(f"{self.url}/metrics", timeout=10).text
        return list(text_string_to_metric_families(text))

    def metric(self, name: str, **labels: str) -> float:
        """The sum of this process's Prometheus samples `name` whose labels include `labels`."""
        return sum(
            sample.value
            for family in self.metrics()
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _signal(self, sig: int) -> None:
        pid = self.pid
        if pid is None:
            raise RuntimeError(f"{self.name} is not running")
        os.kill(pid, sig)


#: The interpreter forked services come from. When the first one starts, it imports what all four
#: share, and nothing of one service's own: that would be in the others too (its metrics among
#: them, in every service's /metrics). A service's own modules take it 5-15 ms more.
_PRELOADED = multiprocessing.get_context("forkserver")
_PRELOADED.set_forkserver_preload(["contracts", "outbox", "web.app", "web.server"])


class Forked:
    """A service forked from `_PRELOADED`, with the part of `subprocess.Popen`'s interface that
    `ServiceProcess` uses (`pid`, `poll`, `wait`, `send_signal`, `kill`)."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self._process = process
        assert process.pid is not None, "started"
        self.pid: int = process.pid

    @classmethod
    def start(cls, name: str, env: dict[str, str], log_path: Path) -> Forked:
        process = _PRELOADED.Process(target=_run_module, args=(name, env, log_path), name=name)
        process.start()
        return cls(process)

    def poll(self) -> int | None:
        """Its exit status (minus the signal that ended it), or None while it runs."""
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self._process.name, timeout or 0)
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _run_module(name: str, env: dict[str, str], log_path: Path) -> None:
    """In the forked process: `python -m <name>` with `env`, in a session of its own, its output
    appended to `log_path`, line by line."""
    os.setsid()
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), sys.stdout.fileno())
        os.dup2(log.fileno(), sys.stderr.fileno())
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [name]
    runpy.run_module(name, run_name="__main__", alter_sys=True)


@atexit.register
def _kill_forked_left_running() -> None:
    """A forked service still running when its test process exits goes with it (multiprocessing
    would wait for it, forever for one paused by SIGSTOP)."""
    for process in multiprocessing.active_children():
        process.kill()


def alive(pid: int) -> bool:
    """The process exists and has not exited; collected first if it is our child."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
