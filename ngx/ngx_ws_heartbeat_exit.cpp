
/*
 * ngx_ws_heartbeat_module: the worker-exit drain. A watch connection per
 * worker learns that the worker is exiting (reload, nginx -s quit); each
 * managed connection then gets Close 1001 toward the upstream at a message
 * boundary, and what is still open at ws_heartbeat_drain_timeout is closed
 * through the close path (ngx_ws_heartbeat_close.cpp).
 */


#include "ngx_ws_heartbeat.hpp"


static void ngx_http_ws_heartbeat_exiting(ngx_event_t *ev) noexcept;


void
ngx_http_ws_heartbeat_start_drain(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    ngx_http_ws_heartbeat_side_t  *s;

    if (ctx->draining) {
        return;
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ctx->request->connection->log, 0,
                   "ws heartbeat: draining");

    ngx_http_ws_heartbeat_step_aside(ctx);
    ctx->draining = 1;

    if (ctx->end == NGX_HTTP_WS_HB_END_NONE) {
        ctx->end = NGX_HTTP_WS_HB_END_DRAIN;
    }

    /*
     * the upstream gets Close 1001 at the next boundary that is not inside
     * a fragmented message; the client hears of it through the upstream's
     * own Close, which comes after the last message the upstream sends, so
     * nothing reaches the client after a Close. Only what is still open at
     * the drain timeout gets a Close from the module itself. After an
     * endpoint's Close the closing handshake is under way already.
     */

    s = &ctx->upstream;

    if (!ctx->close_seen) {
        if (s->out.in_message() || !s->out.at_boundary()) {
            ctx->set(s, NGX_HTTP_WS_HB_S_DRAIN_PENDING, 1);

        } else {
            ngx_http_ws_heartbeat_send_close(s, 1001, "server shutting down");
        }
    }

    ngx_add_timer(ngx_http_ws_heartbeat_timer(ctx),
                  ngx_http_ws_heartbeat_conf(ctx)->drain_timeout);
}


/* the drain timeout: what is still open gets the module's own Close */

void
ngx_http_ws_heartbeat_drain_expired(ngx_http_ws_heartbeat_ctx_t *ctx)
    noexcept
{
    ngx_log_error(NGX_LOG_INFO, ctx->request->connection->log, 0,
                  "ws heartbeat: closing, drain timeout");
    ngx_http_ws_heartbeat_send_close(&ctx->client, 1001,
                                     "server shutting down");
    ngx_http_ws_heartbeat_finalize(ctx);
}


static void
ngx_http_ws_heartbeat_exiting(ngx_event_t *ev) noexcept
{
    ngx_uint_t                          i;
    ngx_connection_t                   *c;
    ngx_http_request_t                 *r;
    ngx_http_ws_heartbeat_ctx_t        *ctx;
    ngx_http_ws_heartbeat_main_conf_t  *hmcf;

    c = static_cast<ngx_connection_t *>(ev->data);
    hmcf = static_cast<ngx_http_ws_heartbeat_main_conf_t *>(c->data);

    /* ngx_close_idle_connections() sets c->close when the worker exits */

    if (!c->close) {
        return;
    }

    hmcf->watch = NULL;
    ngx_close_connection(c);

    /*
     * the worker's connections the module has hooked are those with its
     * send(); the client one of each (c == r->connection) stands for its
     * relay. One pass at exit instead of a list kept per connection.
     */

    c = ngx_cycle->connections;

    for (i = 0; i < ngx_cycle->connection_n; i++) {
        if (c[i].fd == (ngx_socket_t) -1
            || c[i].send != ngx_http_ws_heartbeat_send)
        {
            continue;
        }

        r = static_cast<ngx_http_request_t *>(c[i].data);

        if (r == NULL || r->connection != &c[i]) {
            continue;
        }

        ctx = ngx_http_ws_heartbeat_get_ctx(r);

        if (ctx != NULL && ctx->hooked
            && ngx_http_ws_heartbeat_conf(ctx)->drain)
        {
            ngx_http_ws_heartbeat_start_drain(ctx);
        }
    }
}


/*
 * nginx tells an exiting worker's idle connections by calling their read
 * handler with c->close set; a connection of our own, marked idle and
 * never added to the event loop, is how the module learns of it. Only
 * where some location drains. Its fd is one of /dev/null: no network,
 * nothing to poll, and ngx_close_connection() only close()s it (epoll
 * forgets a closed fd by itself). Without it the worker serves on and
 * leaves its connections at exit to nginx, as without the module.
 */

ngx_int_t
ngx_http_ws_heartbeat_init_process(ngx_cycle_t *cycle) noexcept
{
    ngx_fd_t                            fd;
    ngx_connection_t                   *c;
    ngx_http_ws_heartbeat_main_conf_t  *hmcf;

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    if (cycle->conf_ctx[ngx_http_module.index] == NULL) {
        return NGX_OK;
    }

    hmcf = static_cast<ngx_http_ws_heartbeat_main_conf_t *>(
               ngx_http_cycle_get_module_main_conf(cycle,
                                                   ngx_ws_heartbeat_module));

    if (!hmcf->drain) {
        return NGX_OK;
    }

    fd = ngx_open_file("/dev/null", NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, ngx_errno,
                      "ws heartbeat: open() \"/dev/null\" for the "
                      "worker-exit watch failed, connections will not be "
                      "drained");
        return NGX_OK;
    }

    c = ngx_get_connection(fd, cycle->log);
    if (c == NULL) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "ws heartbeat: no connection for the worker-exit "
                      "watch, connections will not be drained");
        (void) ngx_close_file(fd);
        return NGX_OK;
    }

    c->data = hmcf;
    c->idle = 1;
    c->read->handler = ngx_http_ws_heartbeat_exiting;
    c->read->log = cycle->log;

    hmcf->watch = c;

    return NGX_OK;
}


void
ngx_http_ws_heartbeat_exit_process(ngx_cycle_t *cycle) noexcept
{
    ngx_http_ws_heartbeat_main_conf_t  *hmcf;

    if (cycle->conf_ctx[ngx_http_module.index] == NULL) {
        return;
    }

    hmcf = static_cast<ngx_http_ws_heartbeat_main_conf_t *>(
               ngx_http_cycle_get_module_main_conf(cycle,
                                                   ngx_ws_heartbeat_module));

    if (hmcf->watch != NULL) {
        ngx_close_connection(hmcf->watch);
        hmcf->watch = NULL;
    }
}
