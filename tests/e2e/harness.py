"""End-to-end harness: runs the real `callflow` binary on loopback and records its webhooks.

Used by the pytest fixtures in conftest.py and meant to be reused by later suites (SIPp, RapidPro
simulator). Every wait here is bounded; every process and socket it opens is closed by `stop()`.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]

# Known root credentials for tests (AC + 32 hex, token 32 hex).
ROOT_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
ROOT_AUTH_TOKEN = "fedcba9876543210" * 2
# The number the `from_number` fixture gives the root account.
DEFAULT_FROM = "+15005550006"

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
BUILD_TIMEOUT_S = 20 * 60.0
HTTP_TIMEOUT_S = 10.0

_binary_lock = threading.Lock()
_binary_path: Optional[Path] = None


class HarnessError(RuntimeError):
    """The harness could not build, start or reach the server."""


def callflow_binary() -> Path:
    """Path of the `callflow` binary: `$CALLFLOW_BIN`, else built once per process with cargo."""
    global _binary_path
    with _binary_lock:
        if _binary_path is not None:
            return _binary_path
        env_bin = os.environ.get("CALLFLOW_BIN")
        if env_bin:
            path = Path(env_bin).resolve()
            if not path.is_file() or not os.access(path, os.X_OK):
                raise HarnessError(f"CALLFLOW_BIN={env_bin} is not an executable file")
            _binary_path = path
            return path
        cmd = ["cargo", "build", "-p", "callflow-server"]
        try:
            proc = subprocess.run(
                cmd,
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT_S,
            )
        except FileNotFoundError as exc:
            raise HarnessError("cargo not found on PATH; install Rust or set CALLFLOW_BIN") from exc
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(f"`{' '.join(cmd)}` took more than {BUILD_TIMEOUT_S:.0f} s") from exc
        if proc.returncode != 0:
            raise HarnessError(
                f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{_tail(proc.stderr, 60)}"
            )
        path = REPO_ROOT / "target" / "debug" / "callflow"
        if not path.is_file():
            raise HarnessError(f"cargo build succeeded but {path} does not exist")
        _binary_path = path
        return path


# Ports handed out in this process; never handed out twice, so a stopped receiver's port stays
# its own while it is down.
_reserved_ports: set = set()
_ports_lock = threading.Lock()


def free_port(udp_too: bool = False) -> int:
    """A loopback port that is free now (bound to 0, then released); optionally free for UDP too."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
        if udp_too:
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        with _ports_lock:
            if port in _reserved_ports:
                continue
            _reserved_ports.add(port)
        return port
    raise HarnessError("could not find a free loopback port")


def free_udp_range(count: int) -> int:
    """An even loopback port whose next `count - 1` ports are free for UDP now too (SIPp's media
    takes its -mp port and the ones after it: audio, RTCP, video)."""
    for _ in range(100):
        base = free_port(udp_too=True)
        base -= base % 2
        socks = []
        try:
            for p in range(base, base + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        with _ports_lock:
            _reserved_ports.update(range(base, base + count))
        return base
    raise HarnessError(f"could not find {count} free consecutive loopback ports")


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05):
    """Poll `predicate` until it returns a truthy value (returned) or `timeout` s pass (None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


class CallflowServer:
    """One `callflow serve` process on loopback ports, with its own data dir and log files.

    Each start writes `callflow-run<N>.log` (stdout and stderr) in the data dir, so a test can tell
    what one run printed from what an earlier one did. With `config_toml` (settable until
    `start()`), each start writes it to `callflow.toml` in the data dir and passes `--config` with
    that path.
    """

    def __init__(
        self,
        binary: Optional[Path] = None,
        data_dir: Optional[Path] = None,
        env: Optional[dict] = None,
        root_credentials: bool = True,
        account_sid: str = ROOT_ACCOUNT_SID,
        auth_token: str = ROOT_AUTH_TOKEN,
        config_toml: Optional[str] = None,
    ):
        self.binary = Path(binary) if binary else callflow_binary()
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="callflow-e2e-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        self.sip_port = free_port(udp_too=True)
        self.extra_env = dict(env or {})
        self.config_toml = config_toml
        # With root_credentials=False the server generates its own and prints them once.
        self.root_credentials = root_credentials
        self.account_sid = account_sid if root_credentials else None
        self.auth_token = auth_token if root_credentials else None
        self.proc: Optional[subprocess.Popen] = None
        self.runs = 0
        self._log_file = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def sip_addr(self) -> str:
        return f"127.0.0.1:{self.sip_port}"

    @property
    def config_path(self) -> Path:
        """Where `config_toml` is written (only when it is set)."""
        return self.data_dir / "callflow.toml"

    @property
    def log_path(self) -> Path:
        """Log of the current (or last) run."""
        return self.data_dir / f"callflow-run{self.runs}.log"

    def command(self) -> list:
        cmd = [
            str(self.binary),
            "serve",
            "--http",
            f"127.0.0.1:{self.http_port}",
            "--sip",
            self.sip_addr,
            "--data",
            str(self.data_dir),
        ]
        if self.config_toml is not None:
            cmd += ["--config", str(self.config_path)]
        return cmd

    def environment(self) -> dict:
        # Hermetic: no CALLFLOW_* setting leaks in from the caller's shell.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALLFLOW_")}
        env.setdefault("RUST_BACKTRACE", "1")
        env["CALLFLOW_WEBHOOK_ALLOW_PRIVATE"] = "true"
        if self.root_credentials:
            env["CALLFLOW_ROOT_ACCOUNT_SID"] = self.account_sid
            env["CALLFLOW_ROOT_AUTH_TOKEN"] = self.auth_token
        env.update(self.extra_env)
        return env

    def start(self) -> "CallflowServer":
        if self.running:
            raise HarnessError("server already running")
        self.runs += 1
        if self.config_toml is not None:
            self.config_path.write_text(self.config_toml)
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.data_dir,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        last_error = "no attempt"
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise HarnessError(
                    f"callflow exited with {code} during startup; log tail:\n{self.log_tail()}"
                )
            try:
                resp = requests.get(f"{self.base_url}/health", timeout=1.0)
                if resp.status_code == 200:
                    return
                last_error = f"GET /health -> {resp.status_code}"
            except requests.RequestException as exc:
                last_error = str(exc)
            time.sleep(0.05)
        raise HarnessError(
            f"callflow not healthy after {STARTUP_TIMEOUT_S:.0f} s ({last_error}); "
            f"log tail:\n{self.log_tail()}"
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> Optional[int]:
        """SIGTERM, wait (bounded), then SIGKILL. Returns the exit code, None if never started."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL now: a crash, with no draining and nothing flushed."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self, env: Optional[dict] = None) -> "CallflowServer":
        """Stop and start again on the same ports and data dir; `env` adds to the extra env."""
        self.stop()
        if env:
            self.extra_env.update(env)
        return self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "CallflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    # -- logs --------------------------------------------------------------------------------

    def log_text(self, run: Optional[int] = None) -> str:
        path = self.data_dir / f"callflow-run{run or self.runs}.log"
        if self._log_file is not None:
            self._log_file.flush()
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_text(), lines)

    # -- clients -----------------------------------------------------------------------------

    def client(self, account_sid: Optional[str] = None, auth_token: Optional[str] = None):
        """A `twilio.rest.Client` whose `api` domain points at this server."""
        from twilio.http.http_client import TwilioHttpClient
        from twilio.rest import Client

        sid = account_sid or self.account_sid
        token = auth_token or self.auth_token
        if not sid or not token:
            raise HarnessError("no credentials known for this server; pass them explicitly")
        client = Client(sid, token, http_client=TwilioHttpClient(timeout=HTTP_TIMEOUT_S))
        # Domain.absolute_url() joins base_url and the resource URI (twilio 9.x), and
        # ClientBase.get_hostname() leaves the URL alone when no edge/region is set.
        client.api.base_url = self.base_url
        return client

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def api_url(self, path: str, account_sid: Optional[str] = None) -> str:
        """URL under /2010-04-01/Accounts/{sid}/, e.g. api_url('Calls.json')."""
        sid = account_sid or self.account_sid
        return f"{self.base_url}/2010-04-01/Accounts/{sid}/{path.lstrip('/')}"

    def request(self, method: str, path_or_url: str, auth=True, **kwargs) -> requests.Response:
        """Raw HTTP request; `auth=True` uses the root credentials, a tuple others, None none."""
        url = path_or_url if path_or_url.startswith("http") else self.url(path_or_url)
        if auth is True:
            auth = (self.account_sid, self.auth_token)
        kwargs.setdefault("timeout", HTTP_TIMEOUT_S)
        return requests.request(method, url, auth=auth or None, **kwargs)


@dataclass
class ReceivedRequest:
    method: str
    path: str  # request target as received: path plus query string
    headers: dict  # header names lower-cased
    body: bytes
    params: list = field(default_factory=list)  # form params (query for GET, body for POST)
    received_at: float = 0.0
    host: str = ""

    @property
    def form(self) -> dict:
        """Params as a dict (last value wins), as RequestValidator expects."""
        return dict(self.params)

    @property
    def query(self) -> dict:
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query, True))

    @property
    def url(self) -> str:
        """Full URL as the sender requested it (Host header + request target)."""
        return f"http://{self.host}{self.path}"

    @property
    def signature(self) -> Optional[str]:
        return self.headers.get("x-twilio-signature")


def serve(server):
    """Runs an http.server on a daemon thread (polling for shutdown every 50 ms); returns the
    server and its thread for `shut_down`."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server, thread


def shut_down(server, thread) -> None:
    """Stops what `serve` started (nothing if `server` is None)."""
    if server is None:
        return
    server.shutdown()
    server.server_close()
    if thread is not None:
        thread.join(timeout=5)


class WebhookReceiver:
    """Threaded HTTP server on a fixed loopback port that records every request.

    Answers with `status` and `body` (default 200 with an empty TwiML document). `stop()` releases
    the port so senders get "connection refused"; `start()` binds the same port again.
    """

    def __init__(self, port: Optional[int] = None):
        self.port = port or free_port()
        self.status = 200
        self.body = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'
        self.content_type = "text/xml"
        # Bodies by request path (without query); other paths get `body`.
        self.routes: dict[str, bytes] = {}
        self._requests: list[ReceivedRequest] = []
        self._lock = threading.Lock()
        self._server: Optional[http.server.ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> "WebhookReceiver":
        if self._server is not None:
            return self
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                query = urllib.parse.urlsplit(self.path).query
                ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                if ctype == "application/x-www-form-urlencoded":
                    params = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), True)
                else:
                    params = urllib.parse.parse_qsl(query, True)
                receiver._record(
                    ReceivedRequest(
                        method=self.command,
                        path=self.path,
                        headers={k.lower(): v for k, v in self.headers.items()},
                        body=body,
                        params=params,
                        received_at=time.monotonic(),
                        host=self.headers.get("Host") or f"127.0.0.1:{receiver.port}",
                    )
                )
                route = receiver.routes.get(urllib.parse.urlsplit(self.path).path)
                payload = route if route is not None else receiver.body
                if self.command == "HEAD":
                    payload = b""
                self.send_response(receiver.status)
                self.send_header("Content-Type", receiver.content_type)
                self.send_header("Content-Length", str(len(payload)))
                # No keep-alive: after stop() a sender must not reach us over a pooled connection.
                self.send_header("Connection", "close")
                self.close_connection = True
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle

            def log_message(self, format, *args):  # keep pytest output quiet
                pass

        class Server(http.server.ThreadingHTTPServer):
            allow_reuse_address = True  # rebind the same port right after stop()
            daemon_threads = True

        self._server, self._thread = serve(Server(("127.0.0.1", self.port), Handler))
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        shut_down(server, self._thread)
        self._thread = None

    def _record(self, req: ReceivedRequest) -> None:
        with self._lock:
            self._requests.append(req)

    @property
    def requests(self) -> list:
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def matching(self, predicate: Callable[[ReceivedRequest], bool]) -> list:
        return [r for r in self.requests if predicate(r)]

    def wait_for(
        self,
        predicate: Callable[[list], object],
        timeout: float = 10.0,
        interval: float = 0.05,
    ):
        """Poll until `predicate(requests)` is truthy; returns its value, or None on timeout."""
        return wait_until(lambda: predicate(self.requests), timeout, interval)

    def wait_for_count(
        self, count: int, where: Optional[Callable[[ReceivedRequest], bool]] = None, timeout=10.0
    ) -> list:
        """Wait until at least `count` requests (matching `where`) arrived; returns them all."""
        where = where or (lambda r: True)
        wait_until(lambda: len(self.matching(where)) >= count, timeout)
        return self.matching(where)

    def __enter__(self) -> "WebhookReceiver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def create_database(server_url: str, prefix: str) -> str:
    """A new, empty database on the PostgreSQL server `server_url` (`postgres://…/postgres`),
    named `prefix` and a random suffix; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    subprocess.run(
        ["psql", server_url, "-q", "-v", "ON_ERROR_STOP=1", "-c", f"CREATE DATABASE {name}"],
        check=True,
        timeout=30,
    )
    return f"{server_url.rsplit('/', 1)[0]}/{name}"


def is_sid(value: Optional[str], prefix: str) -> bool:
    """Twilio SID shape: two-letter prefix plus 32 lower-case hex digits."""
    return isinstance(value, str) and re.fullmatch(prefix + "[0-9a-f]{32}", value) is not None
