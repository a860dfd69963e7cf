"""fastws.config: every config error names its key, in one wording; strict Server, lenient parse."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from fastws import ConfigError, ServerConfig
from fastws.config import FRAMEWORK_KEYS, UPSTREAM_KEYS, ConfigRequirement, config_requirements, parse_struct

AUTH = {"tokens": ["t"]}

#: (config, the whole message ServerConfig.from_dict raises)
ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"port": 70000}, "config.port: must be 1-65535 (0 picks a free port), got 70000"),
    ({"port": "80"}, "config.port: expected an integer, got '80'"),
    ({"port": 1.5}, "config.port: expected an integer, got 1.5"),
    ({"max_connections": 0}, "config.max_connections: must be a positive integer, got 0"),
    ({"heartbeat_interval": 0}, "config.heartbeat_interval: must be a positive number of seconds, got 0.0"),
    ({"heartbeat_timeout": -1}, "config.heartbeat_timeout: must be a positive number of seconds, got -1.0"),
    ({"max_queued_bytes": 10}, "config.max_queued_bytes: must be at least 4096, got 10"),
    ({"max_message_size": 10}, "config.max_message_size: must be at least 125, got 10"),
    ({"handshake_timeout": 0}, "config.handshake_timeout: must be a positive number of seconds, got 0.0"),
    ({"close_timeout": -1}, "config.close_timeout: must be >= 0 seconds, got -1.0"),
    ({"close_timeout": float("nan")}, "config.close_timeout: must be >= 0 seconds, got nan"),
    ({"fragment_timeout": 0}, "config.fragment_timeout: must be a positive number of seconds, got 0.0"),
    ({"fragment_timeout": float("nan")}, "config.fragment_timeout: must be a positive number of seconds, got nan"),
    ({"backlog": 0}, "config.backlog: must be a positive integer, got 0"),
    ({"max_batch": 0}, "config.max_batch: must be a positive integer, got 0"),
    ({"host": ""}, "config.host: must not be empty, got ''"),
    ({"page_path": "x"}, "config.page_path: must be a path starting with '/' (no query, no spaces), got 'x'"),
    ({"workers": 0}, "config.workers: must be a positive integer or 'auto', got 0"),
    ({"workers": "many"}, "config.workers: invalid enum value 'many'"),
    ({"backplane": "http://x"},
     "config.backplane: must be a redis://host:port/db, nats://host:port or memory://name URL, got 'http://x'"),
    ({"backplane_channel": "a b"}, "config.backplane_channel: must be a non-empty name without spaces, '*' or '>', got 'a b'"),
    ({"ssl": {"certfile": ""}}, "config.ssl.certfile: must name a PEM file, got ''"),
    ({"ssl": {"certfile": "c", "keyfile": ""}}, "config.ssl.keyfile: must name a PEM file or be left out, got ''"),
    ({"ssl": {"cert": "c"}}, "config.ssl.cert: unknown field"),
    ({"ssl": {}}, "config.ssl.certfile: missing required field"),
    ({"auth": {"tokens": [""]}}, "config.auth.tokens: must not contain empty tokens, got ['']"),
    ({"auth": {"tokens": [1]}}, "config.auth.tokens[0]: expected a string, got 1"),
    ({"auth": {"jwt_secret": "short"}}, "config.auth.jwt_secret: must be at least 16 characters, got '<hidden>'"),
    ({"auth": {**AUTH, "leeway": -1}}, "config.auth.leeway: must be >= 0 seconds, got -1.0"),
    # NaN or inf would make every expired JWT valid (t >= exp + leeway is never true)
    ({"auth": {**AUTH, "leeway": float("nan")}}, "config.auth.leeway: must be >= 0 seconds, got nan"),
    ({"auth": {**AUTH, "leeway": float("inf")}}, "config.auth.leeway: must be >= 0 seconds, got inf"),
    ({"auth": {**AUTH, "query_param": ""}}, "config.auth.query_param: must be a parameter name or null, got ''"),
    ({"auth": {}}, "config.auth: set tokens, jwt_secret or allowed_origins (or leave auth out), got {}"),
    ({"auth": {**AUTH, "jwt_audience": "a"}}, "config.auth.jwt_audience: needs auth.jwt_secret, got 'a'"),
    ({"max_messages_per_second": 0}, "config.max_messages_per_second: must be a positive number or null, got 0.0"),
    ({"max_messages_per_second": 1, "burst": 0}, "config.burst: must be a positive integer, got 0"),
    ({"burst": 3}, "config.burst: needs max_messages_per_second, got 3"),
    ({"broadcast_rate_limit": 0},
     "config.broadcast_rate_limit: must be a positive number of messages per second or null, got 0.0"),
    ({"health_path": "x"}, "config.health_path: must be a path starting with '/' (no query, no spaces) or null, got 'x'"),
    ({"metrics_path": "/health"}, "config.metrics_path: must differ from health_path, got '/health'"),
    ({"metrics_port": 70000}, "config.metrics_port: must be 0-65535 (0 picks a free port) or null, got 70000"),
    ({"metrics_host": "127.0.0.1"}, "config.metrics_host: needs metrics_port (and must not be empty), got '127.0.0.1'"),
    ({"metrics_token": " "}, "config.metrics_token: must not be empty (leave it out for no token), got ' '"),
    ({"compression": "gzip"}, "config.compression: expected one of 'deflate', 'off', got 'gzip'"),
    ({"compression_level": 0},
     "config.compression_level: must be 1-9 (zlib level; use compression: off for none), got 0"),
    ({"compression_min_size": -1}, "config.compression_min_size: must be >= 0 bytes, got -1"),
    ({"slow_client_policy": "ignore"}, "config.slow_client_policy: expected one of 'disconnect', 'drop', got 'ignore'"),
    ({"page": "yes"}, "config.page: expected a boolean, got 'yes'"),
    # topics (issue 15)
    ({"topic_field": ""}, "config.topic_field: must be a field name or a dotted path like 'meta.topic', got ''"),
    ({"topic_field": "a..b"}, "config.topic_field: must be a field name or a dotted path like 'meta.topic', got 'a..b'"),
    ({"firehose": "yes"}, "config.firehose: expected a boolean, got 'yes'"),
    ({"client_subscriptions": 1}, "config.client_subscriptions: expected a boolean, got 1"),
    ({"deliver_latest": "no"}, "config.deliver_latest: expected a boolean, got 'no'"),
    ({"history_size": -1}, "config.history_size: must be >= 0 messages per topic (0: no history), got -1"),
    ({"history_ttl": -1}, "config.history_ttl: must be >= 0 seconds (0: no expiry), got -1.0"),
    ({"history_ttl": float("inf")}, "config.history_ttl: must be >= 0 seconds (0: no expiry), got inf"),
    ({"topic_idle_ttl": -1},
     "config.topic_idle_ttl: must be >= 0 seconds (0: topics are never evicted), got -1.0"),
    ({"topic_idle_ttl": float("nan")},
     "config.topic_idle_ttl: must be >= 0 seconds (0: topics are never evicted), got nan"),
    ({"max_topics_per_client": 0}, "config.max_topics_per_client: must be a positive integer, got 0"),
    ({"max_topic_length": 0}, "config.max_topic_length: must be 1-1024 characters, got 0"),
    ({"max_topic_length": 2000}, "config.max_topic_length: must be 1-1024 characters, got 2000"),
    ({"topic_metrics": -1}, "config.topic_metrics: must be >= 0 topics (0: no per-topic series), got -1"),
    # the token is a secret: the message never shows it
    ({"auth": {"tokens": ["tok"], "token_topics": {"other": ["x"]}}},
     "config.auth.token_topics: a key is not one of auth.tokens (each key is a static token, whose topics it lists)"),
    ({"auth": {"tokens": ["tok"], "token_topics": {"tok": "x"}}},
     "config.auth.token_topics[...]: expected a list, got a string"),
    ({"auth": {"tokens": ["tok"], "token_topics": {"tok": [1]}}},
     "config.auth.token_topics[...][0]: expected a string, got an integer"),
    ({"auth": {"tokens": ["a", "tok"], "token_topics": {"tok": ["ok", "x*y"]}}},
     "config.auth.token_topics: the topics of auth.tokens[1], entry 1: pattern 'x*y': '*' is allowed only at the "
     "end (a topic name, prefix* or *)"),
    ({"auth": {"tokens": ["tok"], "token_topics": {"tok": [""]}}},
     "config.auth.token_topics: the topics of auth.tokens[0], entry 0: pattern '': a topic name must not be empty "
     "(a topic name, prefix* or *)"),
    ({"auth": {"tokens": ["tok"], "token_topics": {"tok": ["a b"]}}},
     "config.auth.token_topics: the topics of auth.tokens[0], entry 0: pattern 'a b': topic 'a b' has the character "
     "' '; allowed: letters, digits and _ . : @ / - (a topic name, prefix* or *)"),
    ({"max_topic_length": 4, "auth": {"tokens": ["tok"], "token_topics": {"tok": ["abcdef*"]}}},
     "config.auth.token_topics: the topics of auth.tokens[0], entry 0: pattern 'abcdef*': topic 'abcdef' is longer "
     "than 4 characters (max_topic_length) (a topic name, prefix* or *)"),
    ({"prot": 1}, "config.prot: unknown key; known keys are: " + ", ".join(ServerConfig.__struct_fields__)
     + "; did you mean 'port'?"),
]


@pytest.mark.parametrize(("config", "message"), ERRORS, ids=[next(iter(c)) + f"-{i}" for i, (c, _) in enumerate(ERRORS)])
def test_every_server_config_error_names_its_key(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        ServerConfig.from_dict(config)
    assert str(info.value) == message


def test_path_prefix_and_non_mapping() -> None:
    with pytest.raises(ConfigError, match=r"^components\[2\]\.config\.port: must be 1-65535"):
        ServerConfig.from_dict({"port": -1}, path="components[2].config")
    with pytest.raises(ConfigError, match=r"^config: expected a mapping of settings, got \[1\]$"):
        ServerConfig.from_dict([1])  # type: ignore[arg-type]


def test_framework_and_upstream_keys_are_ignored_even_by_the_strict_server_config() -> None:
    assert UPSTREAM_KEYS <= FRAMEWORK_KEYS
    config = ServerConfig.from_dict({key: 1 for key in FRAMEWORK_KEYS} | {"port": 0})
    assert config.port == 0


def test_direct_construction_checks_too() -> None:
    with pytest.raises(ConfigError, match="port: must be 1-65535"):
        ServerConfig(port=-5)


class Small(msgspec.Struct, forbid_unknown_fields=True):
    level: int = 1
    mode: str = "a"


def test_parse_struct_ignore_mode_returns_the_unknown_keys() -> None:
    settings, ignored = parse_struct(Small, {"level": 2, "extra": 1, "type": "X", "other": None}, unknown="ignore")
    assert settings == Small(level=2) and ignored == ("extra", "other")
    with pytest.raises(ConfigError, match=r"^c\.level: expected an integer, got 'x'$"):
        parse_struct(Small, {"level": "x", "extra": 1}, "c", unknown="ignore")


def test_config_requirements_are_objects_with_the_originals_fields() -> None:
    reqs = config_requirements(ServerConfig)
    assert [r.name for r in reqs] == list(ServerConfig.__struct_fields__)
    host = reqs[0]
    assert host == ConfigRequirement(name="host", type="str", description="", required=False,
                                     default="0.0.0.0", example="0.0.0.0")
    ssl = next(r for r in reqs if r.name == "ssl")
    assert ssl.type == "SSLConfig | None" and ssl.default is None
