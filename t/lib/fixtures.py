"""The bodies of the factory fixtures (nginx_factory, backend, procs,
rnginx, raw_backend...): a fixture yields from one of these, so that each
stops what its test made, whatever the test did."""


def made(make_one):
    """Yields make(*args, **kw) -> make_one(*args, **kw); at teardown every
    one made is stopped, in order."""
    made = []

    def make(*args, **kw):
        x = make_one(*args, **kw)
        made.append(x)
        return x

    yield make
    for x in made:
        x.stop()


def nginxes(tmp_path, cls):
    """Yields make(http, start=True, port=None, check=True, **kw) -> a cls
    (lib.nginx.Nginx or a subclass) in tmp_path/nginxN, started (and
    waited for on port) unless start is false. At teardown every one is
    stopped, then those made with check must have a clean log
    (check_log())."""
    made = []

    def make(http, start=True, port=None, check=True, **kw):
        n = cls(tmp_path / ("nginx%d" % len(made)), http, **kw)
        n.check = check
        made.append(n)
        if start:
            n.start(port)
        return n

    yield make
    for n in made:
        n.stop()
    for n in made:
        if n.check:
            n.check_log()
