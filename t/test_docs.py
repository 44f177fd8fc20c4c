"""The documentation against the code: every directive and variable the
module defines is documented, with the contexts and defaults the code has;
every directive, variable, metric, label and log line the docs name exists
in the code; links resolve; the troubleshooting entries are complete; and
the production example passes nginx -t and works as described."""

import glob
import http.client
import os
import re
import socket
import ssl

import pytest

from lib.nginx import free_port
from lib.tls import self_signed
from lib.wsproto import TEXT, Client

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
MODULE_CPP = os.path.join(ROOT, "ngx_ws_heartbeat_module.cpp")
STATS_CPP = os.path.join(ROOT, "ngx", "ngx_ws_heartbeat_stats.cpp")
STATUS_CPP = os.path.join(ROOT, "ngx", "ngx_ws_heartbeat_status.cpp")
VARIABLES_CPP = os.path.join(ROOT, "ngx", "ngx_ws_heartbeat_variables.cpp")
HEADER_HPP = os.path.join(ROOT, "ngx", "ngx_ws_heartbeat.hpp")
DOCS = os.path.join(ROOT, "docs")
EXAMPLE = os.path.join(ROOT, "examples", "ws-heartbeat-site.conf")


def read(path):
    with open(path) as f:
        return f.read()


def c_block(text, start):
    """The text of the C array initializer that follows `start`."""
    i = text.index(start)
    j = text.index("};", i)
    return text[i:j]


def c_strings(text):
    """C string literals in text, unescaped."""
    return [re.sub(r'\\(.)', r'\1', s)
            for s in re.findall(r'"((?:[^"\\]|\\.)*)"', text)]


# what the code defines

def directives():
    """{name: (contexts, arg kind, conf field or None)} from the
    ngx_command_t table."""
    block = c_block(read(MODULE_CPP), "ngx_http_ws_heartbeat_commands[] =")
    found = {}
    for m in re.finditer(
            r'\{\s*ngx_string\("(\w+)"\),\s*([A-Z0-9_|\s]+?),\s*\w+,'
            r'\s*\w+,\s*(?:offsetof\(\w+,\s*(\w+)\)|0)', block):
        name, flags, field = m.group(1), m.group(2), m.group(3)
        flags = set(f.strip() for f in flags.split("|"))
        contexts = set()
        for flag, ctx in (("NGX_HTTP_MAIN_CONF", "http"),
                          ("NGX_HTTP_SRV_CONF", "server"),
                          ("NGX_HTTP_LOC_CONF", "location")):
            if flag in flags:
                contexts.add(ctx)
        kind = ("flag" if "NGX_CONF_FLAG" in flags else
                "noargs" if "NGX_CONF_NOARGS" in flags else "value")
        found[name] = (contexts, kind, field)
    assert len(found) == block.count("ngx_string("), \
        "ngx_command_t entries the parser did not understand"
    return found


def merge_defaults():
    """{conf field: default} from the merge function."""
    text = read(MODULE_CPP)
    out = {m.group(2): (m.group(1), int(m.group(3)))
           for m in re.finditer(
               r'ngx_conf_merge_(value|msec_value)\(conf->(\w+),\s*'
               r'prev->\w+,\s*(\d+)\)', text)}
    # a keyword: NGX_HTTP_WS_HB_<WHAT>_<KEYWORD>, e.g. ..._BUFFERS_RELEASE
    out.update({m.group(1): ("keyword", m.group(2).lower())
                for m in re.finditer(
                    r'ngx_conf_merge_uint_value\(conf->(\w+),\s*'
                    r'prev->\w+,\s*NGX_HTTP_WS_HB_[A-Z]+_([A-Z]+)\)', text)})
    return out


def variables():
    block = c_block(read(VARIABLES_CPP), "ngx_http_ws_heartbeat_vars[] =")
    names = re.findall(r'ngx_http_ws_heartbeat_var\("(\w+)"', block)
    assert names
    return names


def metric_families():
    block = c_block(read(STATUS_CPP), "ngx_http_ws_heartbeat_families[]")
    return re.findall(r'\{\s*"(\w+)",\s*"(\w+)",', block)


def end_names():
    return c_strings(c_block(read(STATS_CPP),
                             "ngx_http_ws_heartbeat_end_names[] ="))


def sides():
    text = read(HEADER_HPP)
    i = text.index("ngx_http_ws_heartbeat_side_name(ngx_uint_t which)")
    return c_strings(text[i:text.index("}", i)])


def log_formats():
    """Regexes of the module's log messages (error and debug)."""
    text = ""
    for path in [MODULE_CPP] + glob.glob(os.path.join(ROOT, "ngx", "*.cpp")):
        text += read(path)
    formats = []
    for m in re.finditer(r'ngx_log_(?:error|debug\d)\((.*?)\);', text, re.S):
        # the format: the first run of adjacent string literals
        run = re.search(r'(?:"(?:[^"\\]|\\.)*"\s*)+', m.group(1))
        if not run:
            continue
        fmt = "".join(c_strings(run.group(0)))
        rx = re.escape(fmt)
        rx = re.sub(r'%[a-zA-Z]+', '.+?', rx.replace(r'\%', '%'))
        formats.append(re.compile(rx))
    assert formats
    return formats


def close_reason_texts():
    text = read(os.path.join(ROOT, "src", "heartbeat.cpp"))
    body = text[text.index("to_string(close_reason r)"):]
    body = body[:body.index("\n}\n")]
    return [s for s in c_strings(body) if s not in ("none", "unknown")]


# what the docs say

def doc_files():
    files = glob.glob(os.path.join(DOCS, "*.md"))
    files.append(os.path.join(ROOT, "README.md"))
    files += [p for p in glob.glob(os.path.join(ROOT, "examples", "**", "*"),
                                   recursive=True) if os.path.isfile(p)]
    return sorted(files)


def doc_text():
    return "\n".join(read(p) for p in doc_files())


def sections(text, level="###"):
    """{heading: body} for headings of exactly this level."""
    parts = re.split(r'^(%s [^\n]+)\n' % re.escape(level), text, flags=re.M)
    out = {}
    for i in range(1, len(parts), 2):
        body = parts[i + 1]
        body = re.split(r'^#{1,%d} ' % len(level), body, flags=re.M)[0]
        out[parts[i][len(level) + 1:].strip()] = body
    return out


def table_cell(body, key):
    m = re.search(r'^\|\s*%s:?\s*\|(.*)\|\s*$' % key, body, re.M)
    return m.group(1).strip() if m else None


def parse_time_ms(value):
    """nginx time syntax (ngx_parse_time) to milliseconds."""
    units = {"ms": 1, "s": 1000, "m": 60000, "h": 3600000,
             "d": 86400000, "w": 604800000, "M": 2592000000,
             "y": 31536000000, "": 1000}
    total = 0
    for num, unit in re.findall(r'(\d+)(ms|[smhdwMy]?)', value):
        total += int(num) * units[unit]
    return total


# the directive reference

def test_every_directive_is_documented_with_syntax_default_context():
    text = read(os.path.join(DOCS, "directives.md"))
    docs = sections(text)
    defaults = merge_defaults()
    problems = []
    for name, (contexts, kind, field) in sorted(directives().items()):
        body = docs.get(name)
        if body is None:
            problems.append("%s: no '### %s' section in directives.md"
                            % (name, name))
            continue
        syntax = table_cell(body, "Syntax")
        default = table_cell(body, "Default")
        context = table_cell(body, "Context")
        if syntax is None or default is None or context is None:
            problems.append("%s: Syntax/Default/Context table incomplete"
                            % name)
            continue
        if "**%s**" % name not in syntax:
            problems.append("%s: Syntax does not name it: %s"
                            % (name, syntax))
        if kind == "flag" and not ("on" in syntax and "off" in syntax):
            problems.append("%s: Syntax lacks on | off: %s" % (name, syntax))
        documented = set(c.strip() for c in context.split(","))
        if documented != contexts:
            problems.append("%s: Context %s, code has %s"
                            % (name, sorted(documented), sorted(contexts)))
        if field in defaults:
            how, value = defaults[field]
            m = re.search(r'`%s\s+([^;`]+);`' % name, default)
            if not m:
                problems.append("%s: Default is not `%s ...;`: %s"
                                % (name, name, default))
            elif how == "keyword":
                if m.group(1).strip() != value:
                    problems.append("%s: Default %s, code has %s"
                                    % (name, m.group(1), value))
            elif how == "value":
                if m.group(1).strip() != ("on" if value else "off"):
                    problems.append("%s: Default %s, code has %s"
                                    % (name, m.group(1), value))
            elif parse_time_ms(m.group(1).strip()) != value:
                problems.append("%s: Default %s, code has %dms"
                                % (name, m.group(1), value))
        elif not re.fullmatch(r'[—–-]?', default):
            problems.append("%s: has no default in the code, docs say %s"
                            % (name, default))
    assert not problems, "\n".join(problems)


def test_no_documented_directive_is_missing_from_the_code():
    text = read(os.path.join(DOCS, "directives.md"))
    known = directives()
    extra = [h for h in sections(text)
             if h.startswith("ws_heartbeat") and h not in known]
    assert not extra, extra


def test_every_variable_is_in_metrics_md():
    path = os.path.join(DOCS, "metrics.md")
    assert os.path.exists(path), "docs/metrics.md does not exist (yet)"
    text = read(path)
    missing = [v for v in variables()
               if not re.search(r'\$%s\b' % v, text)]
    assert not missing, "variables not in docs/metrics.md: %s" % missing


# names the docs use must exist

def test_directives_named_in_docs_exist():
    known = set(directives())
    named = set(re.findall(r'(?<![\w$])(ws_heartbeat(?:_[a-z]+)*)\b',
                           doc_text()))
    assert not named - known, sorted(named - known)


def test_variables_named_in_docs_exist():
    known = set(variables())
    # "$ws_heartbeat_*" names them all
    named = set(n for n in re.findall(r'\$(ws_heartbeat\w*)', doc_text())
                if not n.endswith("_"))
    assert not named - known, sorted(named - known)


def test_metrics_and_labels_named_in_docs_exist():
    fams = dict(metric_families())
    names = set()
    for fam, kind in fams.items():
        names.add("nginx_ws_heartbeat_" + fam)
        if kind == "histogram":
            names.update("nginx_ws_heartbeat_%s_%s" % (fam, s)
                         for s in ("bucket", "sum", "count"))
    text = doc_text()
    named = set(re.findall(r'\bnginx_ws_heartbeat_\w+', text))
    assert not named - names, sorted(named - names)
    # families without the prefix, as in `closes_total{reason="drain"}`
    short = set(re.findall(r'\b([a-z_]+_(?:total|active|seconds(?:_\w+)?))'
                           r'\{', text))
    short -= names
    assert not short - set(n[len("nginx_ws_heartbeat_"):] for n in names), \
        sorted(short)
    reasons = set(re.findall(r'reason="(\w+)"', text))
    assert reasons, "no reason label named"
    assert not reasons - set(end_names()), sorted(reasons)
    peers = set(re.findall(r'(?:peer|from)="(\w+)"', text))
    assert not peers - set(sides()), sorted(peers)
    # every reason a close can have is explained in the troubleshooting
    trouble = read(os.path.join(DOCS, "troubleshooting.md"))
    unexplained = [r for r in end_names()[1:] if "`%s`" % r not in trouble]
    assert not unexplained, unexplained


def test_log_lines_quoted_in_docs_match_the_code():
    formats = log_formats()
    reasons = close_reason_texts()
    quoted = []
    for path in doc_files():
        text = read(path)
        spans = re.findall(r'```[^\n]*\n(.*?)```', text, re.S)
        spans += re.findall(r'`([^`\n]+)`', re.sub(r'```.*?```', '', text,
                                                   flags=re.S))
        for span in spans:
            for line in span.splitlines():
                if "ws heartbeat:" in line or "ws heartbeat disabled" in line:
                    quoted.append((os.path.relpath(path, ROOT), line))
    assert quoted
    bad = [q for q in quoted if not any(f.search(q[1]) for f in formats)]
    assert not bad, bad
    for path, line in quoted:
        m = re.search(r'closing, (?:client|upstream) (.+?) in location', line)
        if m:
            assert m.group(1) in reasons, (path, line)


def github_slug(heading):
    s = heading.strip().lower()
    s = re.sub(r'[^\w\- ]', '', s)
    return s.replace(" ", "-")


def test_links_between_docs_resolve():
    bad = []
    for path in doc_files():
        if not path.endswith(".md"):
            continue
        text = re.sub(r'```.*?```', '', read(path), flags=re.S)
        for target in re.findall(r'\]\(([^)\s]+)\)', text):
            if re.match(r'[a-z]+:', target):
                continue
            file, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(path),
                                                 file)) if file else path
            if not os.path.exists(dest):
                bad.append("%s: %s (no such file)"
                           % (os.path.relpath(path, ROOT), target))
                continue
            if anchor and dest.endswith(".md"):
                slugs = set(github_slug(h) for h in re.findall(
                    r'^#+ (.+)$', read(dest), re.M))
                if anchor not in slugs:
                    bad.append("%s: %s (no such heading)"
                               % (os.path.relpath(path, ROOT), target))
    assert not bad, "\n".join(bad)


def test_readme_links_the_docs():
    readme = read(os.path.join(ROOT, "README.md"))
    doc = readme.split("## Documentation", 1)[1].split("\n## ", 1)[0]
    for name in ("quickstart.md", "how-it-works.md", "troubleshooting.md",
                 "building.md", "directives.md"):
        assert "(docs/%s)" % name in doc, name


TOPICS = [
    r'1006.*60 seconds',
    r'load balancer',
    r'change networks',
    r'[Rr]econnect storm',
    r'[Oo]ld worker',
    r'Upgrade and Connection',
    r'HTTP/1\.0',
    r'[Ss]everal backends',
    r'TLS certificate',
]


def test_troubleshooting_entries_are_complete():
    entries = sections(read(os.path.join(DOCS, "troubleshooting.md")), "##")
    entries.pop("Before you start")
    for rx in TOPICS:
        assert any(re.search(rx, h) for h in entries), rx
    for heading, body in entries.items():
        for part in ("**Symptom.**", "**Cause.**", "**Fix.**",
                     "**Confirm.**"):
            assert part in body, (heading, part)
        assert "```nginx" in body, (heading, "no configuration")
        confirm = body.split("**Confirm.**", 1)[1]
        assert re.search(r'_total|connections_active|reason=|ws heartbeat:',
                         confirm), (heading, "no metric or log line")


def test_how_it_works_has_a_sequence_diagram():
    text = read(os.path.join(DOCS, "how-it-works.md"))
    assert "```mermaid\nsequenceDiagram" in text


# the production example

@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("cert"), "ws.example.com",
                       "fullchain.pem", "privkey.pem")


def ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def example_conf(tmp_path, cert, http_port, https_port, backends):
    """The example with throwaway ports, certificate, logs and backends;
    every substitution must apply, so the example keeps its shape."""
    conf = read(EXAMPLE)
    logs = tmp_path / "example-logs"
    logs.mkdir(exist_ok=True)
    subs = [
        (r'listen 80;', 'listen 127.0.0.1:%d;' % http_port),
        (r'listen \[::\]:80;',
         'listen [::1]:%d;' % http_port if ipv6_loopback() else ''),
        (r'listen 443 ssl;', 'listen 127.0.0.1:%d ssl;' % https_port),
        (r'listen \[::\]:443 ssl;',
         'listen [::1]:%d ssl;' % https_port if ipv6_loopback() else ''),
        (r'/etc/letsencrypt/live/ws\.example\.com/fullchain\.pem', cert[0]),
        (r'/etc/letsencrypt/live/ws\.example\.com/privkey\.pem', cert[1]),
        (r'/var/log/nginx/', str(logs) + '/'),
        (r'server 127\.0\.0\.1:8001;', 'server 127.0.0.1:%d;' % backends[0]),
        (r'server 127\.0\.0\.1:8002;', 'server 127.0.0.1:%d;' % backends[1]),
    ]
    for rx, new in subs:
        conf, n = re.subn(rx, new, conf)
        assert n >= 1, "example has no %s" % rx
    return conf


def test_example_has_the_production_shape():
    conf = read(EXAMPLE)
    for rx in (r'return 301 https://\$host\$request_uri;',
               r'map \$http_upgrade \$connection_upgrade',
               r'listen 443 ssl;',
               r'ssl_certificate\s',
               r'proxy_set_header\s+Connection \$connection_upgrade;',
               r'ws_heartbeat\s+on;',
               r'ws_heartbeat_status;',
               r'allow 127\.0\.0\.1;',
               r'deny\s+all;'):
        assert re.search(rx, conf), rx


def test_example_passes_nginx_t(nginx_factory, cert, tmp_path):
    conf = example_conf(tmp_path, cert, free_port(), free_port(),
                        (free_port(), free_port()))
    n = nginx_factory(conf, start=False, check=False)
    rc, out = n.test_config()
    assert rc == 0 and "test is successful" in out, out
    assert "[warn]" not in out, out


def https(port, path, source="127.0.0.1"):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx,
                                    timeout=10, source_address=(source, 0))
    c.request("GET", path, headers={"Host": "ws.example.com"})
    r = c.getresponse()
    body = r.read().decode()
    c.close()
    return r.status, body


def test_example_works(nginx_factory, backend, cert, tmp_path):
    """Redirect, wss with heartbeats, the status endpoint for the host only."""
    b1, b2 = backend(), backend()
    http_port, https_port = free_port(), free_port()
    conf = example_conf(tmp_path, cert, http_port, https_port,
                        (b1.port, b2.port))
    # a short interval, so that the test sees Pings
    conf = conf.replace("ws_heartbeat_interval     25s;",
                        "ws_heartbeat_interval     200ms;")
    assert "200ms" in conf
    nginx_factory(conf, port=https_port)

    c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
    c.request("GET", "/ws/chat?x=1", headers={"Host": "ws.example.com"})
    r = c.getresponse()
    assert r.status == 301
    assert r.getheader("Location") == "https://ws.example.com/ws/chat?x=1"
    c.close()

    ws = Client(https_port, path="/ws/chat", tls=True)
    assert ws.status == 101
    ws.pump(0.7)
    assert ws.pings, "no Ping through the example's WebSocket location"
    ws.send_frame(TEXT, b"hello")
    assert ws.recv_frame().payload == b"hello"

    status, body = https(https_port, "/ws-heartbeat-status")
    assert status == 200
    assert 'nginx_ws_heartbeat_connections_active{group=""} 1' in body, body
    status, _ = https(https_port, "/ws-heartbeat-status", "127.0.0.2")
    assert status == 403
    ws.close()
