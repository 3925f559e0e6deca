"""Connection settings from URLs and options, checked before any run; redaction and scrubbing.

No broker here: these check what reaches aiokafka and nats-py, exactly, and that every way a
setting can be wrong is one line naming the option. The real secured brokers are in
test_secured_buses.py.
"""

from __future__ import annotations

import html
import json
import ssl
import textwrap
from pathlib import Path

import pytest

from busmon.bus import create_bus
from busmon.bus.connection import parse_target
from busmon.bus.errors import BusConfigError
from busmon.bus.secrets import (SECRETS, ScrubbedStream, is_secret_name, redact_options, redact_url, register,
                         resolve_env, scrub)
from tests.secured_brokers import Certs, make_certs, nkey_user
from tests.test_cli_robust import one_line, run_main

MARK = "mArKeR-s3cr3t"


@pytest.fixture
def certs(tmp_path) -> Certs:
    return make_certs(tmp_path)


@pytest.fixture(autouse=True)
def forget_secrets():
    """Each test starts with no secret known, so a passing scrub is this test's own doing."""
    SECRETS.clear()
    yield
    SECRETS.clear()


# -- URLs ------------------------------------------------------------------------------

def test_userinfo_is_credentials_not_part_of_the_host():
    t = parse_target("kafka://bob:p%40ss%3Aw0rd@127.0.0.1:9093,[::1]:9094", 9092)
    assert (t.user, t.password) == ("bob", "p@ss:w0rd")
    assert t.hosts == (("127.0.0.1", 9093), ("::1", 9094))
    assert t.addresses() == "127.0.0.1:9093,[::1]:9094"
    assert "p@ss" not in repr(t)
    assert parse_target("nats://h", 4222).hosts == (("h", 4222),)


def test_redact_url_keeps_the_user_and_hides_the_password_or_token():
    assert redact_url("kafka://bob:secret@h:9092") == "kafka://bob:***@h:9092"
    assert redact_url("nats://s3cr3tT0ken@h:4222") == "nats://***@h:4222"
    assert redact_url("kafka://bob@h:9092") == "kafka://bob@h:9092"  # a user alone is no secret
    assert redact_url("memory://") == "memory://"


# -- Kafka settings --------------------------------------------------------------------

def kafka(url: str = "kafka://127.0.0.1:9092", **options):
    return create_bus(url, **options)


def test_kafka_userinfo_becomes_sasl_plain_and_reaches_aiokafka_exactly():
    bus = kafka(f"kafka://bob:{MARK}@127.0.0.1:9093")
    assert bus.bootstrap_servers == "127.0.0.1:9093"
    assert bus.security.client_kwargs() == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                                            "sasl_plain_username": "bob", "sasl_plain_password": MARK}
    assert MARK not in repr(bus) and MARK not in bus.describe() and MARK not in repr(bus.security)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "scram-sha-512", "PLAIN"])
def test_kafka_sasl_ssl_with_a_ca_and_a_client_certificate(certs, mechanism):
    bus = kafka("kafka://127.0.0.1:9093", user="bob", password=MARK, sasl_mechanism=mechanism,
                ca_file=str(certs.ca_file), cert_file=str(certs.client_cert), key_file=str(certs.client_key))
    kwargs = bus.security.client_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_mechanism"] == mechanism.upper()
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("bob", MARK)
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert bus.uses_tls


def test_kafka_tls_alone_is_ssl_and_the_protocol_can_be_named():
    assert kafka(tls=True).security.protocol == "SSL"
    assert kafka(security_protocol="ssl").security.protocol == "SSL"
    assert kafka().security.client_kwargs() == {"security_protocol": "PLAINTEXT"}


KAFKA_MISTAKES = {
    "user without password": ({"user": "bob"}, "user", "needs a user and a password, got only a user"),
    "hyphen in a name": ({"password-env": "X"}, "password-env",
                         "unknown option 'password-env'; did you mean 'password_env'?"),
    "neither user nor password": ({"sasl_mechanism": "SCRAM-SHA-256"}, "sasl_mechanism",
                                  "needs a user and a password, got neither"),
    "tls off on SSL": ({"security_protocol": "SSL", "tls": False}, "tls", "tls = false, but security_protocol SSL"),
    "a folder for a file": ({"ca_file": "/tmp"}, "ca_file", "/tmp is a folder"),
    "token is not kafka's": ({"token_env": "X"}, "token_env", "unknown option 'token_env'"),
    "unknown mechanism": ({"user": "b", "password": "p", "sasl_mechanism": "GSSAPI"}, "sasl_mechanism",
                          "expected one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
    "sasl on plaintext": ({"user": "b", "password": "p", "security_protocol": "PLAINTEXT"},
                          "security_protocol", "needs SASL_PLAINTEXT or SASL_SSL"),
    "tls files on sasl_plaintext": ({"ca_file": __file__, "user": "b", "password": "p",
                                     "security_protocol": "SASL_PLAINTEXT"}, "security_protocol", "need SSL"),
    "unknown protocol": ({"security_protocol": "TLS"}, "security_protocol", "expected one of PLAINTEXT"),
    "missing ca file": ({"ca_file": "/nonexistent/ca.pem"}, "ca_file", "no such file: /nonexistent/ca.pem"),
    "not a certificate": ({"ca_file": __file__}, "ca_file", "not a PEM CA certificate"),
    "key without cert": ({"key_file": __file__}, "key_file", "needs cert_file"),
}


@pytest.mark.parametrize("options, option, says", KAFKA_MISTAKES.values(), ids=KAFKA_MISTAKES.keys())
def test_kafka_settings_that_cannot_work_are_refused_naming_the_option(options, option, says):
    with pytest.raises(BusConfigError) as info:
        kafka(**options)
    assert info.value.option == option and says in str(info.value)


def test_a_setting_given_in_the_url_and_as_an_option_is_refused():
    with pytest.raises(BusConfigError, match="password is given both in the URL and as option password_env"):
        kafka("kafka://bob:x@h:1", password_env="X")


# -- NATS settings ---------------------------------------------------------------------

def test_nats_userinfo_is_user_and_password_or_a_token(certs):
    bus = create_bus(f"nats://bob:{MARK}@127.0.0.1:4222")
    assert bus.servers == ["nats://127.0.0.1:4222"]  # nats-py is never given credentials in a URL
    assert bus.security.connect_kwargs() == {"user": "bob", "password": MARK}
    assert create_bus(f"nats+js://{MARK}@127.0.0.1:4222").security.connect_kwargs() == {"token": MARK}
    tls = create_bus("nats://h:1", ca_file=str(certs.ca_file), cert_file=str(certs.client_cert),
                     key_file=str(certs.client_key)).security.connect_kwargs()
    assert set(tls) == {"tls"} and isinstance(tls["tls"], ssl.SSLContext)
    assert set(create_bus("nats://h:1", tls=True).security.connect_kwargs()) == {"tls"}


CREDS = """-----BEGIN NATS USER JWT-----
eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJzdWIiOiJVQUJDIn0.c2lnbmF0dXJl
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.

-----BEGIN USER NKEY SEED-----
{seed}
------END USER NKEY SEED------
"""


def test_nats_credentials_and_seed_files_reach_nats_py_and_their_secrets_are_hidden(tmp_path):
    _, seed_file = nkey_user(tmp_path)
    seed = seed_file.read_text().strip()
    creds = tmp_path / "u.creds"
    creds.write_text(CREDS.format(seed=seed))
    assert create_bus("nats://h:1", credentials_file=str(creds)).security.connect_kwargs() == {
        "user_credentials": str(creds)}
    assert create_bus("nats://h:1", nkey_seed_file=str(seed_file)).security.connect_kwargs() == {
        "nkeys_seed": str(seed_file)}
    assert scrub(f"seed {seed} jwt eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJzdWIiOiJVQUJDIn0.c2lnbmF0dXJl") \
        == "seed *** jwt ***"


@pytest.mark.parametrize("option, text, says", [
    ("credentials_file", "garbage\n", "not a NATS credentials file"),
    ("credentials_file", CREDS.format(seed="SUNOTASEED"), "not a valid NKey seed"),
    ("nkey_seed_file", "SUNOTASEED\n", "not a valid NKey seed"),
])
def test_a_credentials_or_seed_file_nats_py_could_not_use_is_one_line(tmp_path, option, text, says):
    path = tmp_path / "bad"
    path.write_text(text)
    with pytest.raises(BusConfigError) as info:
        create_bus("nats://h:1", **{option: str(path)})
    assert info.value.option == option and says in str(info.value) and "SUNOTASEED" not in str(info.value)


NATS_MISTAKES = {
    "two kinds": ({"user": "bob", "password": "p", "token": "t0ken"}, "token", "one kind of credentials"),
    "user alone": ({"user": "bob"}, "user", "user and password go together, got only a user"),
    "missing creds file": ({"credentials_file": "/nonexistent.creds"}, "credentials_file", "no such file"),
    "tls off with a ca": ({"tls": False, "ca_file": __file__}, "tls", "tls = false with TLS files"),
    "tls not a bool": ({"tls": "yes"}, "tls", "expected true or false"),
}


@pytest.mark.parametrize("options, option, says", NATS_MISTAKES.values(), ids=NATS_MISTAKES.keys())
def test_nats_settings_that_cannot_work_are_refused_naming_the_option(options, option, says):
    with pytest.raises(BusConfigError) as info:
        create_bus("nats://127.0.0.1:4222", **options)
    assert info.value.option == option and says in str(info.value)


def test_an_encrypted_key_without_its_password_is_an_error_not_a_prompt(certs, tmp_path):
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(certs.client_key.read_bytes(), None)
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(MARK.encode())))
    for url in ("kafka://h:1", "nats://h:1"):
        with pytest.raises(BusConfigError) as info:
            create_bus(url, ca_file=str(certs.ca_file), cert_file=str(certs.client_cert), key_file=str(encrypted))
        assert info.value.option == "key_file" and "the private key is encrypted; give key_password" in str(info.value)
        with pytest.raises(BusConfigError) as info:
            create_bus(url, ca_file=str(certs.ca_file), cert_file=str(certs.client_cert), key_file=str(encrypted),
                       key_password="not-it")
        assert info.value.option == "key_password" and "a wrong password" in str(info.value)
        create_bus(url, ca_file=str(certs.ca_file), cert_file=str(certs.client_cert), key_file=str(encrypted),
                   key_password=MARK)


def test_a_password_may_hold_url_characters_as_typed_or_percent_encoded():
    assert parse_target("nats://bob:a/b#c?d@e@h:1", 4222).password == "a/b#c?d@e"
    assert parse_target("nats://bob:a%2Fb%25@h:1", 4222).password == "a/b%"
    assert parse_target("nats://bob:a/b#c?d@e@h:1", 4222).hosts == (("h", 1),)


# -- secrets from the environment ------------------------------------------------------

def test_password_env_reads_the_variable_and_registers_its_value(monkeypatch):
    monkeypatch.setenv("BUSMON_TEST_PW", MARK)
    bus = kafka("kafka://bob@127.0.0.1:9093", password_env="BUSMON_TEST_PW")
    assert bus.security.password == MARK
    assert scrub(f"oops {MARK}") == "oops ***"


@pytest.mark.parametrize("env, says", [({}, "is not set"), ({"V": ""}, "is empty")])
def test_a_missing_or_empty_variable_is_an_error_naming_it(env, says):
    with pytest.raises(BusConfigError) as info:
        resolve_env({"password_env": "V"}, ["password"], environ=env)
    assert info.value.option == "password_env" and f"environment variable V {says}" == str(info.value)


SECURED = textwrap.dedent("""\
    name = "secured"
    backend = "kafka"
    url = "kafka://bob@127.0.0.1:9"

    [bus.kafka]
    sasl_mechanism = "SCRAM-SHA-256"
    password_env = "BUSMON_UNSET_PASSWORD"
    """)


def test_the_cli_names_the_file_and_option_of_an_unset_variable_exit_2(tmp_path, monkeypatch):
    monkeypatch.delenv("BUSMON_UNSET_PASSWORD", raising=False)
    path = tmp_path / "secured.toml"
    path.write_text(SECURED)
    code, out, err = run_main(["play", str(path), "--headless"])
    assert code == 2, err
    assert one_line(err) == (f"busmon: {path}:7: [bus.kafka] password_env: "
                             "environment variable BUSMON_UNSET_PASSWORD is not set")


# -- custom factories ------------------------------------------------------------------

class SecretKeeper:
    """A user's bus that was given secrets, and whose start() says one of them."""

    def __init__(self, **options) -> None:
        self.options = options

    async def start(self) -> None:
        print(f"logging in with api_key={self.options['api_key']}")  # a user's bus prints what it likes
        raise RuntimeError(f"cannot log in with api_key={self.options['api_key']}")

    async def publish(self, topic, envelope) -> None: ...

    async def subscribe(self, topic, handler, *, group=None): ...

    async def close(self) -> None: ...


def make_keeper(**options) -> SecretKeeper:
    keeper = SecretKeeper(**options)
    KEPT.append(keeper)
    return keeper


KEPT: list[SecretKeeper] = []


def test_a_custom_factory_gets_its_secrets_untouched_and_busmon_never_shows_them(tmp_path):
    KEPT.clear()
    path = tmp_path / "custom.toml"
    path.write_text(textwrap.dedent(f"""\
        backend = "tests.test_secret_settings:make_keeper"
        [bus]
        api_key = "{MARK}"
        password_env = "LEFT_AS_IS"
        region = "eu"
        [[runs]]
        name = "r"
        messages = 10
        """))
    report = tmp_path / "r.json"
    code, out, err = run_main(["play", str(path), "--headless", "--report", str(report)])
    assert code == 3, err
    assert KEPT and KEPT[-1].options == {"api_key": MARK, "password_env": "LEFT_AS_IS", "region": "eu"}
    assert "cannot log in with api_key=***" in out + err and "logging in with api_key=***" in out
    assert MARK not in out + err + report.read_text()
    run = json.loads(report.read_text())["runs"][0]
    assert run["target"] == "tests.test_secret_settings:make_keeper"
    assert run["options"] == {"api_key": "***", "password_env": "LEFT_AS_IS", "region": "eu"}


# -- redaction and scrubbing -----------------------------------------------------------

def test_secret_names():
    assert all(map(is_secret_name, ["password", "sasl_plain_password", "token", "api_key", "client_secret",
                                    "credentials", "key_password"]))
    assert not any(map(is_secret_name, ["keys", "partitions", "password_env", "user", "topic"]))
    assert redact_options({"user": "bob", "password": "x", "bus": {"token": "t"}}) == {
        "user": "bob", "password": "***", "bus": {"token": "***"}}


def test_scrub_finds_a_secret_in_every_form_it_is_written_in():
    secret = 'p&ss <w"rd>'
    register(secret)
    for written in (secret, json.dumps({"e": secret}), html.escape(secret),
                    html.escape(secret).replace(" ", "&#160;"), "p%26ss%20%3Cw%22rd%3E"):
        assert "ss <w" not in scrub(written) and "ss&#160;" not in scrub(written) and "***" in scrub(written), written
    assert scrub("kafka://bob:unregistered@h:1 and more") == "kafka://bob:***@h:1 and more"


def test_short_secrets_are_hidden_where_they_stand_not_searched_for():
    register("pw")
    assert scrub("pw is short; kafka://bob:pw@h") == "pw is short; kafka://bob:***@h"


def test_a_password_that_is_a_word_busmon_prints_does_not_break_the_output(tmp_path):
    """kafka/kafka on a dev broker: the verdict, the backend and aiokafka's name stay readable
    (masking them would also tell the password, by where *** sits); the URL still hides it."""
    register("kafka", "clean")
    assert scrub("clean on kafka (aiokafka)") == "clean on kafka (aiokafka)"
    assert redact_url("kafka://kafka:kafka@h:1") == "kafka://kafka:***@h:1"


def test_nats_tables_apply_to_jetstream_too():
    from busmon.probes.harness.scenario import parse_scenario

    sc = parse_scenario('backend = "nats-js"\n[bus]\nworkers = 8\n[bus.nats]\nuser = "a"\npassword = "b"\n'
                        '[bus.nats-js]\npassword = "c"\n[bus.kafka]\npartitions = 2\n')
    assert sc.options() == {"workers": 8, "user": "a", "password": "c"}
    assert sc.with_target(backend="nats").options() == {"workers": 8, "user": "a", "password": "b"}


def test_the_terminal_stream_scrubs_what_passes(capsys):
    register(MARK)
    stream = ScrubbedStream("stdout")
    stream.write(f"a {MARK} b\n")
    stream.flush()
    assert capsys.readouterr().out == "a *** b\n"
    assert stream.encoding


def test_library_log_lines_are_scrubbed_in_the_summary_and_the_file(tmp_path):
    import logging

    from busmon.probes.harness.logs import LogCapture

    register(MARK)
    capture = LogCapture()
    capture.write_to(tmp_path / "l.log")
    capture.install()
    try:
        logging.getLogger("aiokafka.conn").warning("connecting with %s", MARK)
        try:
            raise ValueError(MARK)
        except ValueError:
            logging.getLogger("nats").exception("failed %s", "x")
    finally:
        capture.uninstall()
    text = (tmp_path / "l.log").read_text()
    assert MARK not in text and "connecting with ***" in text and "ValueError: ***" in text
    assert all(MARK not in line.message for line in capture.summary())


def test_the_process_wide_registry_is_thread_safe_enough(tmp_path):
    import threading

    values = [f"secret-{i:04d}" for i in range(200)]
    threads = [threading.Thread(target=register, args=(v,)) for v in values]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert scrub(" ".join(values)) == " ".join(["***"] * 200)



def test_the_secured_sample_reads_its_password_from_the_environment(monkeypatch):
    from busmon.probes.harness.scenario import load_scenario

    sample = Path(__file__).resolve().parents[1] / "sample_configs" / "secured-kafka.toml"
    monkeypatch.delenv("KAFKA_PASSWORD", raising=False)
    code, out, err = run_main(["play", str(sample), "--headless"])
    assert code == 2 and one_line(err) == (f"busmon: {sample}:18: [bus.kafka] password_env: "
                                           "environment variable KAFKA_PASSWORD is not set")
    monkeypatch.setenv("KAFKA_PASSWORD", MARK)
    sc = load_scenario(sample)
    bus = create_bus(sc.url, **sc.options())
    assert bus.security.describe() == "SASL_SSL, SCRAM-SHA-512, user bob" and bus.security.password == MARK


BAD_INPUT_WITH_A_PASSWORD = {
    "url of another backend": (["play", "{file}", "--headless"], 'backend = "nats"\nurl = "kafka://bob:{mark}@h:1"\n'),
    "backend and url disagree": (["play", "{file}", "--headless", "--backend", "nats", "--url",
                                  "kafka://bob:{mark}@h:1"], ""),
    "compare url without a backend": (["compare", "{file}", "--url", "kafka://bob:{mark}@h:1"], ""),
    "port not a number": (["play", "{file}", "--headless", "--url", "nats://bob:{mark}@h:x"], ""),
    "a raw / # ? @ in the password": (["play", "{file}", "--headless", "--url", "nats://bob:a/{mark}#?@x@h:x"], ""),
}


@pytest.mark.parametrize("args, text", BAD_INPUT_WITH_A_PASSWORD.values(), ids=BAD_INPUT_WITH_A_PASSWORD.keys())
def test_bad_input_carrying_a_password_never_echoes_it(tmp_path, args, text):
    path = tmp_path / "s.toml"
    path.write_text(text.format(mark=MARK) + '[[runs]]\nname = "r"\nmessages = 10\n')
    code, out, err = run_main([a.format(file=path, mark=MARK) for a in args])
    assert code == 2, out + err
    line = one_line(err)
    assert MARK not in out + err and "bob:***@h" in line, line


def test_an_option_error_names_the_line_of_the_option(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text('backend = "nats-js"\nurl = "nats+js://127.0.0.1:4222"\n\n[bus.nats-js]\n'
                    'password-env = "X"\n[[runs]]\nname = "r"\nmessages = 10\n')
    code, _, err = run_main(["play", str(path), "--headless"])
    assert code == 2 and one_line(err) == (f"busmon: {path}:5: [bus.nats-js] password-env: unknown option "
                                           "'password-env'; did you mean 'password_env'?")
