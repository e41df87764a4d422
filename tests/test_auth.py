"""Standard Webhooks signatures and bearer tokens, on both ends."""

from __future__ import annotations

import base64
import json
import random
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from eventctl.auth import (
    Credentials,
    SignatureError,
    WebhookHeaders,
    check_signature,
    read_secrets,
    sign,
    signature_headers,
    signing_key,
    token_matches,
)
from eventctl.config import ConsumerConfig
from eventctl.consumer.app import create_app
from eventctl.errors import ConfigError, ExitCode
from eventctl.store import Store
from tests.helpers import Server, cli_env, in_process, propagate_quickly, send_once

SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
EVENT = {"event_type": "order.created", "event_payload": "{}"}
BODY = json.dumps(EVENT).encode()


def test_the_specification_test_vector() -> None:
    key = signing_key(SPEC_SECRET, "test")
    signature = sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    check_signature(
        [key],
        WebhookHeaders("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", "v1,bm9wZQ== " + signature),
        b'{"test": 2432232314}',
        now=1614265330 + 10,
        tolerance=300,
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"body": b'{"test": 2432232315}'}, "no webhook-signature matches"),
        ({"timestamp": "1614265200"}, "no webhook-signature matches"),
        ({"now": 1614265330 + 301}, "more than 300 s away"),
        ({"signatures": "v2,abc"}, "no webhook-signature matches"),
        ({"message_id": None}, "are required"),
        ({"timestamp": "soon"}, "must be an integer"),
    ],
)
def test_verification_refuses_what_does_not_match(change: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {
        "message_id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "timestamp": "1614265330",
        "signatures": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        "body": b'{"test": 2432232314}',
        "now": 1614265330,
    }
    arguments.update(change)
    headers = WebhookHeaders(
        *(arguments.pop(name) for name in ("message_id", "timestamp", "signatures"))  # type: ignore[arg-type]
    )
    with pytest.raises(SignatureError, match=message):
        check_signature([signing_key(SPEC_SECRET, "t")], headers, tolerance=300, **arguments)  # type: ignore[arg-type]


def test_secrets_come_from_the_environment_and_files(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    path.write_text("# rotated on Monday\nwhsec_b2xk\n\nwhsec_bmV3\n")
    assert read_secrets("S", str(path), {"S": "whsec_ZW52, whsec_dHdv"}) == [
        "whsec_ZW52",
        "whsec_dHdv",
        "whsec_b2xk",
        "whsec_bmV3",
    ]
    with pytest.raises(ConfigError, match="cannot read the secrets file"):
        read_secrets("S", str(tmp_path / "missing"), {})
    with pytest.raises(ConfigError, match="must be whsec_ and base64"):
        signing_key("whsec_not base64!", "EVENTCTL_WEBHOOK_SECRETS")
    assert "s3cret" not in repr(Credentials("s3cret", [b"k"]))


def test_outbound_credentials_come_from_their_two_files_never_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a consumer's own EVENTCTL_AUTH_TOKEN is what it requires inbound: never sent onward
    monkeypatch.setenv("EVENTCTL_AUTH_TOKEN", "inbound-token")
    monkeypatch.setenv("EVENTCTL_SIGNING_SECRET", "whsec_ZW52")
    monkeypatch.setenv("EVENTCTL_WEBHOOK_SECRETS", "whsec_dHdv")
    token = tmp_path / "token"
    token.write_text("# for the warehouse\n\noutbound-token\nsecond-token\n")
    secrets = tmp_path / "secrets"
    secrets.write_text("# rotated on Monday\nwhsec_b2xk\n\nwhsec_bmV3\n")

    credentials = Credentials.from_files(token_file=str(token), secrets_file=str(secrets))
    assert credentials.token == "outbound-token"
    assert credentials.keys == [b"old", b"new"]

    nothing = Credentials.from_files(token_file="", secrets_file="")
    assert (nothing.token, nothing.keys) == (None, [])
    only_token = Credentials.from_files(token_file=str(token), secrets_file="")
    assert (only_token.token, only_token.keys) == ("outbound-token", [])

    missing = tmp_path / "missing"
    unreadable = f"^{re.escape(str(missing))}: cannot read the secrets file"
    with pytest.raises(ConfigError, match=unreadable):
        Credentials.from_files(token_file=str(missing), secrets_file="")
    with pytest.raises(ConfigError, match=unreadable):
        Credentials.from_files(token_file="", secrets_file=str(missing))
    secrets.write_text("whsec_not base64!\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(secrets))}: a signing secret must"):
        Credentials.from_files(token_file="", secrets_file=str(secrets))


@pytest.fixture
async def signed_client(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    old = base64.b64encode(b"old key").decode()
    new = base64.b64encode(b"new key").decode()
    credentials = Credentials(keys=[signing_key(f"whsec_{old}", "t"), signing_key(new, "t")])
    async with in_process(create_app(ConsumerConfig(), store, credentials=credentials)) as c:
        yield c


@pytest.mark.anyio
async def test_the_consumer_accepts_either_rotated_secret(
    signed_client: httpx.AsyncClient, store: Store
) -> None:
    for secret, message_id in ((b"old key", "msg_1"), (b"new key", "msg_2")):
        headers = signature_headers(secret, message_id, int(time.time()), BODY)
        headers["Content-Type"] = "application/json"
        response = await signed_client.post("/event", content=BODY, headers=headers)
        assert response.status_code == 200, response.text
        assert response.headers["Event-Id"] == message_id  # webhook-id is the event id
    assert store.count() == 2


@pytest.mark.anyio
async def test_the_consumer_refuses_bad_signatures_with_401_and_stores_nothing(
    signed_client: httpx.AsyncClient, store: Store
) -> None:
    headers = signature_headers(b"wrong key", "msg_1", int(time.time()), BODY)
    headers["Content-Type"] = "application/json"
    bad = await signed_client.post("/event", content=BODY, headers=headers)
    unsigned = await signed_client.post("/event", json=EVENT)
    stale = signature_headers(b"new key", "msg_2", int(time.time()) - 600, BODY)
    stale["Content-Type"] = "application/json"
    old = await signed_client.post("/event", content=BODY, headers=stale)
    for response in (bad, unsigned, old):
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_signature"
    assert store.count() == 0


@pytest.mark.anyio
async def test_bearer_tokens_are_required_when_configured(store: Store) -> None:
    app = create_app(ConsumerConfig(), store, credentials=Credentials(token="t0ken"))
    async with in_process(app) as client:
        missing = await client.post("/event", json=EVENT)
        wrong = await client.post("/event", json=EVENT, headers={"Authorization": "Bearer nope"})
        right = await client.post("/event", json=EVENT, headers={"Authorization": "Bearer t0ken"})
        health = await client.get("/healthz")
    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.json()["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="eventctl"'
    assert right.status_code == 200
    assert health.status_code == 200
    assert store.count() == 1


def test_signed_and_authenticated_delivery_end_to_end(tmp_path: Path, sqlite_url: str) -> None:
    secret = "whsec_" + base64.b64encode(b"a shared secret").decode()
    (tmp_path / "secrets").write_text(secret + "\n")
    (tmp_path / "token").write_text("t0ken\n")
    config = tmp_path / "consumer.yaml"
    config.write_text(
        f"webhook_secrets_file: {tmp_path / 'secrets'}\nauth_token_file: {tmp_path / 'token'}\n"
    )
    server = Server(sqlite_url, tmp_path, "--config", str(config))
    try:
        env = cli_env(EVENTCTL_SIGNING_SECRET=secret, EVENTCTL_AUTH_TOKEN="t0ken")
        sent = propagate_quickly(server.url, 5, env=env)
        assert sent.returncode == 0, sent.stderr
        assert secret not in sent.stderr + sent.stdout
        once = send_once(server.url, env=env)
        assert once.returncode == 0
        unsigned = send_once(server.url, env=cli_env(EVENTCTL_AUTH_TOKEN="t0ken"))
        assert unsigned.returncode == ExitCode.REFUSED
        assert "401 invalid_signature" in unsigned.stderr
    finally:
        _, stderr = server.stop()
    assert secret not in stderr
    assert "t0ken" not in stderr
    store = Store.open(sqlite_url)
    assert store.count() == 6
    store.close()


VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize(
    ("message_id", "timestamp", "signatures"),
    [
        (VECTOR_ID, "1" + "0" * 309, VECTOR_SIGNATURE),
        (VECTOR_ID, "9" * 5000, VECTOR_SIGNATURE),
        (VECTOR_ID, "-1614265330", VECTOR_SIGNATURE),
        (VECTOR_ID, "+1614265330", VECTOR_SIGNATURE),
        (VECTOR_ID, "1_614_265_330", VECTOR_SIGNATURE),
        (
            VECTOR_ID,
            "\u0661\u0666\u0661\u0664\u0662\u0666\u0665\u0663\u0663\u0660",
            VECTOR_SIGNATURE,
        ),
        (VECTOR_ID, "1614265330.0", VECTOR_SIGNATURE),
        (VECTOR_ID, " ", VECTOR_SIGNATURE),
        (VECTOR_ID, "1614265330", "v1,\xe9\xe9"),
        (VECTOR_ID, "1614265330", "v1,\u20ac " * 50),
        (VECTOR_ID, "1614265330", "v1,\udcff"),
        (VECTOR_ID, "1614265330", " ".join(["v1,AAAA"] * 1000)),
        (VECTOR_ID, "1614265330", "v1,"),
        (VECTOR_ID, "1614265330", "\t"),
        ("\xe9\xff", "1614265330", VECTOR_SIGNATURE),
        ("\udcff", "1614265330", VECTOR_SIGNATURE),
        ("", "1614265330", VECTOR_SIGNATURE),
    ],
)
def test_verify_refuses_any_odd_value_with_signature_error(
    message_id: str, timestamp: str, signatures: str
) -> None:
    with pytest.raises(SignatureError):
        check_signature(
            [signing_key(SPEC_SECRET, "t")],
            WebhookHeaders(message_id, timestamp, signatures),
            VECTOR_BODY,
            now=1614265330.5,
            tolerance=300,
        )


def _fuzzed_value(rng: random.Random, real: bytes) -> bytes:
    """A header value built from the pieces a hostile client would try."""
    pieces = [
        real,
        b"",
        b" ",
        b"\t \t",
        b"1" + b"0" * rng.randint(1, 400),
        b"-" + real,
        b"+" + real,
        b"v1,",
        b"v1," + bytes(rng.randint(0x80, 0xFF) for _ in range(rng.randint(1, 44))),
        b"v2," + real,
        b" ".join([b"v1,AAAA"] * rng.randint(2, 300)),
        bytes(rng.randint(0x20, 0xFF) for _ in range(rng.randint(1, 60))),
        str(rng.randint(-(2**70), 2**70)).encode(),
        "١٦١٤".encode(),
        b"\xef\xbb\xbf" + real,
    ]
    chosen = rng.sample(pieces, rng.randint(1, 3))
    return rng.choice([b"", b" ", b","]).join(chosen)


@pytest.mark.anyio
async def test_fuzzed_webhook_headers_always_get_401_never_500(
    signed_client: httpx.AsyncClient, store: Store
) -> None:
    rng = random.Random(20260527)
    now = int(time.time())
    # well-formed pieces, but signed over another body: no combination of them can match
    real = signature_headers(b"new key", "msg_1", now, BODY + b" ")
    for _ in range(300):
        headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
        for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
            if rng.random() < 0.9:
                headers.append((name.encode(), _fuzzed_value(rng, real[name].encode())))
        response = await signed_client.post("/event", content=BODY, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["code"] == "invalid_signature"
    assert store.count() == 0


def test_token_matches_any_case_of_the_scheme() -> None:
    for header in ("Bearer t0ken", "bearer t0ken", "BEARER t0ken", "bEaReR   t0ken"):
        assert token_matches("t0ken", header), header
    for header in ("Bearert0ken", "Basic t0ken", "Bearer", "Bearer t0ke", "Bearer t0ken\xe9", ""):
        assert not token_matches("t0ken", header), header


@pytest.mark.anyio
async def test_a_lower_case_bearer_scheme_is_accepted(store: Store) -> None:
    app = create_app(ConsumerConfig(), store, credentials=Credentials(token="t0ken"))
    async with in_process(app) as client:
        lower = await client.post("/event", json=EVENT, headers={"Authorization": "bearer t0ken"})
        upper = await client.post("/event", json=EVENT, headers={"Authorization": "BEARER t0ken"})
    assert (lower.status_code, upper.status_code) == (200, 200), lower.text
    assert store.count() == 2
