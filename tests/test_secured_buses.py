"""Scenarios against password-, token-, nkey- and TLS-protected brokers, started here on loopback.

The right credentials play clean; wrong ones, or a certificate from a CA the bus does not
trust, end within seconds with exit 3 and one line that says so; and a marker password, right
or wrong, appears in no byte that busmon prints or writes (terminal, log file, JSON, Markdown,
HTML, SVG screenshots, compare table).

Tansu 0.6.0 cannot switch its own TLS on, so TLS is a real terminator in front of it
(tests/tls_proxy.py); and it cannot hold a SCRAM user while authentication is on, so Kafka SASL
is tested with wrong credentials only (the settings reaching aiokafka are checked exactly in
test_secret_settings.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest
from cryptography.hazmat.primitives import serialization

from busmon.bus.secrets import SECRETS, redact_url
from tests.brokers import Broker
from tests.secured_brokers import Certs, make_certs, nats_secured, nkey_user, tansu_authenticated, tansu_tls
from tests.test_cli_robust import one_line, run_main

ROOT = Path(__file__).resolve().parents[1]
MARK = "mArKeR-s3cr3t"          # the password whose every byte must stay hidden
REFUSAL_S = 10.0                # "within a few seconds": a refusal is final, never retried

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def encrypted_client_key(certs: Certs) -> Path:
    """The client key, encrypted with MARK: a secret that is used and must work."""
    key = serialization.load_pem_private_key(certs.client_key.read_bytes(), None)
    path = certs.client_key.with_name("client-encrypted.key")
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(MARK.encode())))
    return path


@pytest.fixture(scope="module")
def nats_tls_password(certs: Certs) -> Iterator[Broker]:
    with nats_secured(certs, user="bob", password=MARK, tls=True) as broker:
        yield broker


@pytest.fixture(scope="module")
def kafka_mtls(certs: Certs) -> Iterator[Broker]:
    with tansu_tls(certs, verify_clients=True) as broker:
        yield broker


@pytest.fixture(scope="module")
def kafka_sasl() -> Iterator[Broker]:
    with tansu_authenticated() as broker:
        yield broker


@pytest.fixture(autouse=True)
def forget_secrets():
    SECRETS.clear()
    yield
    SECRETS.clear()


def scenario(tmp_path: Path, backend: str, url: str, name: str = "secured", shared: bool = False,
             **bus: object) -> Path:
    """A two-run ladder on ``backend`` with ``bus`` as its [bus.<backend>] table (or, when
    ``shared``, as [bus]: the settings of every backend compare plays). Thousands of envelopes,
    not hundreds: the retained-memory rule (>= 0.5 objects per envelope) must not be tripped by a
    few hundred objects of the dashboard drawing its screenshots on a busy machine."""
    lines = [f"{k} = {_toml(v)}" for k, v in bus.items()]
    options = ("[bus]\n" if shared else f"[bus.{backend}]\n") + "\n".join(lines)
    if backend == "nats-js" and not shared:
        options += '\nstorage = "memory"'
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(f"""\
        name = "{name}"
        backend = "{backend}"
        url = "{url}"

        [probes]
        settle_timeout_s = 5

        [defaults]
        keys = 20

        [[runs]]
        name = "low"
        messages = 2000

        [[runs]]
        name = "high"
        messages = 4000
        """) + options + "\n")
    return path


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, (str, Path)) else str(value)


def play(path: Path, *extra: str) -> tuple[int, str, str, float]:
    started = time.monotonic()
    code, out, err = run_main(["play", str(path), "--headless", *extra])
    return code, out, err, time.monotonic() - started


def refused_line(out: str, err: str) -> str:
    """The one 'failed run' line of a refused ladder (its first run), and nothing played after."""
    failed = [ln for ln in out.splitlines() if ln.startswith("failed run ")]
    assert len(failed) == 1, out + err
    assert "1 more run not played: each would be refused the same way" in out, out
    assert "Traceback" not in out + err
    return failed[0]


# -- NATS ------------------------------------------------------------------------------

@pytest.mark.nats
@pytest.mark.parametrize("backend", ["nats", "nats-js"])
def test_nats_password_over_tls_plays_clean(tmp_path, certs, nats_tls_password, backend):
    url = nats_tls_password.url.replace("nats://", "nats+js://" if backend == "nats-js" else "nats://")
    path = scenario(tmp_path, backend, url.replace("://", "://bob@"), password_env="BUSMON_T_PW",
                    ca_file=certs.ca_file)
    os.environ["BUSMON_T_PW"] = MARK
    try:
        code, out, err, _ = play(path)
    finally:
        del os.environ["BUSMON_T_PW"]
    assert code == 0, out + err
    assert "clean" in out and "failed" not in out


@pytest.mark.nats
def test_nats_wrong_password_is_one_line_within_seconds_exit_3(tmp_path, certs, nats_tls_password):
    url = nats_tls_password.url.replace("nats://", "nats://bob:not-the-password@")
    code, out, err, took = play(scenario(tmp_path, "nats", url, ca_file=certs.ca_file))
    assert code == 3 and took < REFUSAL_S, (code, took, out + err)
    host = nats_tls_password.url.split("://")[1]
    assert refused_line(out, err) == f"failed run low: create: nats {host}: authentication failed (user bob)"


@pytest.mark.nats
def test_nats_untrusted_server_certificate_is_one_line_exit_3(tmp_path, certs, nats_tls_password):
    url = nats_tls_password.url.replace("nats://", f"nats://bob:{MARK}@")
    code, out, err, took = play(scenario(tmp_path, "nats", url, ca_file=certs.other_ca_file))
    assert code == 3 and took < REFUSAL_S, (code, took, out + err)
    line = refused_line(out, err)
    assert "TLS: the server's certificate is not trusted (" in line, line


@pytest.mark.nats
def test_nats_token_right_and_wrong(tmp_path, certs):
    with nats_secured(None, token=MARK) as broker:
        host = broker.url.split("://")[1]
        code, out, err, _ = play(scenario(tmp_path, "nats", f"nats://{MARK}@{host}", name="right"))
        assert code == 0, out + err
        code, out, err, took = play(scenario(tmp_path, "nats", broker.url, name="wrong", token="a-wrong-token"))
        assert code == 3 and took < REFUSAL_S
        assert refused_line(out, err).endswith(f"nats {host}: authentication failed (token)")


@pytest.mark.nats
def test_nats_nkey_seed_right_and_wrong(tmp_path):
    public, seed = nkey_user(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_seed = nkey_user(tmp_path / "other")  # a key the server does not know
    with nats_secured(None, nkey_public=public) as broker:
        code, out, err, _ = play(scenario(tmp_path, "nats-js", broker.url.replace("nats://", "nats+js://"),
                                          name="right", nkey_seed_file=seed))
        assert code == 0, out + err
        code, out, err, took = play(scenario(tmp_path, "nats", broker.url, name="wrong",
                                             nkey_seed_file=other_seed))
        assert code == 3 and took < REFUSAL_S
        assert refused_line(out, err).endswith(f"authentication failed (nkey seed file {other_seed.name})")


@pytest.mark.nats
def test_nats_mutual_tls_needs_the_client_certificate(tmp_path, certs):
    with nats_secured(certs, tls=True, verify_clients=True) as broker:
        code, out, err, _ = play(scenario(tmp_path, "nats", broker.url, name="right", ca_file=certs.ca_file,
                                          cert_file=certs.client_cert, key_file=certs.client_key))
        assert code == 0, out + err
        code, out, err, took = play(scenario(tmp_path, "nats", broker.url, name="wrong", ca_file=certs.ca_file))
        assert code == 3 and took < REFUSAL_S, out + err
        assert "failed run low: create: nats" in out and "Traceback" not in out + err


@pytest.mark.nats
def test_tls_asked_of_a_plaintext_server_is_refused(tmp_path, nats_broker):
    code, out, err, took = play(scenario(tmp_path, "nats", nats_broker.url, tls=True))
    assert code == 3 and took < REFUSAL_S
    assert refused_line(out, err).endswith("TLS was asked for, but the server does not offer it")


# -- Kafka -----------------------------------------------------------------------------

@pytest.mark.kafka
def test_kafka_mutual_tls_with_an_encrypted_key_plays_clean(tmp_path, certs, kafka_mtls, encrypted_client_key,
                                                            monkeypatch):
    monkeypatch.setenv("BUSMON_T_KEY_PW", MARK)
    path = scenario(tmp_path, "kafka", kafka_mtls.url, ca_file=certs.ca_file, cert_file=certs.client_cert,
                    key_file=encrypted_client_key, key_password_env="BUSMON_T_KEY_PW")
    code, out, err, _ = play(path)
    assert code == 0, out + err
    assert "clean" in out and "failed" not in out


@pytest.mark.kafka
def test_kafka_untrusted_certificate_is_one_line_within_seconds_exit_3(tmp_path, certs, kafka_mtls):
    code, out, err, took = play(scenario(tmp_path, "kafka", kafka_mtls.url, ca_file=certs.other_ca_file))
    assert code == 3 and took < REFUSAL_S, (took, out + err)
    host = kafka_mtls.url.split("://")[1]
    # OpenSSL's words depend on whether the server sends its CA along with its certificate
    assert re.fullmatch(rf"failed run low: create: kafka {host}: TLS: the server's certificate is not trusted "
                        r"\((unable to get local issuer certificate|self-signed certificate in certificate chain)\)",
                        refused_line(out, err))


@pytest.mark.kafka
def test_kafka_without_the_client_certificate_is_refused(tmp_path, certs, kafka_mtls):
    code, out, err, took = play(scenario(tmp_path, "kafka", kafka_mtls.url, ca_file=certs.ca_file))
    assert code == 3 and took < REFUSAL_S, (took, out + err)
    assert refused_line(out, err).endswith("the broker closed the connection after the TLS handshake: it likely "
                                           "requires a client certificate (cert_file and key_file)")


@pytest.mark.kafka
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"])
def test_kafka_wrong_sasl_credentials_are_one_line_within_seconds_exit_3(tmp_path, kafka_sasl, mechanism):
    host = kafka_sasl.url.split("://")[1]
    path = scenario(tmp_path, "kafka", f"kafka://bob:{MARK}@{host}", sasl_mechanism=mechanism)
    code, out, err, took = play(path)
    assert code == 3 and took < REFUSAL_S, (took, out + err)
    line = refused_line(out, err)
    if mechanism == "PLAIN":  # Tansu hangs up on PLAIN rather than answer the exchange
        assert line == (f"failed run low: create: kafka {host}: authentication failed (PLAIN, user bob: the broker "
                        "hung up; wrong credentials, or a mechanism it does not offer)")
    else:
        assert line == f"failed run low: create: kafka {host}: authentication failed ({mechanism}, user bob)"


KAFKA_MISMATCHES = {  # what would otherwise read as a dead broker, or "Unable to bootstrap"
    "TLS to a plaintext listener": ("kafka_broker", {"tls": True},
                                    "TLS was asked for (SSL), but the broker answers in plaintext"),
    "plaintext to a TLS listener": ("kafka_mtls", {}, "the broker speaks TLS: set tls = true (or ca_file)"),
    "no credentials for SASL": ("kafka_sasl", {}, "the broker hung up on a request without credentials: "
                                                  "it wants SASL authentication"),
}


@pytest.mark.kafka
@pytest.mark.parametrize("broker, options, says", KAFKA_MISMATCHES.values(), ids=KAFKA_MISMATCHES.keys())
def test_kafka_settings_that_do_not_match_the_listener_are_said_so(request, tmp_path, broker, options, says):
    url = request.getfixturevalue(broker).url
    code, out, err, took = play(scenario(tmp_path, "kafka", url, **options))
    assert code == 3 and took < REFUSAL_S, (took, out + err)
    line = refused_line(out, err)
    assert says in line and f"kafka {url.split('://')[1]}" in line, line


# -- no secret in any output -----------------------------------------------------------

def busmon(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real command in its own process: every byte it prints, including at exit."""
    return subprocess.run([sys.executable, "-m", "busmon", *args], cwd=cwd, capture_output=True, timeout=150,
                          stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def unclean(report: Path) -> str:
    """What made a run other than clean, shortly (for a failing assertion's message)."""
    runs = json.loads(report.read_text())["runs"] if report.exists() else []
    return json.dumps([(r["name"], r["verdict"], r["error"], r["memory"].get("retained"),
                        [(x["kind"], x["name"], x["state"], x.get("component"), (x.get("stack") or [])[-2:])
                         for x in r["leftovers"] if x["state"] != "exited"]) for r in runs if r["verdict"] != "clean"])


def assert_no_marker(proc: subprocess.CompletedProcess, folder: Path) -> list[Path]:
    written = [p for p in folder.rglob("*") if p.is_file() and p.suffix != ".toml"]
    for where, data in [("stdout", proc.stdout), ("stderr", proc.stderr)] + [(str(p), p.read_bytes())
                                                                             for p in written]:
        assert MARK.encode() not in data, f"the marker password is in {where}"
        assert b"Traceback" not in data, f"a traceback in {where}"
    return written


@pytest.mark.kafka
@pytest.mark.nats
def test_the_marker_password_is_in_no_byte_busmon_writes_or_prints(tmp_path, certs, nats_tls_password,
                                                                    kafka_mtls, kafka_sasl, encrypted_client_key):
    nats_host = nats_tls_password.url.split("://")[1]
    kafka_host, sasl_host = kafka_mtls.url.split("://")[1], kafka_sasl.url.split("://")[1]
    cases = {  # name: (backend, url on the command line, [bus.<backend>] options, expected exit)
        "nats-right": ("nats", f"nats://bob:{MARK}@{nats_host}", {"ca_file": certs.ca_file}, 0),
        "nats-wrong": ("nats", f"nats://bob:x{MARK}@{nats_host}", {"ca_file": certs.ca_file}, 3),
        "js-right": ("nats-js", f"nats+js://bob:{MARK}@{nats_host}", {"ca_file": certs.ca_file}, 0),
        "js-wrong": ("nats-js", f"nats+js://bob:{MARK}x@{nats_host}", {"ca_file": certs.ca_file}, 3),
        "js-untrusted": ("nats-js", f"nats+js://bob:{MARK}@{nats_host}", {"ca_file": certs.other_ca_file}, 3),
        "kafka-right": ("kafka", f"kafka://{kafka_host}", {
            "ca_file": certs.ca_file, "cert_file": certs.client_cert, "key_file": encrypted_client_key,
            "key_password_env": "BUSMON_T_KEY_PW"}, 0),
        "kafka-wrong": ("kafka", f"kafka://bob:{MARK}@{sasl_host}", {"sasl_mechanism": "SCRAM-SHA-256"}, 3),
    }
    for name, (backend, url, options, expected) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        path = scenario(folder, backend, re.sub(r"//[^@/]*@", "//", url), **options)  # --url brings the secret
        proc = busmon(["play", str(path), "--headless", "--url", url, "--report", "r.json", "--report", "r.md",
                       "--report", "r.html", "--screenshots", "shots", "--log", "busmon.log"], folder,
                      env={"BUSMON_T_KEY_PW": MARK})
        assert proc.returncode == expected, (name, proc.stdout.decode()[-2000:], proc.stderr.decode()[-2000:],
                                             unclean(folder / "r.json"))
        written = assert_no_marker(proc, folder)
        assert {p.name for p in written} >= {"r.json", "r.md", "r.html", "busmon.log"}, (name, written)
        assert any(p.suffix == ".svg" for p in written), (name, written)
        run = json.loads((folder / "r.json").read_text())["runs"][0]
        assert run["target"] == redact_url(url) and ("***" in run["target"]) == ("bob:" in url), run["target"]
        shown = proc.stdout.decode() + proc.stderr.decode()
        if "bob:" in url and expected == 3 and "untrusted" not in name:
            assert "authentication failed" in shown, (name, shown[-1500:])

    # compare: both NATS backends on one table, the secret on the command line
    folder = tmp_path / "compare"
    folder.mkdir()
    path = scenario(folder, "nats", nats_tls_password.url, shared=True, ca_file=certs.ca_file)
    proc = busmon(["compare", str(path), "--backends", "nats,nats-js", "--url", f"nats=nats://bob:{MARK}@{nats_host}",
                   "--url", f"nats-js=nats+js://bob:{MARK}@{nats_host}", "--report", "c.json", "--log", "c.log"],
                  folder)
    assert proc.returncode == 0, proc.stdout.decode()[-2000:] + proc.stderr.decode()[-2000:]
    assert_no_marker(proc, folder)
    assert f"nats://bob:***@{nats_host}" in proc.stdout.decode() + proc.stderr.decode()


def test_a_wrong_url_with_a_password_never_shows_it(tmp_path):
    """Bad input fails before any bus exists: the password must still not be echoed."""
    code, out, err = run_main(["play", str(ROOT / "sample_configs" / "quickstart.toml"), "--headless",
                               "--url", f"kafka://bob:{MARK}@127.0.0.1:notaport"])
    assert code == 2 and MARK not in out + err
    assert "kafka://bob:***@127.0.0.1:notaport" in one_line(err)


@pytest.mark.kafka
async def test_the_broker_look_after_a_failure_speaks_tls_to_a_tls_listener(kafka_mtls):
    """After a failed run busmon looks whether the broker is up; on a TLS-only Kafka listener a
    plaintext request would be dropped and the broker wrongly called unreachable."""
    from busmon.bus.health import check_broker

    [plain] = await check_broker(kafka_mtls.url, 2.0)
    [tls] = await check_broker(kafka_mtls.url, 2.0, tls=True)
    assert plain.down and not tls.down, (plain, tls)
