
/*
 * ngx_ws_heartbeat_module: the relay's bytes. The send/recv wrappers that
 * nginx's relay calls on both connections, the Io adapter that gives
 * wshb::outbound (src/outbound.hpp) the real send, and the write-event
 * handlers that flush the module's own frames before the relay runs,
 * put in front of nginx's only while there is something to flush or a
 * relay buffer to take back (watch(); ngx_ws_heartbeat_buffers.cpp).
 * Calls the timer (a blocked write, a written Ping), the close path (an
 * endpoint's Close, a frame it cannot parse) and the counters.
 */


#include "ngx_ws_heartbeat.hpp"

#include <openssl/rand.h>


static void ngx_http_ws_heartbeat_write_out(ngx_http_ws_heartbeat_side_t *s,
    bool release) noexcept;


/*
 * the Io of wshb::outbound: the real send of one peer's connection. Its
 * side W (which()) is a constant: the flags and the heartbeat of a side
 * are found without reading which side it is. Measured (callgrind, 64 B
 * messages, the per-message calls of write() and on_header()): 623 -> 594
 * module instructions a message.
 */

#pragma GCC visibility push(hidden)

template <ngx_uint_t W>
struct ngx_http_ws_heartbeat_io {
    ngx_http_ws_heartbeat_side_t  *side;
    ngx_http_ws_heartbeat_ctx_t   *ctx;
    ngx_connection_t              *conn;

    ngx_http_ws_heartbeat_io(ngx_http_ws_heartbeat_ctx_t *x,
        ngx_connection_t *c) noexcept
        : side(x->side(W)), ctx(x), conn(c)
    {
    }

    /* ctx->is(side, flag) */
    bool is(std::uint8_t flag) const noexcept
    {
        return (ctx->side_flags[W] & flag) != 0;
    }

    long write(const std::uint8_t *p, std::size_t n) noexcept
    {
        ssize_t  rc;

        rc = ngx_http_ws_heartbeat_io_send(conn)(conn,
                                                 const_cast<u_char *>(p), n);

        /*
         * the common case here, inline; the rest in written(). Measured
         * (callgrind, 64 B messages): 779 -> 764 module instructions a
         * message.
         */

        if (rc > 0 && (size_t) rc == n && !is(NGX_HTTP_WS_HB_S_BLOCKED)) {
            return rc;
        }

        return written(rc, n);
    }

    long written(ssize_t rc, std::size_t n) noexcept
    {
        ngx_connection_t  *c = conn;
        wshb::heartbeat   *hb;

        /* (the machine's write is blocked only while the flag is set) */

        if (rc > 0 && ctx->is(side, NGX_HTTP_WS_HB_S_BLOCKED)) {
            ctx->set(side, NGX_HTTP_WS_HB_S_BLOCKED, 0);

            hb = ctx->hb(side->which());

            if (hb != nullptr) {
                hb->on_write_progress();
            }
        }

        if (rc == NGX_ERROR || (rc >= 0 && (size_t) rc == n)) {
            return rc;
        }

        /* short write or NGX_AGAIN: the real send has cleared ready */

        hb = ctx->hb(side->which());

        if (!ctx->is(side, NGX_HTTP_WS_HB_S_BLOCKED)) {
            ctx->set(side, NGX_HTTP_WS_HB_S_BLOCKED, 1);

            if (hb != nullptr) {
                hb->on_write_blocked(ngx_current_msec);

                /* our Ping waits behind these writes: it is stuck now */

                if (ctx->is(side, NGX_HTTP_WS_HB_S_PING_QUEUED)) {
                    ngx_http_ws_heartbeat_stuck(side, c);
                }

                ngx_http_ws_heartbeat_arm(ctx);
            }
        }

        return rc;
    }

    /*
     * the queued frame's bytes for this write attempt, in the worker's one
     * buffer: built again each time, the same bytes at the same address
     * for the same frame (OpenSSL's retry rule: see write_module() in
     * src/outbound.hpp)
     */

    const std::uint8_t *frame(const wshb::queued_frame &f) noexcept
    {
        u_char  *buf;

        buf = ngx_http_ws_heartbeat_main_conf(ctx->request)->frame;

        (void) wshb::build_queued(f, ctx->random, buf,
                                  wshb::inject_capacity);

        return buf;
    }

    bool match_pong(const std::uint8_t *payload, std::size_t n) noexcept
    {
        bool                           sampled;
        wshb::heartbeat               *hb;
        ngx_http_ws_heartbeat_side_t  *peer;
        ngx_http_ws_heartbeat_stats_t *st;

        peer = ctx->other(side);
        hb = ctx->hb(peer->which());

        if (hb == nullptr) {
            return false;
        }

        if (!hb->on_pong(payload, n, ctx->random,
                         ngx_http_ws_heartbeat_now_us(), &sampled))
        {
            return false;
        }

        /* ours: swallowed; counted only when it answers the latest Ping */

        if (sampled) {
            st = ngx_http_ws_heartbeat_stats(ctx);
            ngx_http_ws_heartbeat_count(st, pongs[peer->which()]);
            ngx_http_ws_heartbeat_count_rtt(st, peer->which(),
                                            hb->rtt_last_us());
        }

        return true;
    }

    /*
     * inline in outbound::send(), the counting of a discarded frame out of
     * line: measured (callgrind, 64 B messages) 656 -> 639 module
     * instructions a message
     */

    WSHB_HOT_INLINE void on_header(const wshb::frame_header &h) noexcept
    {
        wshb::heartbeat  *hb;

        /* after a Close of ours to this peer: consumed, not written */

        if (side->out.discarding()) {
            on_discarded();
        }

        if (wshb::is_data(h.op)) {
            hb = ctx->hb(W ^ 1);

            if (hb != nullptr) {
                hb->on_data(ngx_current_msec);
            }
        }
    }

    void on_discarded() noexcept
    {
        ngx_http_ws_heartbeat_count(ngx_http_ws_heartbeat_stats(ctx),
                                    discarded[ctx->other(side)->which()]);
    }

    WSHB_HOT_INLINE void on_frame(const wshb::frame_header &h,
        const std::uint8_t *payload, std::size_t n) noexcept
    {
        /*
         * any other frame: a graceful Close may wait for its end (the
         * flag tested here first, not in a call a frame). Forced inline:
         * with outbound::send() inline in the send wrapper gcc no longer
         * inlined it; measured (callgrind, 64 B messages) 555 -> 530
         * module instructions a message.
         */

        if (h.op != wshb::opcode::close) {
            if (is(NGX_HTTP_WS_HB_S_CLOSE_PENDING)
                && !side->out.discarding())
            {
                (void) ngx_http_ws_heartbeat_close_pending(side);
            }

            return;
        }

        on_close(payload, n);
    }

    /*
     * (out of on_frame(), so that the common case inlines: measured,
     * callgrind, 64 B messages: 7 module instructions less a message)
     */

    void on_close(const std::uint8_t *payload, std::size_t n) noexcept
    {
        /* an endpoint's Close counts once a direction (a peer may repeat) */

        if (!ctx->is(side, NGX_HTTP_WS_HB_S_PEER_CLOSED)) {
            ctx->set(side, NGX_HTTP_WS_HB_S_PEER_CLOSED, 1);
            ngx_http_ws_heartbeat_count_close_frame(
                ngx_http_ws_heartbeat_stats(ctx), ctx->other(side)->which(),
                payload, n);
            if (ctx->first_close == 0) {
                ctx->first_close = ctx->other(side)->which() + 1;
            }
        }

        if (side->out.discarding()) {
            return;
        }

        /*
         * closing on behalf of the client: the Close waited for the message
         * in flight to end, unless an endpoint's own Close has just gone
         * that way
         */

        ctx->set(side, NGX_HTTP_WS_HB_S_CLOSE_PENDING, 0);

        /* a Close has gone to this peer: the module sends none of its own */

        ctx->set(side, NGX_HTTP_WS_HB_S_CLOSE_SENT, 1);

        if (ctx->close_seen) {
            return;
        }

        /* an endpoint started the closing handshake: no more Pings */

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, conn->log, 0,
                       "ws heartbeat: %s sent Close",
                       ngx_http_ws_heartbeat_side_name(
                           ctx->other(side)->which()));
        ctx->close_seen = 1;
        ngx_http_ws_heartbeat_quiet(ctx, true);
    }

    void on_error(wshb::scan_error e) noexcept
    {
        /* counted once, as the connection's end, when it ends */

        if (ctx->end == NGX_HTTP_WS_HB_END_NONE) {
            ctx->end = NGX_HTTP_WS_HB_END_INVALID_FRAME;
        }

        /* one line per connection: the other direction may follow */

        if (ctx->invalid) {
            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, conn->log, 0,
                           "ws heartbeat: invalid frame (%s) after "
                           "stepping aside", wshb::to_string(e));
            return;
        }

        ctx->invalid = 1;

        ngx_log_error(NGX_LOG_INFO, conn->log, 0,
                      "%s sent invalid WebSocket frame (%s), "
                      "ws heartbeat disabled for this connection",
                      ngx_http_ws_heartbeat_side_name(
                          ctx->other(side)->which()),
                      wshb::to_string(e));

        ngx_http_ws_heartbeat_step_aside(ctx);
    }
};

#pragma GCC visibility pop


/*
 * The wrappers of c->send and c->recv, one pair per side: the client
 * connection's and the upstream connection's, each with its side fixed
 * (no test of c against r->connection, the side's offsets and flags
 * constants). Measured (callgrind, 64 B messages, per message counted by
 * the worker's sends), with the after_write() test inline and the recv
 * wrapper finding the side only after a recv that did not say again:
 * 766 -> 656 module instructions a message.
 */

static WSHB_HOT_INLINE ngx_http_ws_heartbeat_ctx_t *
ngx_http_ws_heartbeat_hooked_ctx(ngx_connection_t *c) noexcept
{
    ngx_http_ws_heartbeat_ctx_t  *ctx;

    ctx = ngx_http_ws_heartbeat_get_ctx(
              static_cast<ngx_http_request_t *>(c->data));

    if (ctx == NULL || !ctx->hooked) {
        return nullptr;
    }

    return ctx;
}


/*
 * nginx's own I/O functions back, where they are still the module's: at
 * the end of the relay, or when r->ctx is gone (an internal redirect to
 * post_action zeroes it) and the wrappers find no side to run
 */

void
ngx_http_ws_heartbeat_unhook(ngx_connection_t *c) noexcept
{
    if (c->send == ngx_http_ws_heartbeat_send_client
        || c->send == ngx_http_ws_heartbeat_send_upstream)
    {
        c->send = ngx_http_ws_heartbeat_io_send(c);
    }

    if (c->recv == ngx_http_ws_heartbeat_recv_client
        || c->recv == ngx_http_ws_heartbeat_recv_upstream)
    {
        c->recv = ngx_http_ws_heartbeat_io_recv(c);
    }
}


static void
ngx_http_ws_heartbeat_after_write(ngx_http_ws_heartbeat_side_t *s) noexcept
{
    /* the Pong deadline starts when our Ping has reached the socket */

    ngx_http_ws_heartbeat_ctx_t  *ctx;

    ctx = ngx_http_ws_heartbeat_ctx_of(s);

    /* (after most writes: neither; the send wrappers test it inline) */

    if (!ctx->is(s, NGX_HTTP_WS_HB_S_AFTER_WRITE)) {
        return;
    }

    /* a graceful Close waited for our Ping in flight */

    if (ctx->is(s, NGX_HTTP_WS_HB_S_CLOSE_PENDING)
        && ngx_http_ws_heartbeat_close_pending(s))
    {
        ngx_http_ws_heartbeat_flush(s);
        return;
    }

    if (ctx->is(s, NGX_HTTP_WS_HB_S_PING_QUEUED) && !s->out.queued()) {
        ctx->set(s, NGX_HTTP_WS_HB_S_PING_QUEUED, 0);
        ctx->hb(s->which())->on_ping_written(ngx_current_msec,
                                             ngx_http_ws_heartbeat_now_us());
        ngx_http_ws_heartbeat_arm(ctx);
    }
}


template <ngx_uint_t which>
static WSHB_HOT_INLINE ssize_t
ngx_http_ws_heartbeat_send(ngx_connection_t *c, u_char *buf, size_t size)
    noexcept
{
    long                           n;
    ngx_http_ws_heartbeat_ctx_t   *ctx;
    ngx_http_ws_heartbeat_side_t  *s;

    ctx = ngx_http_ws_heartbeat_hooked_ctx(c);

    if (ctx == nullptr) {
        ngx_http_ws_heartbeat_unhook(c);
        return c->send(c, buf, size);
    }

    s = ctx->side(which);

    ngx_http_ws_heartbeat_io<which>  io(ctx, c);

    n = s->out.send(io, buf, size);

    /*
     * the client's data goes to the upstream: each write of a data frame's
     * payload counts for ws_heartbeat_read_timeout, not only its header
     * (on_header()), so a long frame streamed slowly is not idle; a load
     * and a store a call, nothing per byte
     */

    if (which == NGX_HTTP_WS_HB_UPSTREAM
        && n > 0
        && wshb::is_data(s->out.last_header().op))
    {
        ctx->client_hb.on_data(ngx_current_msec);
    }

    if (ctx->side_flags[which] & NGX_HTTP_WS_HB_S_AFTER_WRITE) {
        ngx_http_ws_heartbeat_after_write(s);
    }

    /* bytes of ours wait: the write handler flushes them */

    if (s->out.pending()) {
        ngx_http_ws_heartbeat_watch(s);
    }

    return n;
}


ssize_t
ngx_http_ws_heartbeat_send_client(ngx_connection_t *c, u_char *buf,
    size_t size) noexcept
{
    return ngx_http_ws_heartbeat_send<NGX_HTTP_WS_HB_CLIENT>(c, buf, size);
}


ssize_t
ngx_http_ws_heartbeat_send_upstream(ngx_connection_t *c, u_char *buf,
    size_t size) noexcept
{
    return ngx_http_ws_heartbeat_send<NGX_HTTP_WS_HB_UPSTREAM>(c, buf,
                                                               size);
}


static WSHB_HOT_INLINE ssize_t
ngx_http_ws_heartbeat_recv(ngx_connection_t *c, u_char *buf, size_t size,
    ngx_uint_t which) noexcept
{
    ssize_t                       n;
    wshb::heartbeat              *hb;
    ngx_http_ws_heartbeat_ctx_t  *ctx;

    n = ngx_http_ws_heartbeat_io_recv(c)(c, buf, size);

    /* nothing to read (a pass's last recv with TLS): nothing to see */

    if (n == NGX_AGAIN) {
        return n;
    }

    ctx = ngx_http_ws_heartbeat_hooked_ctx(c);

    if (ctx == nullptr) {
        ngx_http_ws_heartbeat_unhook(c);
        return n;
    }

    if (n > 0) {
        hb = ctx->hb(which);

        if (hb != nullptr) {
            hb->on_receive(ngx_current_msec);
        }

    } else if (n == 0 || n == NGX_ERROR) {
        if (ctx->first_eof == 0) {
            ctx->first_eof = which + 1;
        }

        /* the start of a Pong held back from the other side goes on */

        ngx_http_ws_heartbeat_write_out(ctx->side(which ^ 1), true);
    }

    return n;
}


ssize_t
ngx_http_ws_heartbeat_recv_client(ngx_connection_t *c, u_char *buf,
    size_t size) noexcept
{
    return ngx_http_ws_heartbeat_recv(c, buf, size, NGX_HTTP_WS_HB_CLIENT);
}


ssize_t
ngx_http_ws_heartbeat_recv_upstream(ngx_connection_t *c, u_char *buf,
    size_t size) noexcept
{
    return ngx_http_ws_heartbeat_recv(c, buf, size, NGX_HTTP_WS_HB_UPSTREAM);
}


/* s->out's flush() or release() with the Io of side W */

template <ngx_uint_t W>
static long
ngx_http_ws_heartbeat_write_module(ngx_http_ws_heartbeat_side_t *s,
    ngx_connection_t *c, bool release) noexcept
{
    ngx_http_ws_heartbeat_io<W>  io(ngx_http_ws_heartbeat_ctx_of(s), c);

    return release ? s->out.release(io) : s->out.flush(io);
}


/*
 * write the module's own bytes to a side's peer: what is queued (flush), or
 * also the start of a Pong held back from a sender whose stream has ended
 * (release: it can no longer become a whole one and goes on as it is)
 */

static void
ngx_http_ws_heartbeat_write_out(ngx_http_ws_heartbeat_side_t *s,
    bool release) noexcept
{
    long               rc;
    ngx_connection_t  *c;

    c = ngx_http_ws_heartbeat_conn(s);

    if (c == NULL || !c->write->ready) {
        goto done;
    }

    /*
     * ngx_http_upstream_upgrade() does not check that the 101 header went
     * out whole; nothing of ours may go before its rest
     */

    if (s->which() == NGX_HTTP_WS_HB_CLIENT) {
        if (!release
            && (c->buffered || ngx_http_ws_heartbeat_ctx_of(s)->request->out
                               != NULL))
        {
            goto done;
        }

        rc = ngx_http_ws_heartbeat_write_module<NGX_HTTP_WS_HB_CLIENT>(s, c,
                                                                   release);

    } else {
        rc = ngx_http_ws_heartbeat_write_module<NGX_HTTP_WS_HB_UPSTREAM>(s, c,
                                                                   release);
    }

    if (rc == NGX_AGAIN) {
        (void) ngx_handle_write_event(c->write, 0);
    }

    ngx_http_ws_heartbeat_after_write(s);

done:

    /* what is left waits for the write handler */

    if (s->out.pending()) {
        ngx_http_ws_heartbeat_watch(s);
    }
}


/*
 * one control frame of the module's own, queued for a side's peer: to the
 * client unmasked, to the upstream masked with a fresh random key;
 * replace: it takes the place of a queued frame not yet started. A Ping:
 * its sequence number (value); a Close: its code (value) and text. A
 * Close of ours is the last frame of the stream to that peer (RFC 6455
 * 5.5.1): once it is written, what the other side still sends that way is
 * consumed and counted, not written (wshb::outbound::discarding()).
 */

bool
ngx_http_ws_heartbeat_queue_frame(ngx_http_ws_heartbeat_side_t *s,
    wshb::opcode op, std::uint32_t value, wshb::close_text text,
    bool replace) noexcept
{
    std::uint8_t         key[4], *mask;
    wshb::queued_frame   f;

    mask = nullptr;

    if (s->which() == NGX_HTTP_WS_HB_UPSTREAM) {
        if (RAND_bytes(key, sizeof(key)) != 1) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "ws heartbeat: RAND_bytes() failed");
            return false;
        }

        mask = key;
    }

    f = op == wshb::opcode::close
        ? wshb::queued_close((std::uint16_t) value, text, mask)
        : wshb::queued_ping(value, mask);

    if (replace) {
        s->out.drop_queued();
    }

    /*
     * (every caller flushes next, or queues from inside the send wrapper:
     * what is still pending after that puts the write handler in)
     */

    return s->out.queue(f, op == wshb::opcode::close);
}


void
ngx_http_ws_heartbeat_flush(ngx_http_ws_heartbeat_side_t *s) noexcept
{
    /* the common case: each write event of the relay comes through here */

    if (s->out.pending()) {
        ngx_http_ws_heartbeat_write_out(s, false);
    }
}


/*
 * The write events: the module's own bytes to that peer first, then
 * nginx's pass. Each first takes its direction's relay buffer back if it
 * was released (ngx_ws_heartbeat_buffers.cpp), which then runs the pass
 * through ngx_http_ws_heartbeat_pass(). One layer of wrappers over
 * nginx's handlers, the buffers' test and the module's flush in one
 * function, not the buffers' wrappers around the module's: measured
 * (callgrind, bench/run.py --only profile, per 64 B message counted by
 * the worker's sends) 887 -> 835 module instructions a message.
 *
 * And these handlers are the module's only while it has something to do
 * on that event: bytes of its own to that peer (s->out.pending(): a
 * queued frame, a held Pong being forwarded, either blocked), or the
 * direction's buffer released. Otherwise nginx's own handler is there and
 * runs directly: with epoll's edge-triggered events every read event of a
 * connection also runs its write handler (EPOLLOUT comes with EPOLLIN), so
 * the wrappers ran twice a message for nothing. ngx_http_ws_heartbeat_watch()
 * puts the module's handler in when bytes of its own wait (after a send,
 * a flush, a queued frame), ngx_http_ws_heartbeat_release() when a buffer
 * goes; the handler puts nginx's back when it finds nothing left to do,
 * before it runs nginx's pass (which may end r). Each swap only replaces
 * the handler it expects: nginx's own changes (at finalize, lingering
 * close) stay. Measured: 835 -> 766 module instructions a message.
 */

void
ngx_http_ws_heartbeat_watch(ngx_http_ws_heartbeat_side_t *s) noexcept
{
    ngx_http_request_t                 *r;
    ngx_http_upstream_t                *u;
    ngx_http_ws_heartbeat_main_conf_t  *hmcf;

    r = ngx_http_ws_heartbeat_ctx_of(s)->request;
    hmcf = ngx_http_ws_heartbeat_main_conf(r);

    if (s->which() == NGX_HTTP_WS_HB_CLIENT) {
        if (r->write_event_handler == hmcf->write_handler) {
            r->write_event_handler = ngx_http_ws_heartbeat_write_handler;
        }

        return;
    }

    u = r->upstream;

    if (u != NULL && u->write_event_handler == hmcf->upstream_write_handler) {
        u->write_event_handler = ngx_http_ws_heartbeat_upstream_write_handler;
    }
}


static void
ngx_http_ws_heartbeat_write_pass(ngx_http_request_t *r) noexcept
{
    ngx_http_ws_heartbeat_ctx_t        *ctx;
    ngx_http_ws_heartbeat_main_conf_t  *hmcf;

    ctx = ngx_http_ws_heartbeat_get_ctx(r);

    if (ctx != NULL && ctx->hooked && !r->connection->write->timedout) {
        ngx_http_ws_heartbeat_flush(&ctx->client);
    }

    hmcf = ngx_http_ws_heartbeat_main_conf(r);

    /* nothing of ours left to write (the buffer is there): nginx's */

    if ((ctx == NULL || !ctx->client.out.pending())
        && r->write_event_handler == ngx_http_ws_heartbeat_write_handler)
    {
        r->write_event_handler = hmcf->write_handler;
    }

    hmcf->write_handler(r);
}


static void
ngx_http_ws_heartbeat_upstream_write_pass(ngx_http_request_t *r,
    ngx_http_upstream_t *u) noexcept
{
    ngx_http_ws_heartbeat_ctx_t        *ctx;
    ngx_http_ws_heartbeat_main_conf_t  *hmcf;

    ctx = ngx_http_ws_heartbeat_get_ctx(r);

    if (ctx != NULL && ctx->hooked && !u->peer.connection->write->timedout) {
        ngx_http_ws_heartbeat_flush(&ctx->upstream);
    }

    hmcf = ngx_http_ws_heartbeat_main_conf(r);

    if ((ctx == NULL || !ctx->upstream.out.pending())
        && u->write_event_handler
           == ngx_http_ws_heartbeat_upstream_write_handler)
    {
        u->write_event_handler = hmcf->upstream_write_handler;
    }

    hmcf->upstream_write_handler(r, u);
}


/*
 * the client is writable: the upstream's direction. No wake-up when
 * u->buffer is released: nginx's pass sends and reads nothing with a NULL
 * one (see ngx_ws_heartbeat_buffers.cpp, release())
 */

void
ngx_http_ws_heartbeat_write_handler(ngx_http_request_t *r) noexcept
{
    ngx_http_ws_heartbeat_write_pass(r);
}


/*
 * the upstream is writable: the client's direction (from_client's start
 * is also NULL before the relay has run that direction: with keep,
 * nginx's pass allocates it)
 */

void
ngx_http_ws_heartbeat_upstream_write_handler(ngx_http_request_t *r,
    ngx_http_upstream_t *u) noexcept
{
    if (u->from_client.start == NULL && ngx_http_ws_heartbeat_releases(r)) {
        ngx_http_ws_heartbeat_buffers_wake(r,
                                           NGX_HTTP_WS_HB_EV_UPSTREAM_WRITE);
        return;
    }

    ngx_http_ws_heartbeat_upstream_write_pass(r, u);
}


/* one event's pass without the buffers' test: after a wake-up */

void
ngx_http_ws_heartbeat_pass(ngx_http_request_t *r,
    ngx_http_ws_heartbeat_ev_e ev) noexcept
{
    ngx_http_ws_heartbeat_main_conf_t  *hmcf;

    hmcf = ngx_http_ws_heartbeat_main_conf(r);

    switch (ev) {

    case NGX_HTTP_WS_HB_EV_READ:
        hmcf->read_handler(r);
        break;

    case NGX_HTTP_WS_HB_EV_UPSTREAM_READ:

        /* the buffer is back: nginx's handler from the next event on */

        if (r->upstream->read_event_handler
            == ngx_http_ws_heartbeat_upstream_read_handler)
        {
            r->upstream->read_event_handler = hmcf->upstream_read_handler;
        }

        hmcf->upstream_read_handler(r, r->upstream);
        break;

    default: /* NGX_HTTP_WS_HB_EV_UPSTREAM_WRITE */
        ngx_http_ws_heartbeat_upstream_write_pass(r, r->upstream);
    }
}
