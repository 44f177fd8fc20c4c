
/*
 * ngx_ws_heartbeat_module: how a managed connection stops being managed
 * or ends. Going quiet (an endpoint's Close), stepping aside (a frame the
 * module cannot parse), the module's own Close frames, the graceful close
 * on behalf of the client (drain, max age: Close 1001 to the upstream at
 * a message boundary, bounded by ws_heartbeat_drain_timeout), and closing
 * a connection whose peer is dead or timed out: Close frames first, then
 * the upstream's own cleanup. Called from the timer, the Io adapter and
 * ngx_ws_heartbeat_exit.cpp.
 *
 * A Close of the module's ends the stream to its peer (RFC 6455 5.5.1:
 * no data after a Close): what the other peer still sends that way is
 * consumed and counted, its own Close included (wshb::outbound, last).
 */


#include "ngx_ws_heartbeat.hpp"


static void ngx_http_ws_heartbeat_discard_input(
    ngx_http_ws_heartbeat_side_t *s) noexcept;


/*
 * no more Pings or timeouts on either side; the queued Pings go too (all
 * queued frames with drop_queued). Safe inside the Io callbacks.
 */

void
ngx_http_ws_heartbeat_quiet(ngx_http_ws_heartbeat_ctx_t *ctx,
    bool drop_queued) noexcept
{
    ngx_uint_t                     i;
    wshb::heartbeat               *hb;
    ngx_http_ws_heartbeat_side_t  *s;

    for (i = 0; i < 2; i++) {
        s = ctx->side(i);
        hb = ctx->hb(i);

        if (hb != nullptr) {
            hb->stop();
        }

        if (drop_queued || ctx->is(s, NGX_HTTP_WS_HB_S_PING_QUEUED)) {
            s->out.drop_queued();
            ctx->set(s, NGX_HTTP_WS_HB_S_PING_QUEUED, 0);
        }
    }

    /* a closing connection keeps its deadline */

    if (ngx_http_ws_heartbeat_timer(ctx)->timer_set && !ctx->closing) {
        ngx_del_timer(ngx_http_ws_heartbeat_timer(ctx));
    }
}


/* the module no longer injects anything: plain forwarding, as stock nginx */

void
ngx_http_ws_heartbeat_step_aside(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    ctx->disabled = 1;

    ngx_http_ws_heartbeat_quiet(ctx, false);
}


/* safe inside the Io callbacks of s->out: it only queues */

bool
ngx_http_ws_heartbeat_queue_close(ngx_http_ws_heartbeat_side_t *s,
    std::uint16_t code, wshb::close_text text) noexcept
{
    ngx_http_ws_heartbeat_ctx_t  *ctx;

    ctx = ngx_http_ws_heartbeat_ctx_of(s);

    if (ctx->is(s, NGX_HTTP_WS_HB_S_CLOSE_SENT) || s->out.passthrough()) {
        return false;
    }

    /* a Close takes the place of a queued Ping */

    if (!ngx_http_ws_heartbeat_queue_frame(s, wshb::opcode::close, code,
                                           text, true))
    {
        return false;
    }

    ctx->set(s, NGX_HTTP_WS_HB_S_CLOSE_SENT, 1);
    ctx->set(s, NGX_HTTP_WS_HB_S_CLOSE_PENDING, 0);
    ctx->set(s, NGX_HTTP_WS_HB_S_PING_QUEUED, 0);

    return true;
}


void
ngx_http_ws_heartbeat_send_close(ngx_http_ws_heartbeat_side_t *s,
    std::uint16_t code, wshb::close_text text) noexcept
{
    if (ngx_http_ws_heartbeat_queue_close(s, code, text)) {
        ngx_http_ws_heartbeat_flush(s);
    }
}


static wshb::close_text
ngx_http_ws_heartbeat_closing_reason(ngx_http_ws_heartbeat_ctx_t *ctx)
    noexcept
{
    return ctx->end == NGX_HTTP_WS_HB_END_MAX_AGE
           ? wshb::close_text::max_age : wshb::close_text::shutting_down;
}


/*
 * Close the connection on behalf of the client (a worker that exits, a
 * connection at its max age): the upstream gets Close 1001 at the next
 * boundary between messages; the client hears of it through the
 * upstream's own Close, which comes after the last message the upstream
 * sends, and its answer goes no further. What is still open at
 * ws_heartbeat_drain_timeout is closed by the module (closing_expired()).
 */

void
ngx_http_ws_heartbeat_start_closing(ngx_http_ws_heartbeat_ctx_t *ctx,
    ngx_http_ws_heartbeat_end_e why) noexcept
{
    ngx_http_ws_heartbeat_side_t  *s;

    if (ctx->closing) {
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ctx->request->connection->log, 0,
                   "ws heartbeat: closing, %s",
                   ngx_http_ws_heartbeat_end_names[why]);

    ngx_http_ws_heartbeat_step_aside(ctx);
    ctx->closing = 1;

    if (ctx->end == NGX_HTTP_WS_HB_END_NONE) {
        ctx->end = why;
    }

    /* after an endpoint's Close the closing handshake is under way */

    if (!ctx->close_seen) {
        s = &ctx->upstream;
        ctx->set(s, NGX_HTTP_WS_HB_S_CLOSE_PENDING, 1);

        if (ngx_http_ws_heartbeat_close_pending(s)) {
            ngx_http_ws_heartbeat_flush(s);
        }
    }

    ngx_add_timer(ngx_http_ws_heartbeat_timer(ctx),
                  ngx_http_ws_heartbeat_conf(ctx)->drain_timeout);
}


/*
 * the graceful Close waits for the end of the message in flight and for a
 * frame of ours in flight (a Ping); true when it has been queued. Safe
 * inside the Io callbacks: it only queues.
 */

bool
ngx_http_ws_heartbeat_close_pending(ngx_http_ws_heartbeat_side_t *s) noexcept
{
    ngx_http_ws_heartbeat_ctx_t  *ctx;

    ctx = ngx_http_ws_heartbeat_ctx_of(s);

    if (!ctx->is(s, NGX_HTTP_WS_HB_S_CLOSE_PENDING)
        || s->out.in_message()
        || !s->out.at_boundary())
    {
        return false;
    }

    return ngx_http_ws_heartbeat_queue_close(s, 1001,
               ngx_http_ws_heartbeat_closing_reason(ctx));
}


/* the drain timeout has passed: what is still open is closed now */

void
ngx_http_ws_heartbeat_closing_expired(ngx_http_ws_heartbeat_ctx_t *ctx)
    noexcept
{
    wshb::close_text  reason;

    reason = ngx_http_ws_heartbeat_closing_reason(ctx);

    ngx_log_error(NGX_LOG_INFO, ctx->request->connection->log, 0,
                  "ws heartbeat: closing, drain timeout");

    ngx_http_ws_heartbeat_count(ngx_http_ws_heartbeat_stats(ctx),
        closing_timeouts[ctx->end == NGX_HTTP_WS_HB_END_MAX_AGE]);

    /* a message still unfinished is cut: a Close may come between frames */

    if (ctx->is(&ctx->upstream, NGX_HTTP_WS_HB_S_CLOSE_PENDING)) {
        ngx_http_ws_heartbeat_send_close(&ctx->upstream, 1001, reason);
    }

    ngx_http_ws_heartbeat_send_close(&ctx->client, 1001, reason);
    ngx_http_ws_heartbeat_finalize(ctx);
}


void
ngx_http_ws_heartbeat_close(ngx_http_ws_heartbeat_ctx_t *ctx,
    ngx_http_ws_heartbeat_side_t *dead, wshb::close_reason reason) noexcept
{
    wshb::close_text           text;
    ngx_http_request_t        *r;
    ngx_http_core_loc_conf_t  *clcf;

    r = ctx->request;
    clcf = static_cast<ngx_http_core_loc_conf_t *>(
               ngx_http_get_module_loc_conf(r, ngx_http_core_module));

    switch (reason) {

    case wshb::close_reason::read_timeout:
        ctx->end = NGX_HTTP_WS_HB_END_READ_TIMEOUT;
        break;

    case wshb::close_reason::send_timeout:
        ctx->end = NGX_HTTP_WS_HB_END_SEND_TIMEOUT;
        break;

    default:
        ctx->end = dead->which() == NGX_HTTP_WS_HB_CLIENT
                   ? NGX_HTTP_WS_HB_END_CLIENT_HEARTBEAT
                   : NGX_HTTP_WS_HB_END_UPSTREAM_HEARTBEAT;
    }

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "ws heartbeat: closing, %s %s in location \"%V\"",
                  ngx_http_ws_heartbeat_side_name(dead->which()),
                  wshb::to_string(reason), &clcf->name);

    ngx_http_ws_heartbeat_step_aside(ctx);

    /*
     * tell the side still alive first, then best effort the other one;
     * a client gone dead makes the backend see 1001 "going away", a dead
     * upstream makes the client see 1011
     */

    if (dead->which() == NGX_HTTP_WS_HB_CLIENT) {
        text = reason == wshb::close_reason::heartbeat_timeout
               ? wshb::close_text::heartbeat_timeout
               : reason == wshb::close_reason::read_timeout
               ? wshb::close_text::read_timeout
               : wshb::close_text::send_timeout;

        ngx_http_ws_heartbeat_send_close(&ctx->upstream, 1001, text);
        ngx_http_ws_heartbeat_send_close(&ctx->client, 1001, text);

    } else {
        ngx_http_ws_heartbeat_send_close(&ctx->client, 1011,
                                         wshb::close_text::upstream_timeout);
        ngx_http_ws_heartbeat_send_close(&ctx->upstream, 1001,
                                         wshb::close_text::heartbeat_timeout);
    }

    ngx_http_ws_heartbeat_finalize(ctx);
}


void
ngx_http_ws_heartbeat_finalize(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    ngx_connection_t      *c;
    ngx_http_request_t    *r;
    ngx_http_cleanup_pt    cleanup;
    ngx_http_upstream_t   *u;

    r = ctx->request;
    c = r->connection;
    u = r->upstream;

    ngx_http_ws_heartbeat_discard_input(&ctx->upstream);
    ngx_http_ws_heartbeat_discard_input(&ctx->client);

    /*
     * the upstream's own cleanup (ngx_http_upstream_cleanup(), the slot
     * u->cleanup points to in r->cleanup) ends the relay as a peer's close
     * does: the upstream connection closes, the request is finalized with
     * NGX_DONE and the client connection closes (or lingers). Not
     * ngx_http_finalize_request(r, NGX_ERROR): with post_action it runs
     * the post action and leaves the relay open; alone it also frees r
     * inside ngx_http_terminate_request(). r is gone afterwards.
     */

    if (u == NULL || u->cleanup == NULL || *u->cleanup == NULL) {
        r->main->count++;
        ngx_http_finalize_request(r, NGX_ERROR);
        ngx_http_run_posted_requests(c);
        return;
    }

    cleanup = *u->cleanup;
    cleanup(r);
    ngx_http_run_posted_requests(c);
}


/*
 * close() on a socket with unread input sends RST and discards what is
 * still queued for sending: our Close frame. Read and drop what has
 * arrived (bounded) so that the Close goes out before the FIN.
 */

static void
ngx_http_ws_heartbeat_discard_input(ngx_http_ws_heartbeat_side_t *s) noexcept
{
    size_t             total;
    ssize_t            n;
    u_char             buf[4096];
    ngx_connection_t  *c;

    c = ngx_http_ws_heartbeat_conn(s);

    if (c == NULL) {
        return;
    }

    for (total = 0; total < 65536; total += n) {
        n = c->recv(c, buf, sizeof(buf));

        if (n <= 0) {
            return;
        }
    }
}
