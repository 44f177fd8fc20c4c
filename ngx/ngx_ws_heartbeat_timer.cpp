
/*
 * ngx_ws_heartbeat_module: when things are due. One timer per connection
 * (the client connection's read event timer) serves both sides' heartbeat
 * machines (src/heartbeat.hpp): it sends the Pings through the Io queue
 * (ngx_ws_heartbeat_io.cpp) and hands dead or timed-out peers to the
 * close path (ngx_ws_heartbeat_close.cpp).
 */


#include "ngx_ws_heartbeat.hpp"

#if (NGX_LINUX)
#include <linux/sockios.h>      /* SIOCOUTQ */
#endif


static void ngx_http_ws_heartbeat_timer_handler(
    ngx_http_ws_heartbeat_ctx_t *ctx) noexcept;


/* what a side's heartbeat machine is told with each call */

static wshb::heartbeat_config
ngx_http_ws_heartbeat_hb_conf(ngx_http_ws_heartbeat_ctx_t *ctx,
    ngx_uint_t which) noexcept
{
    wshb::heartbeat_config             hc;
    ngx_http_ws_heartbeat_loc_conf_t  *lcf;

    lcf = ngx_http_ws_heartbeat_conf(ctx);

    hc.interval_ms = (std::uint32_t) lcf->interval;
    hc.timeout_ms = (std::uint32_t) lcf->timeout;
    hc.ping = true;

    if (which == NGX_HTTP_WS_HB_CLIENT) {
        hc.read_timeout_ms = (std::uint32_t) lcf->read_timeout;
        hc.send_timeout_ms = (std::uint32_t) lcf->send_timeout;

    } else {
        hc.read_timeout_ms = 0;
        hc.send_timeout_ms = 0;
    }

    return hc;
}


/* the heartbeats of a newly hooked connection, and its first deadline */

void
ngx_http_ws_heartbeat_start(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    ngx_uint_t        i;
    wshb::heartbeat  *hb;

    /* a side has a heartbeat when the module pings it */

    for (i = 0; i < 2; i++) {
        hb = ctx->hb(i);

        if (hb != nullptr) {
            hb->start(ngx_http_ws_heartbeat_hb_conf(ctx, i),
                      ngx_current_msec);
        }
    }

    ngx_http_ws_heartbeat_arm(ctx);
}


/*
 * the module's timer has fired (the client connection's read event timed
 * out); false: not the module's (no hooked ctx), the relay's pass runs.
 * Out of line: inlined into the read handler (its one caller), it made
 * each read event of the client save and restore six registers and call
 * nginx's handler instead of jumping to it; measured (callgrind, 64 B
 * messages) 639 -> 623 module instructions a message.
 */

static WSHB_OUT_OF_LINE bool
ngx_http_ws_heartbeat_tick(ngx_http_request_t *r) noexcept
{
    ngx_connection_t             *c;
    ngx_http_ws_heartbeat_ctx_t  *ctx;

    c = r->connection;
    c->read->timedout = 0;

    ctx = ngx_http_ws_heartbeat_get_ctx(r);

    if (ctx == NULL || !ctx->hooked) {
        return false;
    }

    ngx_http_ws_heartbeat_timer_handler(ctx);

    /* (r may be gone: the tick tests c->destroyed first) */
    ngx_http_ws_heartbeat_buffers_tick(r, c);

    return true;
}


/*
 * the client connection's read event: the module's timer, or the client's
 * bytes (a pass of the client's direction, which first takes its relay
 * buffer back if it was released: ngx_ws_heartbeat_buffers.cpp)
 */

void
ngx_http_ws_heartbeat_read_handler(ngx_http_request_t *r) noexcept
{
    if (r->connection->read->timedout && ngx_http_ws_heartbeat_tick(r)) {
        return;
    }

    if (r->upstream->from_client.start == NULL
        && ngx_http_ws_heartbeat_releases(r))
    {
        ngx_http_ws_heartbeat_buffers_wake(r, NGX_HTTP_WS_HB_EV_READ);
        return;
    }

    ngx_http_ws_heartbeat_main_conf(r)->read_handler(r);
}


/* when one side needs the timer next; 0: never */

static std::uint64_t
ngx_http_ws_heartbeat_deadline(ngx_http_ws_heartbeat_side_t *s) noexcept
{
    std::uint64_t                 deadline, limit;
    wshb::heartbeat              *hb;
    ngx_http_ws_heartbeat_ctx_t  *ctx;

    ctx = ngx_http_ws_heartbeat_ctx_of(s);
    hb = ctx->hb(s->which());

    if (hb == nullptr) {
        return 0;
    }

    deadline = hb->next_deadline(
                   ngx_http_ws_heartbeat_hb_conf(ctx, s->which()),
                   ngx_current_msec);

    /*
     * bytes from the peer move the next Ping later but do not re-arm the
     * timer (that would cost a timer update per read); wake up at least
     * once an interval and let the machine tell what is due
     */

    if (hb->pinging()) {
        limit = (std::uint64_t) ngx_current_msec
                + ngx_http_ws_heartbeat_conf(ctx)->interval;

        if (deadline == 0 || deadline > limit) {
            deadline = limit;
        }
    }

    return deadline;
}


/* one timer per connection serves both sides */

void
ngx_http_ws_heartbeat_arm(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    ngx_uint_t     i;
    ngx_msec_t     grain;
    std::uint64_t  deadline, d;

    /* a closing connection's timer is its drain timeout */

    if (ctx->closing) {
        return;
    }

    /*
     * the timer handler arms once, at its end, not also for the Ping it
     * writes: the deadlines computed once. Measured (callgrind, idle
     * Ping/Pong, with the capture change of src/frame.hpp: 2147 -> 1878
     * module instructions a round trip): ~140 of it.
     */

    if (ctx->arm_later) {
        return;
    }

    deadline = 0;

    for (i = 0; i < 2; i++) {
        d = ngx_http_ws_heartbeat_deadline(ctx->side(i));

        if (d != 0 && (deadline == 0 || d < deadline)) {
            deadline = d;
        }
    }

    /*
     * heartbeat deadlines round up to a grain of about 1/64 of the
     * interval (a power of two, 1 to 128 ms): the timers of a worker's
     * connections fall on common instants, and one wake-up serves all that
     * are due
     */

    grain = ngx_http_ws_heartbeat_conf(ctx)->interval / 64;
    grain = grain >= 128 ? 128 : grain;

    while (grain & (grain - 1)) {
        grain &= grain - 1;
    }

    if (deadline != 0 && grain > 1) {
        deadline = (deadline + grain - 1) & ~((std::uint64_t) grain - 1);
    }

    /*
     * a drain's start and a max age are not rounded: each connection's own
     * random moment, they are spread on purpose (rounded, the drains left
     * in batches a grain apart, 1.28x the uniform rate at a 128 ms grain)
     */

    d = ngx_http_ws_heartbeat_end_deadline(ctx);

    if (d != 0 && (deadline == 0 || d < deadline)) {
        deadline = d;
    }

    if (deadline == 0) {
        if (ngx_http_ws_heartbeat_timer(ctx)->timer_set) {
            ngx_del_timer(ngx_http_ws_heartbeat_timer(ctx));
        }

        return;
    }

    ngx_add_timer(ngx_http_ws_heartbeat_timer(ctx), deadline > ngx_current_msec
                               ? (ngx_msec_t) (deadline - ngx_current_msec)
                               : 0);
}


static void
ngx_http_ws_heartbeat_send_ping(ngx_http_ws_heartbeat_side_t *s) noexcept
{
    std::uint32_t                 seq;
    wshb::heartbeat              *hb;
    ngx_http_ws_heartbeat_ctx_t  *ctx;

    ctx = ngx_http_ws_heartbeat_ctx_of(s);
    hb = ctx->hb(s->which());

    /* queued as its number: its payload is laid out at each write */

    seq = hb->next_ping();

    if (!ngx_http_ws_heartbeat_queue_frame(s, wshb::opcode::ping, seq,
                                           wshb::close_text::none, false))
    {
        /* not sent (no mask key, the queue refused it): again later */
        hb->on_ping_not_sent(ngx_current_msec);
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "ws heartbeat: ping to %s queued",
                   ngx_http_ws_heartbeat_side_name(s->which()));

    ctx->set(s, NGX_HTTP_WS_HB_S_PING_QUEUED, 1);
    ngx_http_ws_heartbeat_count(ngx_http_ws_heartbeat_stats(ctx),
                                pings[s->which()]);

    /* the writes to the peer block already: the Ping is stuck at once */

    if (ctx->is(s, NGX_HTTP_WS_HB_S_BLOCKED)) {
        ngx_http_ws_heartbeat_stuck(s, ngx_http_ws_heartbeat_conn(s));
    }

    ngx_http_ws_heartbeat_flush(s);
}


/*
 * A Ping stuck behind writes that block is no sign of death while the
 * peer still takes bytes, only slowly (nginx writes again only once a good
 * part of the socket buffer has drained). What the socket can tell of it:
 *
 * TCP: the peer still ACKs (zero-window probes too) within the last ms.
 * A frozen peer's kernel ACKs as well, but the probes back off (0.2 s,
 * 0.4 s, 0.8 s...) until one gap exceeds ms.
 *
 * unix: no ACKs; the bytes the peer has not read yet (SIOCOUTQ: the
 * memory of the buffers queued to it, each freed once read to its end)
 * have gone down since the last look. A frozen peer's queue does not
 * move; a slow reader's does.
 *
 * Anything else, or a call that fails: nothing is learned, the peer does
 * not count as alive and the heartbeat timeout holds.
 */

/*
 * the family of a side's socket: the client's is that of the listening
 * socket (the realip module gives c->sockaddr the client's IP address,
 * whatever the socket is), the upstream's that of the peer's address
 */

static int
ngx_http_ws_heartbeat_family(ngx_http_ws_heartbeat_side_t *s,
    ngx_connection_t *c) noexcept
{
    struct sockaddr      *sa;
    ngx_http_upstream_t  *u;

    if (s->which() == NGX_HTTP_WS_HB_CLIENT) {
        sa = c->listening != NULL ? c->listening->sockaddr : c->sockaddr;

    } else {
        u = ngx_http_ws_heartbeat_ctx_of(s)->request->upstream;
        sa = u != NULL ? u->peer.sockaddr : NULL;
    }

    return sa != NULL ? sa->sa_family : AF_UNSPEC;
}


static bool
ngx_http_ws_heartbeat_takes(ngx_http_ws_heartbeat_side_t *s,
    ngx_connection_t *c, ngx_msec_t ms) noexcept
{
#if (NGX_HAVE_TCP_INFO)
    socklen_t         len;
    struct tcp_info   ti;
#endif
#if (NGX_HAVE_UNIX_DOMAIN && defined SIOCOUTQ)
    int               n;
    bool              less;
    std::uint32_t    *last;
#endif

    switch (ngx_http_ws_heartbeat_family(s, c)) {

#if (NGX_HAVE_TCP_INFO)
    case AF_INET:
#if (NGX_HAVE_INET6)
    case AF_INET6:
#endif
        len = sizeof(struct tcp_info);

        if (getsockopt(c->fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == -1) {
            return false;
        }

        return ti.tcpi_last_ack_recv < ms;
#endif

#if (NGX_HAVE_UNIX_DOMAIN && defined SIOCOUTQ)
    case AF_UNIX:
        last = &ngx_http_ws_heartbeat_ctx_of(s)->unsent[s->which()];

        if (ioctl(c->fd, SIOCOUTQ, &n) == -1 || n < 0) {
            *last = NGX_HTTP_WS_HB_UNSENT_NONE;
            return false;
        }

        less = *last != NGX_HTTP_WS_HB_UNSENT_NONE && (std::uint32_t) n < *last;
        *last = (std::uint32_t) n;

        return less;
#endif

    default:
        return false;
    }
}


/*
 * a Ping has just got stuck (queued, the side's writes blocked): the first
 * look at the peer's queue, which the timer's next looks compare with
 */

void
ngx_http_ws_heartbeat_stuck(ngx_http_ws_heartbeat_side_t *s,
    ngx_connection_t *c) noexcept
{
    if (ngx_http_ws_heartbeat_family(s, c) != AF_UNIX) {
        return;
    }

    ngx_http_ws_heartbeat_ctx_of(s)->unsent[s->which()] =
                                                NGX_HTTP_WS_HB_UNSENT_NONE;

    (void) ngx_http_ws_heartbeat_takes(s, c, 0);
}


static void
ngx_http_ws_heartbeat_timer_handler(ngx_http_ws_heartbeat_ctx_t *ctx)
    noexcept
{
    ngx_uint_t                         i;
    wshb::action                       a;
    wshb::heartbeat                   *hb;
    ngx_connection_t                  *c;
    ngx_http_request_t                *r;
    ngx_http_ws_heartbeat_side_t      *s;
    ngx_http_ws_heartbeat_loc_conf_t  *lcf;

    r = ctx->request;
    lcf = ngx_http_ws_heartbeat_conf(ctx);

    /* the relay has ended (lingering close): nothing to watch */

    if (r->upstream == NULL || r->upstream->peer.connection == NULL) {
        return;
    }

    if (ctx->closing) {
        ngx_http_ws_heartbeat_closing_expired(ctx);
        return;
    }

    if (ngx_http_ws_heartbeat_end_due(ctx)) {
        return;
    }

    /* stepped aside: only a drain may still be planned */

    if (ctx->disabled) {
        ngx_http_ws_heartbeat_arm(ctx);
        return;
    }

    ctx->arm_later = 1;

    for (i = 0; i < 2; i++) {
        s = ctx->side(i);
        hb = ctx->hb(s->which());

        if (hb == nullptr) {
            continue;
        }

        /* unread bytes from the peer prove it alive (the relay is blocked) */

        c = ngx_http_ws_heartbeat_conn(s);

        if (c->read->ready) {
            hb->on_receive(ngx_current_msec);
        }

        /*
         * the client's data held back behind writes to the upstream that
         * block is no idleness of the client's (ws_heartbeat_read_timeout)
         */

        if (s->which() == NGX_HTTP_WS_HB_CLIENT
            && ctx->is(&ctx->upstream, NGX_HTTP_WS_HB_S_BLOCKED))
        {
            hb->on_data(ngx_current_msec);
        }

        /* a Ping stuck behind writes that block: is the peer reading? */

        if (ctx->is(s, NGX_HTTP_WS_HB_S_PING_QUEUED)
            && ctx->is(s, NGX_HTTP_WS_HB_S_BLOCKED)
            && ngx_http_ws_heartbeat_takes(s, c, lcf->timeout))
        {
            hb->on_receive(ngx_current_msec);
        }

        a = hb->on_timer(ngx_http_ws_heartbeat_hb_conf(ctx, s->which()),
                         ngx_current_msec);

        if (a.kind == wshb::action::close) {
            ctx->arm_later = 0;
            ngx_http_ws_heartbeat_close(ctx, s, a.reason);
            return;
        }

        if (a.kind == wshb::action::send_ping) {
            ngx_http_ws_heartbeat_send_ping(s);
        }
    }

    ctx->arm_later = 0;
    ngx_http_ws_heartbeat_arm(ctx);
}
