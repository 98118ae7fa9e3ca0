"""SIPp for the end-to-end tests: run a scenario of tests/sipp/ as a client, or keep one running as
a server, and read back what SIPp counted.

`run_sipp()` runs SIPp in the foreground (a uac: SIPp calls callflow) and returns a `SippResult`;
`SippServer` runs it in the background (a uas: callflow's outbound calls reach it) until `wait()` or
`stop()`. Every run gets its own folder for SIPp's files (statistics CSV, errors, `<log>` lines,
message trace, final screen) and is bounded: SIPp's own `-timeout` plus a hard timeout here, after
which the whole process group is killed. All sockets are on loopback (`-i`, `-ci`).
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from harness import REPO_ROOT, HarnessError, _tail, free_port, free_udp_range

SCENARIO_DIR = REPO_ROOT / "tests" / "sipp"
SIPP = "sipp"

# Seconds added to SIPp's own -timeout before the process is killed from here.
KILL_GRACE_S = 15.0
STOP_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 10.0

# SIPp's exit codes (sipp(1)).
EXIT_CODES = {
    0: "all calls were successful",
    1: "at least one call failed",
    97: "exit on an internal command (or the global timeout without -timeout_error)",
    99: "normal exit without calls processed",
    255: "fatal error (the global timeout with -timeout_error, a bad scenario, ...)",
    254: "fatal error binding a socket",
}


def sipp_path() -> Optional[str]:
    return shutil.which(SIPP)


def scenario_path(scenario) -> Path:
    """A scenario file: a path, or a name in tests/sipp/ (with or without `.xml`)."""
    path = Path(scenario)
    if path.is_file():
        return path.resolve()
    name = path.name if path.suffix == ".xml" else f"{path.name}.xml"
    path = SCENARIO_DIR / name
    if not path.is_file():
        raise HarnessError(f"no SIPp scenario {scenario!r} (looked in {SCENARIO_DIR})")
    return path


@dataclass
class SippResult:
    """What one SIPp run did, from its exit code, statistics CSV and trace files."""

    scenario: str
    command: list
    workdir: Path
    returncode: Optional[int]  # None: still running when killed from here
    killed: bool = False
    successful: Optional[int] = None  # SuccessfulCall(C); None if SIPp wrote no statistics
    failed: Optional[int] = None  # FailedCall(C)
    retransmissions: Optional[int] = None  # Retransmissions(C)
    stats: dict = field(default_factory=dict)  # the last row of the statistics CSV
    stdout: str = ""
    stderr: str = ""
    errors: str = ""  # -trace_err: unexpected messages, failed regexps, timeouts
    logs: str = ""  # -trace_logs: the scenario's <log> lines
    messages: str = ""  # -trace_msg: every message sent and received

    @property
    def ok(self) -> bool:
        """SIPp exited 0 and counted at least one successful call and no failed one."""
        return (
            self.returncode == 0
            and not self.killed
            and (self.successful or 0) >= 1
            and self.failed == 0
        )

    def counts(self) -> tuple:
        """(successful, failed), for `assert result.counts() == (1, 0), result.describe()`."""
        return (self.successful, self.failed)

    def describe(self, messages_lines: int = 80) -> str:
        """A report for assertion messages: exit code, counts, SIPp's own logs."""
        code = self.returncode
        meaning = "killed after the hard timeout" if self.killed else EXIT_CODES.get(code, "?")
        parts = [
            f"SIPp {Path(self.scenario).name}: exit {code} ({meaning}); "
            f"successful={self.successful} failed={self.failed} "
            f"retransmissions={self.retransmissions}; files in {self.workdir}",
            "command: " + " ".join(str(c) for c in self.command),
        ]
        for title, text, lines in (
            ("errors", self.errors, 40),
            ("log", self.logs, 40),
            ("stderr", self.stderr, 20),
            ("messages", self.messages, messages_lines),
        ):
            if text.strip():
                parts.append(f"--- SIPp {title} (tail) ---\n{_tail(text, lines)}")
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.describe()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _int(value) -> Optional[int]:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _last_stats_row(path: Path) -> dict:
    """The last row of SIPp's `-trace_stat` CSV (`;`-separated, a header row, one row per dump)."""
    text = _read(path)
    rows = list(csv.reader(text.splitlines(), delimiter=";"))
    if len(rows) < 2:
        return {}
    header = rows[0]
    for row in reversed(rows[1:]):
        if len(row) >= len(header) - 1:
            return {k: v for k, v in zip(header, row)}
    return {}


def _screen_counts(text: str) -> tuple:
    """(successful, failed) from SIPp's final statistics screen (fallback when no CSV row)."""
    successful = failed = None
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) == 3 and cells[0] == "Successful call":
            successful = _int(cells[2])
        elif len(cells) == 3 and cells[0] == "Failed call":
            failed = _int(cells[2])
    return successful, failed


class _SippRun:
    """Command line and files of one SIPp process."""

    def __init__(
        self,
        scenario,
        remote: Optional[str],
        *,
        local_ip: str,
        port: Optional[int],
        calls: int,
        rate: Optional[float],
        timeout_s: float,
        extra: Iterable = (),
        service: Optional[str] = None,
        keys: Optional[dict] = None,
        trace_msg: bool = True,
        workdir: Optional[Path] = None,
    ):
        binary = sipp_path()
        if binary is None:
            raise HarnessError(
                "sipp is not installed (Debian package sip-tester; tests/run installs it)"
            )
        self.scenario = scenario_path(scenario)
        self.port = port or free_port(udp_too=True)
        self.media_port = free_udp_range(4)
        self.timeout_s = float(timeout_s)
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="sipp-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        w = self.workdir
        cmd = [binary]
        if remote:
            cmd.append(remote)
        cmd += [
            "-sf", str(self.scenario),
            "-i", local_ip,
            "-p", str(self.port),
            "-mp", str(self.media_port),
            "-ci", "127.0.0.1",
            "-m", str(calls),
            "-timeout", f"{max(1, int(round(self.timeout_s)))}s",
            "-timeout_error",
            "-nostdin",
            "-trace_stat", "-stf", str(w / "stats.csv"), "-fd", "1",
            "-trace_err", "-error_file", str(w / "errors.log"),
            "-trace_logs", "-log_file", str(w / "logs.log"),
            "-trace_screen", "-screen_file", str(w / "screen.log"),
        ]  # fmt: skip
        if trace_msg:
            cmd += ["-trace_msg", "-message_file", str(w / "messages.log")]
        if rate is not None:
            cmd += ["-r", str(rate)]
        if service is not None:
            cmd += ["-s", service]
        for key, value in (keys or {}).items():
            cmd += ["-key", str(key), str(value)]
        cmd += [str(a) for a in extra]
        self.command = cmd
        self.proc: Optional[subprocess.Popen] = None
        self.killed = False
        self._stdout = None
        self._stderr = None

    def start(self) -> None:
        self._stdout = open(self.workdir / "stdout.log", "wb")
        self._stderr = open(self.workdir / "stderr.log", "wb")
        self.proc = subprocess.Popen(
            self.command,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=self._stderr,
            start_new_session=True,
        )

    def _signal(self, sig) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(self, timeout: float) -> bool:
        """Wait (bounded) for SIPp to exit; False if it is still running."""
        try:
            self.proc.wait(timeout=max(0.0, timeout))
            return True
        except subprocess.TimeoutExpired:
            return False

    def kill(self, graceful: bool) -> None:
        """End SIPp: SIGINT first when graceful (SIPp then writes its statistics), then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.killed = True
        if graceful:
            self._signal(signal.SIGINT)
            if self.wait(STOP_TIMEOUT_S):
                return
        self._signal(signal.SIGKILL)
        self.wait(STOP_TIMEOUT_S)

    def result(self) -> SippResult:
        for f in (self._stdout, self._stderr):
            if f is not None and not f.closed:
                f.flush()
        w = self.workdir
        stats = _last_stats_row(w / "stats.csv")
        screen = _read(w / "screen.log")
        successful = _int(stats.get("SuccessfulCall(C)"))
        failed = _int(stats.get("FailedCall(C)"))
        if successful is None or failed is None:
            s, f = _screen_counts(screen)
            successful = successful if successful is not None else s
            failed = failed if failed is not None else f
        return SippResult(
            scenario=str(self.scenario),
            command=self.command,
            workdir=w,
            returncode=self.proc.poll() if self.proc else None,
            killed=self.killed,
            successful=successful,
            failed=failed,
            retransmissions=_int(stats.get("Retransmissions(C)")),
            stats=stats,
            stdout=_tail(_read(w / "stdout.log"), 40),
            stderr=_read(w / "stderr.log"),
            errors=_read(w / "errors.log"),
            logs=_read(w / "logs.log"),
            messages=_read(w / "messages.log"),
        )

    def close(self) -> None:
        for f in (self._stdout, self._stderr):
            if f is not None and not f.closed:
                f.close()


def run_sipp(
    scenario,
    remote: str,
    *,
    local_ip: str = "127.0.0.1",
    port: Optional[int] = None,
    calls: int = 1,
    rate: Optional[float] = None,
    timeout_s: float = 20.0,
    extra: Iterable = (),
    service: Optional[str] = None,
    keys: Optional[dict] = None,
    trace_msg: bool = True,
    workdir: Optional[Path] = None,
) -> SippResult:
    """Run `scenario` (a tests/sipp/ name or a path) against `remote` ("host:port") until SIPp has
    processed `calls` calls, at most `timeout_s` seconds (then SIPp fails the run itself; a SIPp
    that is still alive KILL_GRACE_S later is killed). `service` is the Request-URI user (-s),
    `keys` become `-key name value`, `extra` is appended to the command line (e.g. ["-d", "1000"]).
    """
    run = _SippRun(
        scenario,
        remote,
        local_ip=local_ip,
        port=port,
        calls=calls,
        rate=rate,
        timeout_s=timeout_s,
        extra=extra,
        service=service,
        keys=keys,
        trace_msg=trace_msg,
        workdir=workdir,
    )
    run.start()
    try:
        if not run.wait(run.timeout_s + KILL_GRACE_S):
            run.kill(graceful=True)
        return run.result()
    finally:
        run.kill(graceful=False)
        run.close()


class SippServer:
    """SIPp as a uas in the background on `local_ip:port` (a free UDP port unless given), answering
    whoever sends to it, for `calls` calls or `timeout_s` seconds.

        with SippServer("uas_busy") as far_end:
            ... # point a trunk at far_end.port, place a call
            result = far_end.wait(20)
        assert result.counts() == (1, 0), result.describe()
    """

    def __init__(
        self,
        scenario,
        *,
        local_ip: str = "127.0.0.1",
        port: Optional[int] = None,
        calls: int = 1,
        timeout_s: float = 60.0,
        extra: Iterable = (),
        keys: Optional[dict] = None,
        trace_msg: bool = True,
        workdir: Optional[Path] = None,
    ):
        self._run = _SippRun(
            scenario,
            None,
            local_ip=local_ip,
            port=port,
            calls=calls,
            rate=None,
            timeout_s=timeout_s,
            extra=extra,
            keys=keys,
            trace_msg=trace_msg,
            workdir=workdir,
        )
        self.local_ip = local_ip
        self.port = self._run.port
        self._result: Optional[SippResult] = None

    @property
    def addr(self) -> str:
        return f"{self.local_ip}:{self.port}"

    @property
    def workdir(self) -> Path:
        return self._run.workdir

    @property
    def running(self) -> bool:
        proc = self._run.proc
        return proc is not None and proc.poll() is None

    def start(self) -> "SippServer":
        """Start SIPp and wait (bounded) until its UDP port is bound."""
        if self._run.proc is not None:
            raise HarnessError("SippServer already started")
        self._run.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self._run.proc.poll() is not None:
                result = self._finish(graceful=False)
                raise HarnessError(f"SIPp exited during startup\n{result.describe()}")
            if self._port_bound():
                return self
            if time.monotonic() >= deadline:
                result = self._finish(graceful=False)
                raise HarnessError(
                    f"SIPp did not bind {self.addr} within {READY_TIMEOUT_S:.0f} s\n"
                    f"{result.describe()}"
                )
            time.sleep(0.05)

    def _port_bound(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((self.local_ip, self.port))
            except OSError:
                return True
        return False

    def wait(self, timeout: float) -> SippResult:
        """Wait up to `timeout` s for SIPp to finish its calls; then stop it (counted as not ok)."""
        if self._result is not None:
            return self._result
        if self._run.proc is None:
            raise HarnessError("SippServer not started")
        if not self._run.wait(timeout):
            return self._finish(graceful=True)
        return self._finish(graceful=False)

    def stop(self) -> Optional[SippResult]:
        """Stop SIPp now (SIGINT, then SIGKILL); the result, None if never started."""
        if self._result is not None:
            return self._result
        if self._run.proc is None:
            return None
        return self._finish(graceful=True)

    def _finish(self, graceful: bool) -> SippResult:
        self._run.kill(graceful=graceful)
        self._result = self._run.result()
        self._run.close()
        return self._result

    @property
    def result(self) -> Optional[SippResult]:
        return self._result

    def __enter__(self) -> "SippServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
