
/*
 * ngx_ws_heartbeat_module: the ends the module plans for a connection.
 * The worker-exit drain: a watch connection per worker learns that the
 * worker is exiting (reload, nginx -s quit), and each managed connection
 * starts its graceful close (ngx_ws_heartbeat_close.cpp) at its own random
 * moment in ws_heartbeat_drain_spread. The max age: each connection is
 * closed the same way at its own age in [max age - jitter, max age].
 * The timer (ngx_ws_heartbeat_timer.cpp) asks when and whether they are due.
 */


#include "ngx_ws_heartbeat.hpp"


static void ngx_http_ws_heartbeat_exiting(ngx_event_t *ev) noexcept;


/* a uniform draw from [0, range] of a 32-bit random value */

static ngx_msec_t
ngx_http_ws_heartbeat_uniform(std::uint32_t random, ngx_msec_t range) noexcept
{
    return (ngx_msec_t) (((std::uint64_t) random * (range + 1)) >> 32);
}


/* when this connection's drain starts: its own moment in the spread */

static std::uint64_t
ngx_http_ws_heartbeat_drain_at(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    ngx_msec_t                          spread, room;
    ngx_core_conf_t                    *ccf;
    ngx_http_ws_heartbeat_loc_conf_t   *lcf;
    ngx_http_ws_heartbeat_main_conf_t  *hmcf;

    lcf = ngx_http_ws_heartbeat_conf(ctx);
    hmcf = ngx_http_ws_heartbeat_main_conf(ctx->request);

    if (!hmcf->exiting || !lcf->drain) {
        return 0;
    }

    /* spread and drain timeout fit in worker_shutdown_timeout */

    spread = lcf->drain_spread;
    ccf = reinterpret_cast<ngx_core_conf_t *>(
              ngx_get_conf(ngx_cycle->conf_ctx, ngx_core_module));

    if (ccf->shutdown_timeout != 0
        && ccf->shutdown_timeout != NGX_CONF_UNSET_MSEC)
    {
        room = ccf->shutdown_timeout > lcf->drain_timeout
               ? ccf->shutdown_timeout - lcf->drain_timeout : 0;
        spread = ngx_min(spread, room);
    }

    return (std::uint64_t) hmcf->exit_msec
           + ngx_http_ws_heartbeat_uniform(ctx->random, spread);
}


/* when this connection reaches its max age: its own moment in the jitter */

static std::uint64_t
ngx_http_ws_heartbeat_max_age_at(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    ngx_msec_t                         age, target;
    std::uint32_t                      h;
    ngx_time_t                        *tp;
    ngx_http_request_t                *r;
    ngx_http_ws_heartbeat_loc_conf_t  *lcf;

    lcf = ngx_http_ws_heartbeat_conf(ctx);

    /* a connection the module stepped aside from is left as it is */

    if (lcf->max_age == 0 || ctx->disabled) {
        return 0;
    }

    /* a draw of its own, not the drain's: the random value mixed */

    h = ctx->random;
    h = (h ^ (h >> 16)) * 0x85ebca6b;
    h = (h ^ (h >> 13)) * 0xc2b2ae35;
    h ^= h >> 16;

    target = lcf->max_age - ngx_http_ws_heartbeat_uniform(h,
                                                        lcf->max_age_jitter);

    /* the age of the connection: of its request, in nginx's cached time */

    r = ctx->request;
    tp = ngx_timeofday();
    age = (ngx_msec_t) (tp->sec - r->start_sec) * 1000
          + tp->msec - r->start_msec;

    return (std::uint64_t) ngx_current_msec
           + (target > age ? target - age : 0);
}


/* the next planned end of a connection (drain, max age); 0: none */

std::uint64_t
ngx_http_ws_heartbeat_end_deadline(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    std::uint64_t  drain, age;

    if (ctx->closing) {
        return 0;
    }

    drain = ngx_http_ws_heartbeat_drain_at(ctx);
    age = ngx_http_ws_heartbeat_max_age_at(ctx);

    if (drain == 0 || (age != 0 && age < drain)) {
        return age;
    }

    return drain;
}


/*
 * the timer: a planned end that is due starts the graceful close; in an
 * exiting worker with ws_heartbeat_drain off the module steps aside, so
 * that the connection ends as with stock nginx (its Pings would keep an
 * idle one alive). True: nothing more for the heartbeat to do.
 */

bool
ngx_http_ws_heartbeat_end_due(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    std::uint64_t                       at;
    ngx_http_ws_heartbeat_main_conf_t  *hmcf;

    if (ctx->closing) {
        return true;
    }

    hmcf = ngx_http_ws_heartbeat_main_conf(ctx->request);

    /* the watch could not tell (it is missing): ngx_exiting does */

    if (ngx_exiting && !hmcf->exiting) {
        hmcf->exiting = 1;
        hmcf->exit_msec = ngx_current_msec;
    }

    if (hmcf->exiting && !ngx_http_ws_heartbeat_conf(ctx)->drain) {
        if (!ctx->disabled) {
            ngx_http_ws_heartbeat_step_aside(ctx);
        }

        return true;
    }

    at = ngx_http_ws_heartbeat_drain_at(ctx);

    if (at != 0 && at <= ngx_current_msec) {
        ngx_http_ws_heartbeat_start_closing(ctx, NGX_HTTP_WS_HB_END_DRAIN);
        return true;
    }

    at = ngx_http_ws_heartbeat_max_age_at(ctx);

    if (at != 0 && at <= ngx_current_msec) {
        ngx_http_ws_heartbeat_start_closing(ctx, NGX_HTTP_WS_HB_END_MAX_AGE);
        return true;
    }

    return false;
}


/* a connection upgraded while the worker is already exiting drains now */

void
ngx_http_ws_heartbeat_exit_hooked(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    if (!ngx_exiting) {
        return;
    }

    if (ngx_http_ws_heartbeat_conf(ctx)->drain) {
        ngx_http_ws_heartbeat_start_closing(ctx, NGX_HTTP_WS_HB_END_DRAIN);

    } else {
        ngx_http_ws_heartbeat_step_aside(ctx);
    }
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

    hmcf->exiting = 1;
    hmcf->exit_msec = ngx_current_msec;

    /*
     * the worker's connections the module has hooked are those with its
     * send(); the client one of each (c == r->connection) stands for its
     * relay. One pass at exit instead of a list kept per connection.
     */

    c = ngx_cycle->connections;

    for (i = 0; i < ngx_cycle->connection_n; i++) {
        if (c[i].fd == (ngx_socket_t) -1
            || c[i].send != ngx_http_ws_heartbeat_send_client)
        {
            continue;
        }

        r = static_cast<ngx_http_request_t *>(c[i].data);

        if (r == NULL || r->connection != &c[i]) {
            continue;
        }

        ctx = ngx_http_ws_heartbeat_get_ctx(r);

        /* a relay that has ended (lingering close) is no drain's */

        if (ctx == NULL || !ctx->hooked || r->upstream == NULL
            || r->upstream->peer.connection == NULL)
        {
            continue;
        }

        /* each starts its drain at its own moment: the timer tells */

        if (!ngx_http_ws_heartbeat_end_due(ctx)) {
            ngx_http_ws_heartbeat_arm(ctx);
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

    ngx_http_ws_heartbeat_stats_init_process(hmcf);

    if (!hmcf->watched) {
        return NGX_OK;
    }

    fd = ngx_open_file("/dev/null", NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, ngx_errno,
                      "ws heartbeat: open() \"/dev/null\" for the "
                      "worker-exit watch failed, an exiting worker's "
                      "connections drain when their timers next wake");
        return NGX_OK;
    }

    c = ngx_get_connection(fd, cycle->log);
    if (c == NULL) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "ws heartbeat: no connection for the worker-exit "
                      "watch, an exiting worker's connections drain when "
                      "their timers next wake");
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

    ngx_http_ws_heartbeat_stats_exit_process(hmcf);
}
