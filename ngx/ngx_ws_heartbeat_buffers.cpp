
/*
 * ngx_ws_heartbeat_module: the relay's buffers while a connection is idle
 * (ws_heartbeat_idle_buffers release). nginx keeps the two buffers of
 * ngx_http_upstream_process_upgraded(), u->buffer (upstream to client)
 * and u->from_client (client to upstream), proxy_buffer_size each, for
 * the whole life of an upgraded connection; most of the time they are
 * empty. Before every pass of the relay the buffer of the direction it
 * runs is there again (reacquire); after the first pass and at the
 * module's timer ticks both go back to the request's pool when nothing is
 * in them (release-if-idle; "When" below). Also TLS's write buffers of
 * both connections (ssl_buffer_size, 16k each), used only for the 101
 * header and the request to the upstream.
 *
 * The hooks. There is one layer of the module's handlers over nginx's:
 * each relay event's handler of the module (client readable:
 * ngx_ws_heartbeat_timer.cpp, its timer too; client or upstream writable:
 * ngx_ws_heartbeat_io.cpp; upstream readable: here) tests its direction's
 * buffer and comes here only when it is released (buffers_wake()). Only
 * the client's read handler is the module's all the time (the timer is
 * that event's). The other three are the module's while there is
 * something to do there: release() puts the handlers of the released
 * buffer's direction in (u->buffer: client writable, upstream readable;
 * u->from_client: upstream writable, since nginx's pass would allocate
 * it itself and keep it), the io file's watch() puts a write handler in
 * while the module's own bytes wait for that peer, and each handler puts
 * nginx's back when its buffer is there and nothing of the module's waits.
 * A swap replaces only the handler it expects: what nginx sets itself (at
 * finalize, a lingering close) stays. Measured: see ngx_ws_heartbeat_io.cpp
 * (887 -> 766 module instructions per 64 B message with the first two
 * steps: one layer, the handlers swapped).
 *
 * What is read here of nginx, the same text in every release from 1.22.0
 * to 1.31.4 (ngx_http_upstream_upgrade() through
 * ngx_http_upstream_process_upgraded(), ngx_palloc_large(), ngx_pfree(),
 * ngx_ssl_free_buffer(): identical in all 47 tags):
 *
 * - the relay's pass of one direction reads and writes only that
 *   direction's buffer b: it sends b->pos..b->last, receives into
 *   b->last..b->end, and resets pos = last = start when it has sent
 *   everything; of the other buffer it only compares pos and last (the
 *   "upgraded done" test). A pass with pos = last = end (NULL) sends and
 *   receives nothing. For the client's direction a NULL b->start is
 *   allocated by the relay itself (u->from_client is allocated lazily).
 *   While the client's pipelined bytes are left in r->header_in the
 *   relay sends those instead (b = r->header_in).
 *
 * - both buffers are ngx_palloc(r->pool, u->conf->buffer_size), a large
 *   allocation (a page, above the pool's max) that ngx_pfree() returns to
 *   malloc; a smaller proxy_buffer_size comes from a pool block, which
 *   ngx_pfree() declines: such a buffer is kept. No other code reads them
 *   after the upgrade: proxy, scgi and uwsgi copy the response's status
 *   line and headers into the pool as they parse them.
 *
 * - ngx_pfree() clears the buffer's ngx_pool_large_t record, and
 *   ngx_palloc_large() puts a new allocation in the first free record of
 *   the first five of the pool's list; the relay's two are the last
 *   large allocations of r->pool (the response, then the upgrade), so
 *   their freed records are found again and a wake-up does not grow the
 *   pool.
 *
 * - ngx_ssl_free_buffer() is what ngx_http_set_keepalive() calls for an
 *   idle keepalive connection; ngx_ssl_send_chain() allocates the buffer
 *   again when it finds buf->start NULL. The relay uses c->send only.
 *
 * When. Releasing after every pass of the relay and allocating again
 * before the next cost 350 to 680 instructions per relayed 64 B message
 * (callgrind, bench/run.py --only profile), even with the worker keeping
 * spare buffers to skip malloc(). So a buffer is released only at these
 * points, and a busy connection pays the start == NULL test before each
 * pass and nothing else:
 *
 * - once, right after the upgrade: the hook posts a pass of the relay
 *   through a one-shot write handler (first_pass) that runs the module's
 *   write handler (which puts nginx's back), then releases what is empty. Without it a
 *   connection that stays silent would keep its buffers until the first
 *   tick, and the memory of the connections that came before would not
 *   be reused by the next ones (glibc keeps a freed chunk inside the heap
 *   rather than return it to the kernel);
 *
 * - at each tick of the module's timer (the client connection's read
 *   event timer, at least once a ws_heartbeat_interval while pinging):
 *   a connection gone quiet gives its buffers back within about an
 *   interval;
 *
 * - after a pass that found its buffer released and relayed nothing (the
 *   peer's Pong to the module's Ping, swallowed; an upstream write event
 *   with nothing to write, as each upstream Ping sent brings): without
 *   this the Pong and the write event that follow each tick's Ping would
 *   take the buffers back for the whole interval (release_if_unused).
 *   Only a wake-up pays the test. The client's write event wakes nothing
 *   (u->buffer is not needed there: see release()).
 *
 * Plain ngx_pfree() and ngx_palloc(): at most one release per tick per
 * connection.
 *
 * The invariant, with no byte of the ctx spent on it: a relay buffer is
 * released exactly when its start is NULL (pos, last and end are NULL
 * too). u->buffer is allocated before the 101 is parsed, so only the
 * module sets its start to NULL; u->from_client may also be NULL because
 * the relay has not run the client's direction yet, and then allocating
 * it is what the relay would do.
 *
 * r is known alive after a pass of the relay while its client connection
 * is (c->destroyed clear, nginx's own test in
 * ngx_http_run_posted_requests()): an upgraded request has keepalive off
 * and HTTP/2 is not hooked, so r is freed only together with c, or after
 * a lingering close, which is no longer the relay (u->peer.connection is
 * NULL once ngx_http_upstream_finalize_request() has run).
 */


#include "ngx_ws_heartbeat.hpp"


static void ngx_http_ws_heartbeat_buffers_first_pass(ngx_http_request_t *r)
    noexcept;
static ngx_int_t ngx_http_ws_heartbeat_reacquire(ngx_http_request_t *r,
    ngx_buf_t *b) noexcept;
static void ngx_http_ws_heartbeat_release(ngx_http_request_t *r,
    ngx_buf_t *b) noexcept;
static void ngx_http_ws_heartbeat_release_if_idle(ngx_http_request_t *r,
    ngx_connection_t *c, ngx_buf_t *only) noexcept;
static void ngx_http_ws_heartbeat_release_if_unused(ngx_http_request_t *r,
    ngx_connection_t *c, ngx_buf_t *b, ngx_connection_t *peer, off_t sent)
    noexcept;


/*
 * The module's handlers of the relay's events (the read handler in
 * ngx_ws_heartbeat_timer.cpp, the write handlers in ngx_ws_heartbeat_io.cpp,
 * the upstream's read handler here) test the buffer of their direction
 * first and come here when it is released; with release, the upstream's
 * read event goes through the module too. And a pass of the relay is
 * posted, through first_pass: the first one, in
 * ngx_http_upstream_upgrade(), ran before the module's handlers, and an
 * idle connection may see no other event until the module's first tick.
 */

void
ngx_http_ws_heartbeat_buffers_hook(ngx_http_request_t *r,
    ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    if (ngx_http_ws_heartbeat_conf(ctx)->idle_buffers
        != NGX_HTTP_WS_HB_BUFFERS_RELEASE)
    {
        return;
    }

    r->write_event_handler = ngx_http_ws_heartbeat_buffers_first_pass;

    /* nginx's pass would allocate it itself, and keep it */

    if (r->upstream->from_client.start == NULL) {
        r->upstream->write_event_handler =
                                ngx_http_ws_heartbeat_upstream_write_handler;
    }

    (void) ngx_http_post_request(r, NULL);
}


/*
 * the posted pass after the upgrade (or the client's first write event,
 * whichever comes first), once: the ordinary handler from now on, then
 * the buffers go if the relay left them empty
 */

static void
ngx_http_ws_heartbeat_buffers_first_pass(ngx_http_request_t *r) noexcept
{
    ngx_connection_t  *c;

    c = r->connection;

    r->write_event_handler = ngx_http_ws_heartbeat_write_handler;

    ngx_http_ws_heartbeat_write_handler(r);

    ngx_http_ws_heartbeat_release_if_idle(r, c, NULL);
}


/*
 * the upstream is readable: the upstream's direction. The module's only
 * while u->buffer is released; the pass puts nginx's back (the buffer may
 * have come back through the client's write event meanwhile)
 */

void
ngx_http_ws_heartbeat_upstream_read_handler(ngx_http_request_t *r,
    ngx_http_upstream_t *u) noexcept
{
    if (u->buffer.start == NULL) {
        ngx_http_ws_heartbeat_buffers_wake(r,
                                           NGX_HTTP_WS_HB_EV_UPSTREAM_READ);
        return;
    }

    ngx_http_ws_heartbeat_pass(r, NGX_HTTP_WS_HB_EV_UPSTREAM_READ);
}


/*
 * A wake-up: an event of a direction whose buffer is released. The buffer
 * comes back, the event's pass runs, and the buffer goes again if the
 * pass sent nothing on (release_if_unused()).
 */

void
ngx_http_ws_heartbeat_buffers_wake(ngx_http_request_t *r,
    ngx_http_ws_heartbeat_ev_e ev) noexcept
{
    off_t                 sent;
    ngx_buf_t            *b;
    ngx_connection_t     *c, *peer;
    ngx_http_upstream_t  *u;

    c = r->connection;
    u = r->upstream;

    /* the buffer of the event's direction, the connection it writes to */

    if (ev == NGX_HTTP_WS_HB_EV_READ
        || ev == NGX_HTTP_WS_HB_EV_UPSTREAM_WRITE)
    {
        b = &u->from_client;
        peer = u->peer.connection;

    } else {
        b = &u->buffer;
        peer = c;
    }

    if (ngx_http_ws_heartbeat_reacquire(r, b) != NGX_OK) {
        return;
    }

    sent = peer ? peer->sent : 0;

    ngx_http_ws_heartbeat_pass(r, ev);

    ngx_http_ws_heartbeat_release_if_unused(r, c, b, peer, sent);
}


/* a tick of the module's timer: a connection gone quiet releases */

void
ngx_http_ws_heartbeat_buffers_tick(ngx_http_request_t *r, ngx_connection_t *c)
    noexcept
{
    /* r went with its connection */

    if (c->destroyed || !ngx_http_ws_heartbeat_releases(r)) {
        return;
    }

    ngx_http_ws_heartbeat_release_if_idle(r, c, NULL);
}


/*
 * Before a pass of the relay that found b released (start NULL; the
 * callers test it, the one test a busy connection pays): b as the relay
 * had it, empty.
 * NGX_ERROR: no memory; the connection is closed (Close 1011 to the
 * client, 1001 to the upstream, at frame boundaries) and r may be gone.
 */

static ngx_int_t
ngx_http_ws_heartbeat_reacquire(ngx_http_request_t *r, ngx_buf_t *b)
    noexcept
{
    u_char                       *p;
    ngx_http_upstream_t          *u;
    ngx_http_ws_heartbeat_ctx_t  *ctx;

    if (b->start != NULL) {
        return NGX_OK;
    }

    u = r->upstream;

    /* the relay has ended: nothing runs on b (nginx resets the handlers) */

    if (u->peer.connection == NULL) {
        return NGX_OK;
    }

    p = static_cast<u_char *>(ngx_palloc(r->pool, u->conf->buffer_size));

    if (p != NULL) {
        b->start = p;
        b->pos = p;
        b->last = p;
        b->end = p + u->conf->buffer_size;

        /* as the relay sets up u->from_client; u->buffer's are unchanged */
        b->temporary = 1;
        b->tag = u->output.tag;

        return NGX_OK;
    }

    ctx = ngx_http_ws_heartbeat_get_ctx(r);

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "ws heartbeat: closing, no memory for a relay buffer "
                  "(%uz bytes)", u->conf->buffer_size);

    if (ctx == NULL || !ctx->hooked) {
        /* cannot happen while the relay runs: let it fail on its own */
        return NGX_OK;
    }

    if (ctx->end == NGX_HTTP_WS_HB_END_NONE) {
        ctx->end = NGX_HTTP_WS_HB_END_OTHER;
    }

    ngx_http_ws_heartbeat_step_aside(ctx);

    ngx_http_ws_heartbeat_send_close(&ctx->client, 1011,
                                     wshb::close_text::out_of_memory);
    ngx_http_ws_heartbeat_send_close(&ctx->upstream, 1001,
                                     wshb::close_text::going_away);

    ngx_http_ws_heartbeat_finalize(ctx);

    return NGX_ERROR;
}


/*
 * b back to malloc(): released, start NULL; a buffer from a pool block
 * (a proxy_buffer_size below the pool's max), which ngx_pfree()
 * declines, is kept
 */

static void
ngx_http_ws_heartbeat_release(ngx_http_request_t *r, ngx_buf_t *b) noexcept
{
    ngx_http_upstream_t                *u;
    ngx_http_ws_heartbeat_main_conf_t  *hmcf;

    if (b->start == NULL || ngx_pfree(r->pool, b->start) != NGX_OK) {
        return;
    }

    b->start = NULL;
    b->pos = NULL;
    b->last = NULL;
    b->end = NULL;

    /*
     * the events that need the buffer go through the module's handlers
     * until it is back: the upstream's read event for u->buffer (nginx's
     * pass would not read into a NULL one), the upstream's write event for
     * u->from_client (nginx's pass would allocate it and keep it); each
     * handler puts nginx's back once it has the buffer again. The client's
     * write event does not need u->buffer: nginx's pass of the upstream's
     * direction with a NULL one sends nothing (pos = last) and reads
     * nothing (end = last), as with an empty one, and the upstream's read
     * event, which brings the upstream's bytes, takes it back first.
     * Without a wake-up there, each Ping sent (a write event of the
     * client's when it leaves the socket buffer) took u->buffer back and
     * released it again: measured (callgrind, idle Ping/Pong round trip),
     * 4467 -> 3452 worker instructions (the module's 2240 -> 1799).
     */

    u = r->upstream;
    hmcf = ngx_http_ws_heartbeat_main_conf(r);

    if (b == &u->buffer) {
        if (u->read_event_handler == hmcf->upstream_read_handler) {
            u->read_event_handler =
                                ngx_http_ws_heartbeat_upstream_read_handler;
        }

    } else if (u->write_event_handler == hmcf->upstream_write_handler) {
        u->write_event_handler = ngx_http_ws_heartbeat_upstream_write_handler;
    }
}


/*
 * After a wake-up pass of one direction (an event found its buffer
 * released): if the pass sent nothing to the peer (c->sent of the
 * connection it writes to, which ngx_unix_send() and ngx_ssl_write()
 * count, unchanged), what woke it was a Pong the module swallowed or a
 * write event with nothing to write (each Ping sent makes the client
 * writable again); the buffer goes again at once rather than stay until
 * the next tick, which the next Ping and its Pong would follow: the
 * buffers would be held nearly all the time. A wake-up that relayed
 * something keeps its buffer until a tick. Only b goes: the other
 * direction's buffer, if there, is a busy one's (releasing both here cost
 * a malloc() and a free() per message of a busy connection, callgrind).
 */

static void
ngx_http_ws_heartbeat_release_if_unused(ngx_http_request_t *r,
    ngx_connection_t *c, ngx_buf_t *b, ngx_connection_t *peer, off_t sent)
    noexcept
{
    ngx_http_upstream_t  *u;

    /* r went with its connection */

    if (c->destroyed) {
        return;
    }

    /* the relay has ended (then peer may be gone) */

    u = r->upstream;

    if (u == NULL || u->peer.connection == NULL || peer == NULL) {
        return;
    }

    if (peer->sent == sent) {
        ngx_http_ws_heartbeat_release_if_idle(r, c, b);
    }
}


#if (NGX_SSL)

/* TLS's write buffer of a connection, once nothing waits in it */

static void
ngx_http_ws_heartbeat_release_ssl(ngx_connection_t *c) noexcept
{
    ngx_buf_t  *b;

    if (c->ssl == NULL || c->ssl->buf == NULL || c->buffered) {
        return;
    }

    b = c->ssl->buf;

    if (b->start != NULL && b->pos == b->last) {
        ngx_ssl_free_buffer(c);
    }
}

#endif


/*
 * After the first pass of the relay and at the module's timer ticks: when
 * both relay buffers are empty and nothing of the module's waits to be
 * written, they go back to the pool (or only the one given, after a
 * wake-up that relayed nothing).
 */

static void
ngx_http_ws_heartbeat_release_if_idle(ngx_http_request_t *r,
    ngx_connection_t *c, ngx_buf_t *only) noexcept
{
    ngx_http_upstream_t          *u;
    ngx_http_ws_heartbeat_ctx_t  *ctx;

    /* r went with its connection */

    if (c->destroyed) {
        return;
    }

    u = r->upstream;

    if (u == NULL || u->peer.connection == NULL) {
        return;
    }

    ctx = ngx_http_ws_heartbeat_get_ctx(r);

    if (ctx == NULL || !ctx->hooked) {
        return;
    }

    if (u->buffer.pos != u->buffer.last
        || u->from_client.pos != u->from_client.last
        || r->header_in->pos != r->header_in->last
        || ctx->client.out.pending()
        || ctx->upstream.out.pending()
        || ctx->client.out.blocked()
        || ctx->upstream.out.blocked())
    {
        return;
    }

    if (only != NULL) {
        ngx_http_ws_heartbeat_release(r, only);
        return;
    }

    ngx_http_ws_heartbeat_release(r, &u->buffer);
    ngx_http_ws_heartbeat_release(r, &u->from_client);

#if (NGX_SSL)
    if (r->out == NULL) {
        ngx_http_ws_heartbeat_release_ssl(c);
    }

    ngx_http_ws_heartbeat_release_ssl(u->peer.connection);
#endif
}
