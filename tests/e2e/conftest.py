"""pytest fixtures for the end-to-end suite: a running `callflow`, Twilio clients, a webhook receiver."""

from __future__ import annotations

import pytest

from harness import DEFAULT_FROM, CallflowServer, WebhookReceiver, callflow_binary


@pytest.fixture(scope="session")
def callflow_bin():
    """The binary under test (`$CALLFLOW_BIN`, else `cargo build -p callflow-server`, once)."""
    return callflow_binary()


@pytest.fixture
def callflow_factory(request, callflow_bin, tmp_path_factory):
    """Start extra servers: `callflow_factory(env={...}, root_credentials=False, start=True)`.

    Every server is stopped at teardown, and its log tail is attached to a failing test's report.
    Data dirs live under pytest's tmp dir, so they survive for inspection.
    """
    servers = []
    request.node._callflow_servers = servers

    def make(env=None, root_credentials=True, start=True) -> CallflowServer:
        server = CallflowServer(
            binary=callflow_bin,
            data_dir=tmp_path_factory.mktemp("callflow"),
            env=env,
            root_credentials=root_credentials,
        )
        servers.append(server)
        if start:
            server.start()
        return server

    yield make
    errors = []
    for server in servers:
        try:
            server.stop()
        except Exception as exc:  # keep stopping the others
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def callflow(callflow_factory) -> CallflowServer:
    """A fresh running server with the known root credentials (see harness.ROOT_*)."""
    return callflow_factory()


@pytest.fixture
def root_client(callflow):
    return callflow.client()


@pytest.fixture
def receiver():
    rec = WebhookReceiver().start()
    yield rec
    rec.stop()


@pytest.fixture
def from_number(root_client) -> str:
    """An IncomingPhoneNumber of the root account, usable as a call's From."""
    root_client.incoming_phone_numbers.create(
        phone_number=DEFAULT_FROM, voice_url="http://127.0.0.1:9/voice"
    )
    return DEFAULT_FROM


@pytest.fixture
def make_subaccount(callflow, root_client):
    """`make_subaccount(name)` -> (account instance, twilio client with the subaccount's credentials)."""

    def make(friendly_name="e2e sub"):
        account = root_client.api.v2010.accounts.create(friendly_name=friendly_name)
        return account, callflow.client(account.sid, account.auth_token)

    return make


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for i, server in enumerate(getattr(item, "_callflow_servers", [])):
            tail = server.log_tail(80)
            if tail:
                report.sections.append(
                    (f"callflow[{i}] log tail ({server.log_path})", tail)
                )
