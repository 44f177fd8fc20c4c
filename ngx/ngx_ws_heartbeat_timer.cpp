
/*
 * ngx_ws_heartbeat_module: when things are due. One timer per connection
 * (the client connection's read event timer) serves both sides' heartbeat
 * machines (src/heartbeat.hpp): it sends the Pings through the Io queue
 * (ngx_ws_heartbeat_io.cpp) and hands dead or timed-out peers to the
 * close path (ngx_ws_heartbeat_close.cpp).
 */


#include "ngx_ws_heartbeat.hpp"


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


/* the client connection's read event: readable, or the module's timer */

void
ngx_http_ws_heartbeat_read_handler(ngx_http_request_t *r) noexcept
{
    ngx_http_ws_heartbeat_ctx_t  *ctx;

    ctx = ngx_http_ws_heartbeat_get_ctx(r);

    if (r->connection->read->timedout) {
        r->connection->read->timedout = 0;

        if (ctx != NULL && ctx->hooked) {
            ngx_http_ws_heartbeat_timer_handler(ctx);
            return;
        }
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
                   ngx_http_ws_heartbeat_hb_conf(ctx, s->which()));

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

    deadline = ngx_http_ws_heartbeat_end_deadline(ctx);

    for (i = 0; i < 2; i++) {
        d = ngx_http_ws_heartbeat_deadline(ctx->side(i));

        if (d != 0 && (deadline == 0 || d < deadline)) {
            deadline = d;
        }
    }

    if (deadline == 0) {
        if (ngx_http_ws_heartbeat_timer(ctx)->timer_set) {
            ngx_del_timer(ngx_http_ws_heartbeat_timer(ctx));
        }

        return;
    }

    /*
     * deadlines round up to a grain of about 1/64 of the interval (a power
     * of two, 1 to 128 ms): the timers of a worker's connections fall on
     * common instants, and one wake-up serves all that are due
     */

    grain = ngx_http_ws_heartbeat_conf(ctx)->interval / 64;
    grain = grain >= 128 ? 128 : grain;

    while (grain & (grain - 1)) {
        grain &= grain - 1;
    }

    if (grain > 1) {
        deadline = (deadline + grain - 1) & ~((std::uint64_t) grain - 1);
    }

    ngx_add_timer(ngx_http_ws_heartbeat_timer(ctx), deadline > ngx_current_msec
                               ? (ngx_msec_t) (deadline - ngx_current_msec)
                               : 0);
}


static void
ngx_http_ws_heartbeat_send_ping(ngx_http_ws_heartbeat_side_t *s) noexcept
{
    wshb::heartbeat              *hb;
    ngx_http_ws_heartbeat_ctx_t  *ctx;
    std::uint8_t                  payload[wshb::ping_payload_size];

    ctx = ngx_http_ws_heartbeat_ctx_of(s);
    hb = ctx->hb(s->which());

    (void) hb->make_ping(payload, ctx->random);

    if (!ngx_http_ws_heartbeat_queue_frame(s, wshb::opcode::ping, 0, payload,
                                           sizeof(payload), false))
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

    ngx_http_ws_heartbeat_flush(s);
}


/* has the peer ACKed anything within the last ms? (true if unknown) */

static bool
ngx_http_ws_heartbeat_acks(ngx_connection_t *c, ngx_msec_t ms) noexcept
{
#if (NGX_HAVE_TCP_INFO)
    socklen_t        len;
    struct tcp_info  ti;

    len = sizeof(struct tcp_info);

    if (getsockopt(c->fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == -1) {
        return true;
    }

    return ti.tcpi_last_ack_recv < ms;
#else
    return true;
#endif
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
         * a Ping stuck behind writes that block: a peer that still ACKs
         * is alive, only slow to read (nginx writes again only once a
         * good part of the socket buffer has drained)
         */

        if (ctx->is(s, NGX_HTTP_WS_HB_S_PING_QUEUED)
            && ctx->is(s, NGX_HTTP_WS_HB_S_BLOCKED)
            && ngx_http_ws_heartbeat_acks(c, lcf->timeout))
        {
            hb->on_receive(ngx_current_msec);
        }

        a = hb->on_timer(ngx_http_ws_heartbeat_hb_conf(ctx, s->which()),
                         ngx_current_msec);

        if (a.kind == wshb::action::close) {
            ngx_http_ws_heartbeat_close(ctx, s, a.reason);
            return;
        }

        if (a.kind == wshb::action::send_ping) {
            ngx_http_ws_heartbeat_send_ping(s);
        }
    }

    ngx_http_ws_heartbeat_arm(ctx);
}
