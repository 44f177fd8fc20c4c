"""nginx -t with the module loaded: every directive in every context is
accepted; each bad value is rejected with a message naming the directive
and the value."""

import os

import pytest

from conftest import proxy_server

ALL = """
    ws_heartbeat on;
    ws_heartbeat_interval 250ms;
    ws_heartbeat_timeout 1s;
    ws_heartbeat_upstream on;
    ws_heartbeat_read_timeout 5m;
    ws_heartbeat_send_timeout 2s;
    ws_heartbeat_drain on;
    ws_heartbeat_drain_timeout 3s;
    ws_heartbeat_drain_spread 4s;
    ws_heartbeat_max_age 1h 5m;
    ws_heartbeat_metrics_group chat;
    ws_heartbeat_idle_buffers keep;
"""


def conf_t(nginx_factory, http):
    n = nginx_factory(http, start=False, check=False)
    return n.test_config()


@pytest.mark.parametrize("where", ["http", "server", "location"])
def test_every_directive_in_every_context(nginx_factory, where):
    http = ALL if where == "http" else ""
    server = ALL if where == "server" else ""
    location = ALL if where == "location" else ""
    rc, out = conf_t(nginx_factory, """
%s
    server {
        listen 127.0.0.1:1;
        %s
        location / {
            proxy_pass http://127.0.0.1:2;
            proxy_read_timeout 60s;
            %s
        }
    }
""" % (http, server, location))
    assert rc == 0, out
    assert "test is successful" in out
    assert "[warn]" not in out, out


@pytest.mark.parametrize("directive,value,message", [
    ("ws_heartbeat_interval", "abc",
     'invalid value "abc" in "ws_heartbeat_interval" directive'),
    ("ws_heartbeat_interval", "0",
     'invalid value "0" in "ws_heartbeat_interval" directive, it must be '
     'between 10ms and 30d'),
    ("ws_heartbeat_interval", "5ms",
     'invalid value "5ms" in "ws_heartbeat_interval" directive'),
    ("ws_heartbeat_interval", "31d",
     'invalid value "31d" in "ws_heartbeat_interval" directive'),
    ("ws_heartbeat_timeout", "-1s",
     'invalid value "-1s" in "ws_heartbeat_timeout" directive'),
    ("ws_heartbeat_timeout", "0",
     'invalid value "0" in "ws_heartbeat_timeout" directive'),
    ("ws_heartbeat_read_timeout", "soon",
     'invalid value "soon" in "ws_heartbeat_read_timeout" directive'),
    ("ws_heartbeat_send_timeout", "1ms",
     'invalid value "1ms" in "ws_heartbeat_send_timeout" directive, it must '
     'be 0 (off) or between 10ms and 30d'),
    ("ws_heartbeat", "maybe",
     'invalid value "maybe" in "ws_heartbeat" directive, it must be "on" or '
     '"off"'),
    ("ws_heartbeat_upstream", "yes",
     'invalid value "yes" in "ws_heartbeat_upstream" directive'),
    ("ws_heartbeat_drain", "sometimes",
     'invalid value "sometimes" in "ws_heartbeat_drain" directive'),
    ("ws_heartbeat_drain_timeout", "0",
     'invalid value "0" in "ws_heartbeat_drain_timeout" directive, it must '
     'be between 10ms and 30d'),
    ("ws_heartbeat_drain_spread", "later",
     'invalid value "later" in "ws_heartbeat_drain_spread" directive'),
    ("ws_heartbeat_drain_spread", "5ms",
     'invalid value "5ms" in "ws_heartbeat_drain_spread" directive, it must '
     'be 0 (off) or between 10ms and 30d'),
    ("ws_heartbeat_max_age", "forever",
     'invalid value "forever" in "ws_heartbeat_max_age" directive'),
    ("ws_heartbeat_max_age", "0",
     'invalid value "0" in "ws_heartbeat_max_age" directive, it must be '
     'between 10ms and 30d'),
    ("ws_heartbeat_max_age", "1h 2h",
     'invalid value "2h" in "ws_heartbeat_max_age" directive, the jitter '
     'must not exceed the age "1h"'),
    ("ws_heartbeat_max_age", "1h soon",
     'invalid value "soon" in "ws_heartbeat_max_age" directive'),
    ("ws_heartbeat_max_age", "off 5m",
     'invalid value "5m" in "ws_heartbeat_max_age" directive, "off" takes '
     'no jitter'),
    ("ws_heartbeat_max_age", "1h 1m 1s",
     'invalid number of arguments in "ws_heartbeat_max_age" directive'),
    ("ws_heartbeat_idle_buffers", "free",
     'invalid value "free" in "ws_heartbeat_idle_buffers" directive, it '
     'must be "release" or "keep"'),
    ("ws_heartbeat_idle_buffers", "release keep",
     'invalid number of arguments in "ws_heartbeat_idle_buffers" '
     'directive'),
    ("ws_heartbeat_status", "json",
     'invalid number of arguments in "ws_heartbeat_status" directive'),
    ("ws_heartbeat_metrics_group", "'chat room'",
     'invalid value "chat room" in "ws_heartbeat_metrics_group" directive, '
     'a group name has only letters, digits, "_", "." and "-"'),
    ("ws_heartbeat_metrics_group", "'a\\\"b'",
     'in "ws_heartbeat_metrics_group" directive, a group name has only'),
    ("ws_heartbeat_metrics_group", "x" * 33,
     'invalid value "%s" in "ws_heartbeat_metrics_group" directive, a group '
     'name has at most 32 characters' % ("x" * 33)),
    ("ws_heartbeat_metrics_group", "chat feed",
     'invalid number of arguments in "ws_heartbeat_metrics_group" '
     'directive'),
    ("ws_heartbeat", "on off",
     'invalid number of arguments in "ws_heartbeat" directive'),
    ("ws_heartbeat_interval", "",
     'invalid number of arguments in "ws_heartbeat_interval" directive'),
])
def test_bad_value_is_rejected(nginx_factory, directive, value, message):
    rc, out = conf_t(nginx_factory, """
    server {
        listen 127.0.0.1:1;
        location / { %s %s; }
    }
""" % (directive, value))
    assert rc != 0, out
    assert "[emerg]" in out and message in out, out


@pytest.mark.parametrize("directive,value", [
    ("ws_heartbeat", "on"),
    ("ws_heartbeat_interval", "1s"),
    ("ws_heartbeat_timeout", "1s"),
    ("ws_heartbeat_upstream", "off"),
    ("ws_heartbeat_read_timeout", "0"),
    ("ws_heartbeat_send_timeout", "1s"),
    ("ws_heartbeat_drain", "off"),
    ("ws_heartbeat_drain_timeout", "1s"),
    ("ws_heartbeat_drain_spread", "1s"),
    ("ws_heartbeat_max_age", "off"),
    ("ws_heartbeat_idle_buffers", "keep"),
    ("ws_heartbeat_status", ""),
    ("ws_heartbeat_metrics_group", "chat"),
])
def test_duplicate_is_rejected(nginx_factory, directive, value):
    rc, out = conf_t(nginx_factory, """
    server {
        listen 127.0.0.1:1;
        location / { %s %s; %s %s; }
    }
""" % (directive, value, directive, value))
    assert rc != 0, out
    assert '"%s" directive is duplicate' % directive in out, out


def groups_conf(n, extra=""):
    """n locations, each with a group of its own (and the server with
    "shared", also the name of the first location's group)."""
    return """
    ws_heartbeat_metrics_group shared;
    server {
        listen 127.0.0.1:1;
        %s
        %s
    }
""" % (extra, "\n        ".join(
        "location /%d { ws_heartbeat_metrics_group %s; }"
        % (i, "shared" if i == 0 else "g%d" % i) for i in range(n)))


def test_64_groups_and_not_one_more(nginx_factory):
    """Bounded cardinality: 64 distinct names (a name used twice counts
    once, "" is not one of them); the 65th fails nginx -t naming it."""
    rc, out = conf_t(nginx_factory, groups_conf(64, """
        location /again { ws_heartbeat_metrics_group g1; }
        location /none { ws_heartbeat_metrics_group ""; }"""))
    assert rc == 0, out
    rc, out = conf_t(nginx_factory, groups_conf(65))
    assert rc != 0, out
    assert '[emerg]' in out and 'invalid value "g64" in ' \
        '"ws_heartbeat_metrics_group" directive, at most 64 groups in a ' \
        'configuration' in out, out


def test_zero_turns_optional_timeouts_off(nginx_factory):
    rc, out = conf_t(nginx_factory, """
    ws_heartbeat_read_timeout 0;
    ws_heartbeat_send_timeout 0s;
    server { listen 127.0.0.1:1; }
""")
    assert rc == 0, out


def test_warns_when_proxy_read_timeout_fires_first(nginx_factory):
    rc, out = conf_t(nginx_factory, proxy_server(1, 2, """
            ws_heartbeat on;
            ws_heartbeat_interval 60s;
            proxy_read_timeout 30s;"""))
    assert rc == 0, out
    assert '[warn]' in out and '"ws_heartbeat_interval" 60000ms is not ' \
        'less than "proxy_read_timeout" 30000ms' in out, out


VARIABLE_PROXY_PASS = """
    server {
        listen 127.0.0.1:1;
        location / {
            set $backend 127.0.0.1:2;
            proxy_pass http://$backend;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            ws_heartbeat on;
            ws_heartbeat_interval %s;
            proxy_read_timeout 30s;
        }
    }
"""


# proxy_pass with variables sets no upstream, only the content handler
def test_warns_when_proxy_read_timeout_fires_first_with_variables(
        nginx_factory):
    rc, out = conf_t(nginx_factory, VARIABLE_PROXY_PASS % "60s")
    assert rc == 0, out
    assert '[warn]' in out and '"ws_heartbeat_interval" 60000ms is not ' \
        'less than "proxy_read_timeout" 30000ms' in out, out


def test_no_warning_with_variables_when_interval_is_shorter(nginx_factory):
    rc, out = conf_t(nginx_factory, VARIABLE_PROXY_PASS % "20s")
    assert rc == 0 and "test is successful" in out, out
    assert "[warn]" not in out, out


def test_warns_when_send_timeout_fires_first(nginx_factory):
    rc, out = conf_t(nginx_factory, proxy_server(1, 2, """
            ws_heartbeat on;
            ws_heartbeat_send_timeout 90s;"""))
    assert rc == 0, out
    assert '"ws_heartbeat_send_timeout" 90000ms is not less than ' \
        '"send_timeout" 60000ms' in out, out


def test_no_warning_when_off(nginx_factory):
    rc, out = conf_t(nginx_factory, proxy_server(1, 2, """
            ws_heartbeat_interval 60s;
            proxy_read_timeout 30s;"""))
    assert rc == 0 and "[warn]" not in out, out


@pytest.mark.skipif(not os.environ.get("NGX_WS_HEARTBEAT_MODULE", "x"),
                    reason="the module is built into this nginx")
def test_unknown_directive_without_module(nginx_factory):
    """Sanity: the directives come from the module."""
    n = nginx_factory("ws_heartbeat on;", start=False, check=False,
                      load_module=False)
    rc, out = n.test_config()
    assert rc != 0 and 'unknown directive "ws_heartbeat"' in out, out


def test_status_location(nginx_factory):
    rc, out = conf_t(nginx_factory, """
    server {
        listen 127.0.0.1:1;
        location = /status { ws_heartbeat_status; }
    }
""")
    assert rc == 0, out


def test_status_not_in_http_context(nginx_factory):
    rc, out = conf_t(nginx_factory, "ws_heartbeat_status;")
    assert rc != 0 and '"ws_heartbeat_status" directive is not allowed ' \
        'here' in out, out


@pytest.mark.parametrize("shutdown,warned", [("5s", True), ("15s", False),
                                             ("", False)])
def test_warns_when_the_drain_outlasts_worker_shutdown_timeout(
        nginx_factory, shutdown, warned):
    """The default spread (10s) and drain timeout (5s) need 15s; a
    worker_shutdown_timeout given after the http block counts too."""
    n = nginx_factory(proxy_server(1, 2, """
            ws_heartbeat on;"""), start=False, check=False)
    if shutdown:
        with open(n.conf, "a") as f:
            f.write("worker_shutdown_timeout %s;\n" % shutdown)
    rc, out = n.test_config()
    assert rc == 0, out
    message = ('"ws_heartbeat_drain_spread" + "ws_heartbeat_drain_timeout" '
               '15000ms exceed "worker_shutdown_timeout" 5000ms, the spread '
               'is cut to fit')
    assert (message in out) == warned, out


def test_a_status_location_is_not_warned_about(nginx_factory):
    rc, out = conf_t(nginx_factory, """
    server {
        listen 127.0.0.1:1;
        ws_heartbeat on;
        ws_heartbeat_interval 60s;
        location / {
            set $backend 127.0.0.1:2;
            proxy_pass http://$backend;
            proxy_read_timeout 30s;
        }
        # proxy_read_timeout 60s here, but no proxy_pass: no warning
        location = /status { ws_heartbeat_status; }
    }
""")
    assert rc == 0, out
    assert out.count("[warn]") == 1, out
    assert '"ws_heartbeat_interval" 60000ms is not less than ' \
        '"proxy_read_timeout" 30000ms' in out, out
