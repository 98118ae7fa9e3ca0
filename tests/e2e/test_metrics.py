"""`/metrics` behind a bearer token: `[metrics] token` in the TOML file, `CALLFLOW_METRICS_TOKEN`
over it, open (and said so in the log) when neither is set; the token never printed or logged."""

import subprocess
import urllib.error
import urllib.request

FILE_TOKEN = "file-scrape-s3cret"
ENV_TOKEN = "env-scrape-s3cret"


def scrape(server, authorization=None):
    """(status, headers, body) of GET /metrics, with urllib so no client adds anything."""
    req = urllib.request.Request(f"{server.base_url}/metrics")
    if authorization is not None:
        req.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read().decode()


def assert_refused(server, authorization):
    status, headers, body = scrape(server, authorization)
    assert status == 401, body
    assert headers["WWW-Authenticate"] == 'Bearer realm="callflow metrics"'
    assert "callflow_http_requests_total" not in body, body


def test_open_without_a_token_and_says_so(callflow):
    status, _, body = scrape(callflow)
    assert status == 200, body
    assert "/metrics is open" in callflow.log_text()


def test_a_token_from_the_file_then_the_environment(callflow_factory):
    server = callflow_factory(start=False)
    server.config_toml = f'[metrics]\ntoken = "{FILE_TOKEN}"\n'
    server.start()
    assert_refused(server, None)
    assert_refused(server, "Bearer wrong")
    assert_refused(server, f"Basic {FILE_TOKEN}")
    status, headers, body = scrape(server, f"Bearer {FILE_TOKEN}")
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain")
    # the refused scrapes above were counted, by route and status
    assert 'route="/metrics"' in body and 'status="401"' in body, body
    log = server.log_text()
    assert "/metrics is open" not in log
    assert FILE_TOKEN not in log

    # the environment beats the file
    server.restart(env={"CALLFLOW_METRICS_TOKEN": ENV_TOKEN})
    assert_refused(server, f"Bearer {FILE_TOKEN}")
    assert scrape(server, f"Bearer {ENV_TOKEN}")[0] == 200
    assert ENV_TOKEN not in server.log_text()


def test_callflow_config_prints_the_token_masked(callflow_bin, tmp_path):
    path = tmp_path / "callflow.toml"
    path.write_text(f'[metrics]\ntoken = "{FILE_TOKEN}"\n')
    out = subprocess.run(
        [str(callflow_bin), "config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert '[metrics]\ntoken = "***"' in out.stdout, out.stdout
    assert FILE_TOKEN not in out.stdout + out.stderr
