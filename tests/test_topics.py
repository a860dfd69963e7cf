"""fastws.topics: the handshake query, topic names and patterns, grants, client messages (pure parsing)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fastws import ServerConfig
from fastws.auth import Authenticator, encode_jwt, handshake_checks, topic_grants
from fastws.config import AuthConfig
from fastws.exceptions import EncodeError
from fastws.topics import (
    REFUSAL_REASONS,
    ClientRequest,
    Subscription,
    check_epoch,
    check_pattern,
    check_topic,
    matches,
    parse_client_message,
    subscription_parser,
    topic_reader,
)
from tests.utils import fastws_cli

SECRET = "s3cret-s3cret-s3cret"


@dataclass
class Request:
    """What the parser reads of picows' WSUpgradeRequest: the raw path and the headers."""

    path: bytes
    headers: dict[str, str] = field(default_factory=dict)


def parse(query: str, grants: tuple[str, ...] | None = None, **settings: object):
    config = ServerConfig(**settings)  # type: ignore[arg-type]
    parser = subscription_parser(config, (lambda request: grants) if grants is not None else None)
    return parser(Request(query.encode("latin-1")))


def refusal(query: str, grants: tuple[str, ...] | None = None, **settings: object) -> tuple[int, str, str]:
    result = parse(query, grants, **settings)
    assert isinstance(result, tuple), f"{query}: not refused: {result}"
    status, reason, message = result
    assert reason in REFUSAL_REASONS
    assert status == (403 if reason == "topic_forbidden" else 400)
    return result


# -- names and patterns ------------------------------------------------------------------------------


def test_check_topic() -> None:
    for good in ("prices", "a", "user:42/feed", "x.y-z_w@host", "A" * 128):
        assert check_topic(good, 128) is None, good
    assert check_topic("", 128) == "a topic name must not be empty"
    assert check_topic("A" * 129, 128) == f"topic {'A' * 60!r}... is longer than 128 characters (max_topic_length)"
    for bad, ch in (("a b", " "), ("a,b", ","), ("a*", "*"), ("é", "é"), ("a\x00", "\x00"), ("a?b", "?")):
        why = check_topic(bad, 128)
        assert why is not None and f"the character {ch!r}" in why and repr(bad) in why, bad


def test_check_pattern() -> None:
    for good in ("*", "prices", "prices.*", "user:42*", "a"):
        assert check_pattern(good) is None, good
    assert check_pattern("a*b") == "pattern 'a*b': '*' is allowed only at the end"
    assert check_pattern("**") == "pattern '**': '*' is allowed only at the end"
    assert check_pattern("") == "pattern '': a topic name must not be empty"
    assert check_pattern(3) == "a topic pattern must be a string, got int"
    assert check_pattern("a b*") is not None


def test_matches() -> None:
    assert matches(None, "anything")
    assert not matches((), "x")
    assert matches(("*",), "x")
    assert matches(("prices",), "prices")
    assert not matches(("prices",), "prices.eu")
    assert matches(("prices.*",), "prices.eu")
    assert not matches(("prices.*",), "prices")
    assert matches(("prices*",), "prices")
    assert matches(("news", "user:42:*"), "user:42:inbox")
    assert not matches(("news", "user:42:*"), "user:43:inbox")


def test_check_epoch() -> None:
    assert check_epoch("a-B_9") is None
    assert check_epoch("x" * 64) is None
    assert check_epoch("x" * 65) is not None
    assert check_epoch("") is not None
    assert check_epoch("a:b") is not None
    assert check_epoch(5) == "epoch must be a string of 1-64 letters, digits, _ and -, got int"


# -- the handshake query: what is accepted --------------------------------------------------------------


def test_no_query_is_the_drop_in_default() -> None:
    assert parse("/") == Subscription(topics=None, patterns=None, envelope=False, since={}, epochs={})
    assert parse("/feed?token=abc&x=1") == Subscription()
    assert parse("/?") == Subscription()


def test_topics_format_since_epoch() -> None:
    sub = parse("/?topics=prices,news&format=envelope&since=prices:17,news:0&epoch=E1&token=t")
    assert sub == Subscription(topics=frozenset({"prices", "news"}), patterns=None, envelope=True,
                               since={"prices": 17, "news": 0}, epochs={"prices": "E1", "news": "E1"})
    sub = parse("/?topics=a:b,c&format=envelope&since=a:b:3&epoch=a:b:E-2")
    assert isinstance(sub, Subscription)
    assert sub.since == {"a:b": 3} and sub.epochs == {"a:b": "E-2"}  # ':' in a topic name: split at the last one
    sub = parse("/?topics=a,b&format=envelope&since=a:1,b:2&epoch=a:X,b:Y")
    assert isinstance(sub, Subscription) and sub.epochs == {"a": "X", "b": "Y"}
    sub = parse("/?topics=a,b&format=envelope&since=a:1,b:2&epoch=b:Y")  # a topic without its epoch
    assert isinstance(sub, Subscription) and sub.epochs == {"b": "Y"}


def test_duplicates_collapse_and_repeated_parameters_add_up() -> None:
    sub = parse("/?topics=a,b,a&topics=c,a")
    assert isinstance(sub, Subscription) and sub.topics == frozenset("abc")
    sub = parse("/?topics=a,b&format=envelope&since=a:1&since=b:2")
    assert isinstance(sub, Subscription) and sub.since == {"a": 1, "b": 2}
    assert parse("/?topics=x,x,x,x", max_topics_per_client=1) == Subscription(topics=frozenset({"x"}))


def test_percent_encoding() -> None:
    sub = parse("/?topics=user%3A42%2Cnews&format=%65nvelope")
    assert isinstance(sub, Subscription) and sub.topics == frozenset({"user:42", "news"}) and sub.envelope


def test_format_plain_and_since_latest() -> None:
    assert parse("/?format=plain") == Subscription()
    assert parse("/?topics=a&format=plain&format=plain") == Subscription(topics=frozenset("a"))
    sub = parse("/?topics=a,b&since=latest")  # latest needs no envelope: no offsets to read
    assert isinstance(sub, Subscription) and sub.since == {"a": None, "b": None} and not sub.envelope


def test_deliver_latest_applies_only_with_topics_and_without_since() -> None:
    sub = parse("/?topics=a,b", deliver_latest=True)
    assert isinstance(sub, Subscription) and sub.since == {"a": None, "b": None}
    assert parse("/", deliver_latest=True) == Subscription()
    sub = parse("/?topics=a,b&format=envelope&since=a:4", deliver_latest=True)
    assert isinstance(sub, Subscription) and sub.since == {"a": 4}


def test_since_without_topics() -> None:
    sub = parse("/?format=envelope&since=a:3")  # firehose: every topic is received
    assert isinstance(sub, Subscription) and sub.topics is None and sub.since == {"a": 3}
    sub = parse("/?format=envelope&since=prices.eu:3", grants=("prices.*",))
    assert isinstance(sub, Subscription) and sub.patterns == ("prices.*",) and sub.since == {"prices.eu": 3}


def test_grants() -> None:
    sub = parse("/?topics=prices.eu,news", grants=("prices.*", "news"))
    assert isinstance(sub, Subscription) and sub.patterns == ("prices.*", "news")
    assert parse("/", grants=("news",)) == Subscription(patterns=("news",))  # restricted without ?topics=
    assert parse("/?token=x", grants=()) == Subscription(patterns=())
    assert parse("/?topics=anything", grants=("*",)) == Subscription(topics=frozenset({"anything"}), patterns=("*",))


# -- the handshake query: every refusal -------------------------------------------------------------------

REFUSALS = [
    ("/?topics=", "topic_invalid", "topics: an empty topic name (write ?topics=a,b)"),
    ("/?topics=a,,b", "topic_invalid", "topics: an empty topic name (write ?topics=a,b)"),
    ("/?topics=a,", "topic_invalid", "topics: an empty topic name (write ?topics=a,b)"),
    ("/?topics=a%20b", "topic_invalid",
     "topics: topic 'a b' has the character ' '; allowed: letters, digits and _ . : @ / -"),
    ("/?topics=a+b", "topic_invalid",
     "topics: topic 'a b' has the character ' '; allowed: letters, digits and _ . : @ / -"),
    ("/?topics=ok,pr*", "topic_invalid",
     "topics: topic 'pr*' has the character '*'; allowed: letters, digits and _ . : @ / -"),
    ("/?topics=%C3%A9t%C3%A9", "topic_invalid",
     "topics: topic 'été' has the character 'é'; allowed: letters, digits and _ . : @ / -"),
    ("/?topics=" + "x" * 129, "topic_invalid",
     f"topics: topic {'x' * 60!r}... is longer than 128 characters (max_topic_length)"),
    ("/?topics=a,b,c", "too_many_topics", "topics: 3 topics, at most 2 allowed (max_topics_per_client)"),
    ("/?format=json", "format_invalid", "format must be envelope or plain, got 'json'"),
    ("/?format=", "format_invalid", "format must be envelope or plain, got ''"),
    ("/?format=envelope&format=plain", "format_invalid", "format must be envelope or plain, got 'envelope', 'plain'"),
    ("/?topics=a&format=envelope&since=b:1", "since_invalid", "since: 'b' is not one of the topics subscribed (?topics=)"),
    ("/?topics=a&format=envelope&since=a", "since_invalid",
     "since: 'a' is not TOPIC:OFFSET (write since=a:17,b:4 or since=latest)"),
    ("/?topics=a&format=envelope&since=", "since_invalid",
     "since: '' is not TOPIC:OFFSET (write since=a:17,b:4 or since=latest)"),
    ("/?topics=a&format=envelope&since=:4", "since_invalid",
     "since: ':4' is not TOPIC:OFFSET (write since=a:17,b:4 or since=latest)"),
    ("/?topics=a&format=envelope&since=a:-1", "since_invalid", "since: the offset of 'a' must be an integer >= 0, got '-1'"),
    ("/?topics=a&format=envelope&since=a:1.5", "since_invalid",
     "since: the offset of 'a' must be an integer >= 0, got '1.5'"),
    ("/?topics=a&format=envelope&since=a:x", "since_invalid", "since: the offset of 'a' must be an integer >= 0, got 'x'"),
    ("/?topics=a&format=envelope&since=a:", "since_invalid", "since: the offset of 'a' must be an integer >= 0, got ''"),
    ("/?topics=a&format=envelope&since=a:99999999999999999999", "since_invalid",
     "since: the offset of 'a' must be an integer >= 0, got '99999999999999999999'"),
    ("/?topics=a&format=envelope&since=a:1,a:2", "since_invalid", "since: 'a' is given twice"),
    ("/?topics=a&since=a:1", "since_invalid",
     "since with offsets needs format=envelope (offsets are only seen in envelopes; since=latest works without)"),
    ("/?topics=a&format=plain&since=a:1", "since_invalid",
     "since with offsets needs format=envelope (offsets are only seen in envelopes; since=latest works without)"),
    ("/?since=latest", "since_invalid", "since=latest needs ?topics= (the topics whose latest message to send)"),
    ("/?topics=a&epoch=E", "since_invalid", "epoch without since (write since=a:17&epoch=E)"),
    ("/?topics=a&since=latest&epoch=E", "since_invalid",
     "epoch goes with since=TOPIC:OFFSET (the epoch of those offsets)"),
    ("/?topics=a&format=envelope&since=a:1&epoch=", "since_invalid",
     "epoch '' must be 1-64 characters of letters, digits, _ and -"),
    ("/?topics=a&format=envelope&since=a:1&epoch=" + "e" * 65, "since_invalid",
     f"epoch {'e' * 60!r}... must be 1-64 characters of letters, digits, _ and -"),
    ("/?topics=a&format=envelope&since=a:1&epoch=E.1", "since_invalid",
     "epoch 'E.1' must be 1-64 characters of letters, digits, _ and -"),
    ("/?topics=a&format=envelope&since=a:1&epoch=a:E!", "since_invalid",
     "epoch 'E!' must be 1-64 characters of letters, digits, _ and - (the epoch of 'a')"),
    ("/?topics=a,b&format=envelope&since=a:1&epoch=b:E", "since_invalid", "epoch: 'b' is not in since"),
    ("/?topics=a&format=envelope&since=a:1&epoch=a:E,a:F", "since_invalid", "epoch: 'a' is given twice"),
    ("/?topics=a&format=envelope&since=a:1&epoch=E,F", "since_invalid",
     "epoch: 'E' is not TOPIC:EPOCH (write epoch=E for every topic of since, or epoch=a:E1,b:E2)"),
    ("/?format=envelope&since=x%20y:1", "since_invalid",
     "since: topic 'x y' has the character ' '; allowed: letters, digits and _ . : @ / -"),
]


@pytest.mark.parametrize(("query", "reason", "message"), REFUSALS, ids=[q for q, _, _ in REFUSALS])
def test_refusal(query: str, reason: str, message: str) -> None:
    assert refusal(query, max_topics_per_client=2) == (403 if reason == "topic_forbidden" else 400, reason, message)


def test_since_for_a_topic_not_received_without_topics() -> None:
    assert refusal("/?format=envelope&since=a:1", firehose=False)[2] == (
        "since: 'a' is not subscribed: without ?topics= this server sends only broadcasts without a topic "
        "(firehose: false)")
    assert refusal("/?format=envelope&since=b:1", grants=("a*",)) == (
        400, "since_invalid", "since: 'b' is not among the topics this token may subscribe to")


def test_max_topic_length_is_the_configured_one() -> None:
    assert parse("/?topics=abcd", max_topic_length=4) == Subscription(topics=frozenset({"abcd"}))
    assert refusal("/?topics=abcde", max_topic_length=4)[1] == "topic_invalid"


def test_forbidden_topics_are_refused_naming_the_topic() -> None:
    assert refusal("/?topics=news,secret", grants=("news", "prices.*")) == (
        403, "topic_forbidden", "topics: 'secret' is not among the topics this token may subscribe to")
    assert refusal("/?topics=prices", grants=("prices.*",))[2] == (
        "topics: 'prices' is not among the topics this token may subscribe to")
    assert refusal("/?topics=a", grants=())[1] == "topic_forbidden"
    # a malformed name is a 400 even for a restricted client
    assert refusal("/?topics=a%20b", grants=("a*",))[1] == "topic_invalid"


def test_bad_grants_are_a_refusal_never_a_crash() -> None:
    config = ServerConfig()

    def raising(request: object) -> tuple[str, ...] | None:
        raise RuntimeError("boom")

    assert subscription_parser(config, raising)(Request(b"/?topics=a")) == (
        403, "topic_forbidden", "the token's topics cannot be read (RuntimeError)")
    assert subscription_parser(config, lambda r: ["a"])(Request(b"/")) == (  # type: ignore[arg-type,return-value]
        403, "topic_forbidden", "the token's topics must be a list of names or patterns")
    assert subscription_parser(config, lambda r: ("a*b",))(Request(b"/")) == (
        403, "topic_forbidden", "the token's topics: pattern 'a*b': '*' is allowed only at the end")


def test_unreadable_requests_are_refused_not_raised() -> None:
    parser = subscription_parser(ServerConfig(), None)
    assert parser(Request(None))[:2] == (400, "topic_invalid")  # type: ignore[arg-type,index]
    # any byte in the query: refused with a message, never an exception
    for raw in (b"/?topics=\xff\xfe", b"/?topics=%ff", b"/?topics=a\x00", b"/?since=%00:1&format=envelope",
                b"/?topics=" + b",".join([b"t"] * 5000)):
        result = parser(Request(raw))
        assert isinstance(result, (Subscription, tuple)), raw


# -- grants from auth ------------------------------------------------------------------------------------


def jwt(claims: dict[str, object]) -> str:
    return encode_jwt({"exp": time.time() + 60, **claims}, SECRET)


def bearer(token: str, path: bytes = b"/") -> Request:
    return Request(path, {"Authorization": f"Bearer {token}"})


def test_jwt_topics_claim() -> None:
    auth = Authenticator(AuthConfig(jwt_secret=SECRET, tokens=("static",), token_topics={"static": ("news",)}))
    request = bearer(jwt({"topics": ["prices.*", "news"]}))
    assert auth(request) is None
    assert auth.grants(request) == ("prices.*", "news")
    assert auth.grants(request) == ("prices.*", "news")  # checked again when asked again
    request = bearer(jwt({"sub": "u1"}))
    assert auth(request) is None and auth.grants(request) is None  # no claim: any topic
    request = bearer(jwt({"topics": []}))
    assert auth(request) is None and auth.grants(request) == ()  # an empty list: no topic
    request = bearer("static")
    assert auth(request) is None and auth.grants(request) == ("news",)


def test_static_tokens_without_token_topics_are_unrestricted() -> None:
    auth = Authenticator(AuthConfig(tokens=("a", "b"), token_topics={"b": ("x*",)}))
    assert auth.grants(bearer("a")) is None
    assert auth.grants(bearer("b")) == ("x*",)
    assert auth.token_grants("a") is None and auth.token_grants("b") == ("x*",)
    assert auth.token_grants("c") == ()  # refused: nothing


@pytest.mark.parametrize(("claim", "why"), [
    ("news", "the topics claim must be a list of topic names or patterns, got str"),
    (None, "the topics claim must be a list of topic names or patterns, got NoneType"),
    ({"a": 1}, "the topics claim must be a list of topic names or patterns, got dict"),
    (["ok", 3], "the topics claim: a topic pattern must be a string, got int"),
    (["a*b"], "the topics claim: pattern 'a*b': '*' is allowed only at the end"),
    ([""], "the topics claim: pattern '': a topic name must not be empty"),
    (["a b"], "the topics claim: pattern 'a b': topic 'a b' has the character ' '; allowed: letters, digits and "
              "_ . : @ / -"),
    ([["nested"]], "the topics claim: a topic pattern must be a string, got list"),
])
def test_a_malformed_topics_claim_refuses_the_token(claim: object, why: str) -> None:
    auth = Authenticator(AuthConfig(jwt_secret=SECRET))
    request = bearer(jwt({"topics": claim}))
    assert auth(request) == (403, "topic_forbidden")
    assert auth.check_token_detail(jwt({"topics": claim})) == ((403, "topic_forbidden"), why)
    assert auth.grants(request) == ()  # never a grant for a refused token
    assert "topic_forbidden" in auth.reasons()


def test_grants_of_a_refused_or_unknown_request_are_empty() -> None:
    auth = Authenticator(AuthConfig(jwt_secret=SECRET))
    assert auth(bearer("nope")) == (401, "invalid_token")
    assert auth.grants(bearer("nope")) == ()
    assert auth.grants(Request(b"/")) == ()  # no token at all
    assert Authenticator(AuthConfig(allowed_origins=(None,))).grants(Request(b"/")) is None  # no tokens configured


def test_the_grant_is_verified_once_per_handshake() -> None:
    auth = Authenticator(AuthConfig(jwt_secret=SECRET))
    verified = 0
    real = auth._verify

    def counting(token: str):  # type: ignore[no-untyped-def]
        nonlocal verified
        verified += 1
        return real(token)

    auth._verify = counting  # type: ignore[method-assign]
    request = bearer(jwt({"topics": ["a"]}))
    assert auth(request) is None
    assert auth.grants(request) == ("a",)
    assert verified == 1
    other = bearer(jwt({"topics": ["b"]}))
    assert auth(request) is None
    assert auth.grants(other) == ("b",)  # not the request just checked: verified again, its own grant
    assert verified == 3


def test_topic_grants_finds_the_authenticator() -> None:
    checks, reasons = handshake_checks(AuthConfig(jwt_secret=SECRET), lambda request: None)
    grants = topic_grants(checks)
    assert grants is not None
    request = bearer(jwt({"topics": ["a*"]}), b"/?topics=a1")
    for check in checks:
        assert check(request) is None
    parser = subscription_parser(ServerConfig(), grants)
    assert parser(request) == Subscription(topics=frozenset({"a1"}), patterns=("a*",))
    assert parser(bearer(jwt({"topics": ["a*"]}), b"/?topics=b"))[:2] == (403, "topic_forbidden")  # type: ignore[index]
    assert topic_grants(handshake_checks(None, lambda request: None)[0]) is None
    assert topic_grants([]) is None


def test_token_from_query_param_carries_its_grant() -> None:
    auth = Authenticator(AuthConfig(tokens=("tok",), token_topics={"tok": ("news",)}))
    parser = subscription_parser(ServerConfig(), auth.grants)
    request = Request(b"/?token=tok&topics=news")
    assert auth(request) is None
    assert parser(request) == Subscription(topics=frozenset({"news"}), patterns=("news",))
    request = Request(b"/?token=tok&topics=prices")
    assert auth(request) is None
    assert parser(request) == (403, "topic_forbidden", "topics: 'prices' is not among the topics this token may "
                                                        "subscribe to")


def test_valid_token_topics_config() -> None:
    config = ServerConfig.from_dict({"auth": {"tokens": ["t1", "t2"], "token_topics": {"t1": ["*"], "t2": ["a", "b*"]}}})
    assert config.auth is not None and config.auth.token_topics == {"t1": ("*",), "t2": ("a", "b*")}


# -- client messages -------------------------------------------------------------------------------------


def test_client_messages() -> None:
    assert parse_client_message('{"subscribe": "prices"}') == ClientRequest("subscribe", "prices")
    assert parse_client_message('{"unsubscribe":"prices"}') == ClientRequest("unsubscribe", "prices")
    assert parse_client_message('{"subscribe":"p","since":17,"epoch":"E1"}') == ClientRequest("subscribe", "p", 17, "E1")
    assert parse_client_message('{"subscribe":"p","since":0}') == ClientRequest("subscribe", "p", 0)
    assert parse_client_message(' {"since":3, "subscribe":"p"} ') == ClientRequest("subscribe", "p", 3)


@pytest.mark.parametrize("text", [
    "hello", "", "{}", "[1,2]", '"subscribe"', '["subscribe", "x"]', '{"type": "chat", "subscribe": "x"}',
    '{"subscribe": "x"', "not json \"subscribe\"", '{"data": {"subscribe": "x"}}', '{"since": 1}',
    '{"subscribe\\u0020": "x"}', "[" * 10000 + '"subscribe"' + "]" * 10000,
])
def test_other_messages_are_not_subscription_messages(text: str) -> None:
    assert parse_client_message(text) is None


@pytest.mark.parametrize(("message", "error"), [
    ({"subscribe": "a", "unsubscribe": "b"}, "a message has either subscribe or unsubscribe, not both"),
    ({"subscribe": 5}, "subscribe: the topic must be a string, got int"),
    ({"unsubscribe": None}, "unsubscribe: the topic must be a string, got NoneType"),
    ({"subscribe": ""}, "subscribe: a topic name must not be empty"),
    ({"subscribe": "a b"}, "subscribe: topic 'a b' has the character ' '; allowed: letters, digits and _ . : @ / -"),
    ({"subscribe": "x" * 1025}, f"subscribe: topic {'x' * 60!r}... is longer than 1024 characters (max_topic_length)"),
    ({"subscribe": "a", "since": -1}, "since must be an integer offset >= 0, got -1"),
    ({"subscribe": "a", "since": "17"}, "since must be an integer offset >= 0, got '17'"),
    ({"subscribe": "a", "since": 1.5}, "since must be an integer offset >= 0, got 1.5"),
    ({"subscribe": "a", "since": True}, "since must be an integer offset >= 0, got True"),
    ({"subscribe": "a", "since": 2**63}, f"since must be an integer offset >= 0, got {2**63}"),
    ({"subscribe": "a", "epoch": "E"}, "epoch goes with since (the epoch of that offset)"),
    ({"subscribe": "a", "since": 1, "epoch": "E!"}, "epoch 'E!' must be 1-64 characters of letters, digits, _ and -"),
    ({"subscribe": "a", "since": 1, "epoch": 7}, "epoch must be a string of 1-64 letters, digits, _ and -, got int"),
    ({"unsubscribe": "a", "since": 1}, "unsubscribe takes no since or epoch"),
])
def test_malformed_subscription_messages(message: dict[str, object], error: str) -> None:
    assert parse_client_message(json.dumps(message)) == error


def test_client_message_topic_length_is_configurable() -> None:
    assert parse_client_message('{"subscribe":"abcde"}', max_topic_length=4) == (
        "subscribe: topic 'abcde' is longer than 4 characters (max_topic_length)")


# -- topic_field ---------------------------------------------------------------------------------------


def test_topic_reader() -> None:
    topic_of = topic_reader("symbol")
    assert topic_of({"symbol": "AAPL", "p": 1}) == "AAPL"
    assert topic_of({"p": 1}) is None  # no field: every client
    assert topic_of({"symbol": None}) is None
    assert topic_of("a plain string") is None
    assert topic_of([1, 2]) is None
    with pytest.raises(EncodeError, match=r"^topic_field 'symbol': the topic must be a string, got int$"):
        topic_of({"symbol": 42})
    with pytest.raises(EncodeError, match=r"^topic_field 'symbol': topic 'a b' has the character ' '"):
        topic_of({"symbol": "a b"})
    with pytest.raises(EncodeError, match=r"^topic_field 'symbol': a topic name must not be empty$"):
        topic_of({"symbol": ""})
    nested = topic_reader("meta.topic", max_len=3)
    assert nested({"meta": {"topic": "abc"}}) == "abc"
    assert nested({"meta": "x"}) is None
    with pytest.raises(EncodeError, match="longer than 3 characters"):
        nested({"meta": {"topic": "abcd"}})


async def test_validate_accepts_the_topic_keys(tmp_path: Path) -> None:
    bp = tmp_path / "s.yaml"
    bp.write_text(
        "system:\n  name: s\n  components:\n"
        "    - name: ws\n      type: WebSocket\n      config:\n"
        "        topic_field: meta.symbol\n        firehose: false\n        client_subscriptions: true\n"
        "        history_size: 100\n        history_ttl: 60\n        deliver_latest: true\n"
        "        max_topics_per_client: 10\n        max_topic_length: 64\n        topic_metrics: 5\n"
        "        auth: {tokens: [t1], token_topics: {t1: ['prices.*', news]}}\n"
    )
    code, out, err = await fastws_cli("validate", "--strict", str(bp))
    assert (code, err) == (0, ""), err
    assert out.startswith(f"{bp}: OK")


def test_component_topic_field_bad_values_are_error_reports_even_when_not_serving() -> None:
    from fastws import WebSocketComponent

    comp = WebSocketComponent("ws", {"port": 0, "topic_field": "t"})
    reports = comp._broadcast([{"t": "a"}, {"t": 5}, {"x": 1}, {"t": "a b"}])
    assert [r["broadcast_to"] for r in reports] == [0, 0, 0, 0]
    assert [r.get("error") for r in reports] == [
        None, "topic_field 't': the topic must be a string, got int", None,
        "topic_field 't': topic 'a b' has the character ' '; allowed: letters, digits and _ . : @ / -"]
    assert comp.broadcast({"t": []})["error"] == "topic_field 't': the topic must be a string, got list"
    assert comp.broadcast_errors == 3 and comp.error_count == 3
