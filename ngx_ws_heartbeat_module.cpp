
/*
 * ngx_ws_heartbeat_module: heartbeats for WebSocket connections that
 * proxy_pass upgrades. The nginx glue: directives, configuration, the
 * header and body filters that find upgraded connections, and the hooks
 * (send/recv wrappers, write-event wrappers, timers) that run the core in
 * src/ on the relay nginx itself keeps running.
 */


#include "ngx/ngx_ws_heartbeat.hpp"

#include <openssl/rand.h>

#include <new>


static ngx_int_t ngx_http_ws_heartbeat_header_filter(ngx_http_request_t *r)
    noexcept;
static ngx_int_t ngx_http_ws_heartbeat_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in) noexcept;
static ngx_int_t ngx_http_ws_heartbeat_is_websocket(ngx_http_request_t *r,
    bool *rsv1) noexcept;
static void ngx_http_ws_heartbeat_hook(ngx_http_request_t *r,
    ngx_http_ws_heartbeat_ctx_t *ctx) noexcept;
static void ngx_http_ws_heartbeat_cleanup(void *data) noexcept;
static ssize_t ngx_http_ws_heartbeat_send(ngx_connection_t *c, u_char *buf,
    size_t size) noexcept;
static ssize_t ngx_http_ws_heartbeat_recv(ngx_connection_t *c, u_char *buf,
    size_t size) noexcept;
static void ngx_http_ws_heartbeat_write_handler(ngx_http_request_t *r)
    noexcept;
static void ngx_http_ws_heartbeat_upstream_write_handler(
    ngx_http_request_t *r, ngx_http_upstream_t *u) noexcept;
static void ngx_http_ws_heartbeat_read_handler(ngx_http_request_t *r)
    noexcept;
static void ngx_http_ws_heartbeat_timer_handler(
    ngx_http_ws_heartbeat_ctx_t *ctx) noexcept;
static void ngx_http_ws_heartbeat_flush(ngx_http_ws_heartbeat_side_t *s)
    noexcept;
static void ngx_http_ws_heartbeat_release(ngx_http_ws_heartbeat_side_t *s)
    noexcept;
static void ngx_http_ws_heartbeat_arm(ngx_http_ws_heartbeat_ctx_t *ctx)
    noexcept;
static void ngx_http_ws_heartbeat_step_aside(ngx_http_ws_heartbeat_ctx_t *ctx)
    noexcept;
static void ngx_http_ws_heartbeat_close(ngx_http_ws_heartbeat_ctx_t *ctx,
    ngx_http_ws_heartbeat_side_t *dead, wshb::close_reason reason) noexcept;

static char *ngx_http_ws_heartbeat_set_time(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf) noexcept;
static void *ngx_http_ws_heartbeat_create_loc_conf(ngx_conf_t *cf) noexcept;
static char *ngx_http_ws_heartbeat_merge_loc_conf(ngx_conf_t *cf,
    void *parent, void *child) noexcept;
static ngx_int_t ngx_http_ws_heartbeat_init(ngx_conf_t *cf) noexcept;
static void *ngx_http_ws_heartbeat_create_main_conf(ngx_conf_t *cf) noexcept;
static ngx_int_t ngx_http_ws_heartbeat_init_process(ngx_cycle_t *cycle)
    noexcept;
static void ngx_http_ws_heartbeat_exit_process(ngx_cycle_t *cycle) noexcept;
static void ngx_http_ws_heartbeat_exiting(ngx_event_t *ev) noexcept;
static void ngx_http_ws_heartbeat_start_drain(
    ngx_http_ws_heartbeat_ctx_t *ctx) noexcept;
static void ngx_http_ws_heartbeat_finalize(ngx_http_ws_heartbeat_ctx_t *ctx)
    noexcept;
static bool ngx_http_ws_heartbeat_queue_close(
    ngx_http_ws_heartbeat_side_t *s, std::uint16_t code, const char *reason)
    noexcept;
static void ngx_http_ws_heartbeat_send_close(ngx_http_ws_heartbeat_side_t *s,
    std::uint16_t code, const char *reason) noexcept;


/* times: "low" 0 means that 0 turns the feature off */

static ngx_conf_num_bounds_t  ngx_http_ws_heartbeat_positive = {
    ngx_conf_check_num_bounds, NGX_HTTP_WS_HEARTBEAT_MIN_TIME,
    NGX_HTTP_WS_HEARTBEAT_MAX_TIME
};

static ngx_conf_num_bounds_t  ngx_http_ws_heartbeat_optional = {
    ngx_conf_check_num_bounds, 0, NGX_HTTP_WS_HEARTBEAT_MAX_TIME
};


static ngx_command_t  ngx_http_ws_heartbeat_commands[] = {

    { ngx_string("ws_heartbeat"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ws_heartbeat_loc_conf_t, enable),
      NULL },

    { ngx_string("ws_heartbeat_interval"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_ws_heartbeat_set_time,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ws_heartbeat_loc_conf_t, interval),
      &ngx_http_ws_heartbeat_positive },

    { ngx_string("ws_heartbeat_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_ws_heartbeat_set_time,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ws_heartbeat_loc_conf_t, timeout),
      &ngx_http_ws_heartbeat_positive },

    { ngx_string("ws_heartbeat_upstream"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ws_heartbeat_loc_conf_t, upstream),
      NULL },

    { ngx_string("ws_heartbeat_read_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_ws_heartbeat_set_time,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ws_heartbeat_loc_conf_t, read_timeout),
      &ngx_http_ws_heartbeat_optional },

    { ngx_string("ws_heartbeat_send_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_ws_heartbeat_set_time,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ws_heartbeat_loc_conf_t, send_timeout),
      &ngx_http_ws_heartbeat_optional },

    { ngx_string("ws_heartbeat_drain"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ws_heartbeat_loc_conf_t, drain),
      NULL },

    { ngx_string("ws_heartbeat_drain_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_ws_heartbeat_set_time,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ws_heartbeat_loc_conf_t, drain_timeout),
      &ngx_http_ws_heartbeat_positive },

    { ngx_string("ws_heartbeat_status"),
      NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_ws_heartbeat_status,
      0,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_ws_heartbeat_module_ctx = {
    ngx_http_ws_heartbeat_add_variables,   /* preconfiguration */
    ngx_http_ws_heartbeat_init,            /* postconfiguration */

    ngx_http_ws_heartbeat_create_main_conf, /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_ws_heartbeat_create_loc_conf, /* create location configuration */
    ngx_http_ws_heartbeat_merge_loc_conf   /* merge location configuration */
};


extern "C" {

ngx_module_t  ngx_ws_heartbeat_module = {
    NGX_MODULE_V1,
    &ngx_http_ws_heartbeat_module_ctx,     /* module context */
    ngx_http_ws_heartbeat_commands,        /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_ws_heartbeat_init_process,    /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_ws_heartbeat_exit_process,    /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};

/* present when nginx has the proxy module; used for a configuration check */
extern ngx_module_t  ngx_http_proxy_module __attribute__((weak));

}


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;


static ngx_str_t  ngx_http_ws_heartbeat_websocket = ngx_string("websocket");
static ngx_str_t  ngx_http_ws_heartbeat_deflate =
    ngx_string("permessage-deflate");


static std::uint64_t
ngx_http_ws_heartbeat_now_us() noexcept
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (std::uint64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}


/*
 * The connection's Ping key (wshb::heartbeat::make_ping): a placeholder
 * until the ctx carries a random value drawn per connection.
 */

static std::uint32_t
ngx_http_ws_heartbeat_ping_key(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    (void) ctx;

    return 0;
}


/* a side's ctx: the sides are members of it */

static ngx_http_ws_heartbeat_ctx_t *
ngx_http_ws_heartbeat_ctx_of(ngx_http_ws_heartbeat_side_t *s) noexcept
{
    size_t  off;

    off = s->which() == NGX_HTTP_WS_HB_CLIENT
          ? offsetof(ngx_http_ws_heartbeat_ctx_t, client)
          : offsetof(ngx_http_ws_heartbeat_ctx_t, upstream);

    return reinterpret_cast<ngx_http_ws_heartbeat_ctx_t *>(
               reinterpret_cast<u_char *>(s) - off);
}


/* a side's connection; NULL once the upstream one is closed */

static ngx_connection_t *
ngx_http_ws_heartbeat_conn(ngx_http_ws_heartbeat_side_t *s) noexcept
{
    ngx_http_request_t  *r;

    r = ngx_http_ws_heartbeat_ctx_of(s)->request;

    if (s->which() == NGX_HTTP_WS_HB_CLIENT) {
        return r->connection;
    }

    return r->upstream != NULL ? r->upstream->peer.connection : NULL;
}


static ngx_http_ws_heartbeat_side_t *
ngx_http_ws_heartbeat_side_at(ngx_http_ws_heartbeat_ctx_t *ctx, ngx_uint_t i)
    noexcept
{
    return i == NGX_HTTP_WS_HB_CLIENT ? &ctx->client : &ctx->upstream;
}


/* no more Pings or timeouts on either side */

static void
ngx_http_ws_heartbeat_stop(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    wshb::heartbeat  *hb;

    ctx->client_hb.stop();

    hb = ctx->hb(NGX_HTTP_WS_HB_UPSTREAM);

    if (hb != nullptr) {
        hb->stop();
    }
}


static ngx_http_ws_heartbeat_loc_conf_t *
ngx_http_ws_heartbeat_conf(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    return static_cast<ngx_http_ws_heartbeat_loc_conf_t *>(
               ngx_http_get_module_loc_conf(ctx->request,
                                            ngx_ws_heartbeat_module));
}


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


static ngx_http_ws_heartbeat_stats_t *
ngx_http_ws_heartbeat_stats(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    return static_cast<ngx_http_ws_heartbeat_main_conf_t *>(
               ngx_http_get_module_main_conf(ctx->request,
                                             ngx_ws_heartbeat_module))
           ->stats;
}


/*
 * the timer of a connection's heartbeat and of its drain: the client
 * connection's read event, whose timer nginx leaves unused while relaying
 * (it fires into r->read_event_handler, which the module wraps)
 */

static ngx_event_t *
ngx_http_ws_heartbeat_timer(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    return ctx->request->connection->read;
}


/*
 * nginx's own I/O functions of a connection: what an upgraded connection
 * has unless another module wrapped them (then the module stays out)
 */

static ngx_send_pt
ngx_http_ws_heartbeat_io_send(ngx_connection_t *c) noexcept
{
#if (NGX_SSL)
    if (c->ssl) {
        return ngx_ssl_write;
    }
#endif

    return ngx_io.send;
}


static ngx_recv_pt
ngx_http_ws_heartbeat_io_recv(ngx_connection_t *c) noexcept
{
#if (NGX_SSL)
    if (c->ssl) {
        return ngx_ssl_recv;
    }
#endif

    return ngx_io.recv;
}


/* the Io of wshb::outbound: the real send of one peer's connection */

#pragma GCC visibility push(hidden)

struct ngx_http_ws_heartbeat_io {
    ngx_http_ws_heartbeat_side_t  *side;
    ngx_http_ws_heartbeat_ctx_t   *ctx;
    ngx_connection_t              *conn;

    ngx_http_ws_heartbeat_io(ngx_http_ws_heartbeat_side_t *s,
        ngx_connection_t *c) noexcept
        : side(s), ctx(ngx_http_ws_heartbeat_ctx_of(s)), conn(c)
    {
    }

    long write(const std::uint8_t *p, std::size_t n) noexcept
    {
        ngx_connection_t  *c = conn;
        ssize_t            rc;
        wshb::heartbeat   *hb;

        rc = ngx_http_ws_heartbeat_io_send(c)(c, const_cast<u_char *>(p), n);

        hb = ctx->hb(side->which());

        if (rc > 0) {
            if (hb != nullptr) {
                hb->on_write_progress();
            }

            side->set(NGX_HTTP_WS_HB_S_BLOCKED, 0);
        }

        if (rc == NGX_ERROR || (rc >= 0 && (size_t) rc == n)) {
            return rc;
        }

        /* short write or NGX_AGAIN: the real send has cleared ready */

        if (!side->is(NGX_HTTP_WS_HB_S_BLOCKED)) {
            side->set(NGX_HTTP_WS_HB_S_BLOCKED, 1);

            if (hb != nullptr) {
                hb->on_write_blocked(ngx_current_msec);
                ngx_http_ws_heartbeat_arm(ctx);
            }
        }

        return rc;
    }

    /* the peer whose frames this stream carries */
    ngx_http_ws_heartbeat_side_t *sender() noexcept
    {
        return side->which() == NGX_HTTP_WS_HB_CLIENT ? &ctx->upstream
                                                    : &ctx->client;
    }

    bool match_pong(const std::uint8_t *payload, std::size_t n) noexcept
    {
        bool                           sampled;
        wshb::heartbeat               *hb;
        ngx_http_ws_heartbeat_side_t  *peer;
        ngx_http_ws_heartbeat_stats_t *st;

        peer = sender();
        hb = ctx->hb(peer->which());

        if (hb == nullptr) {
            return false;
        }

        if (!hb->on_pong(payload, n, ngx_http_ws_heartbeat_ping_key(ctx),
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

    void on_header(const wshb::frame_header &h) noexcept
    {
        wshb::heartbeat  *hb;

        if (wshb::is_data(h.op)) {
            hb = ctx->hb(sender()->which());

            if (hb != nullptr) {
                hb->on_data(ngx_current_msec);
            }
        }
    }

    void on_frame(const wshb::frame_header &h, const std::uint8_t *payload,
                  std::size_t n) noexcept
    {
        if (h.op == wshb::opcode::close) {
            ngx_http_ws_heartbeat_count_close_frame(
                ngx_http_ws_heartbeat_stats(ctx), sender()->which(),
                payload, n);
            if (ctx->first_close == 0) {
                ctx->first_close = sender()->which() + 1;
            }
        }

        /*
         * draining: the Close waited for the message in flight to end,
         * unless an endpoint's own Close has just gone that way
         */

        if (side->is(NGX_HTTP_WS_HB_S_DRAIN_PENDING)
            && !side->out.in_message())
        {
            side->set(NGX_HTTP_WS_HB_S_DRAIN_PENDING, 0);

            if (h.op != wshb::opcode::close) {
                (void) ngx_http_ws_heartbeat_queue_close(side, 1001,
                                                   "server shutting down");
            }
        }

        /* a Close has gone to this peer: the module sends none of its own */

        if (h.op == wshb::opcode::close) {
            side->set(NGX_HTTP_WS_HB_S_CLOSE_SENT, 1);
        }

        if (h.op != wshb::opcode::close || ctx->close_seen) {
            return;
        }

        /* an endpoint started the closing handshake: no more Pings */

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, conn->log, 0,
                       "ws heartbeat: %s sent Close",
                       side->which() == NGX_HTTP_WS_HB_CLIENT ? "upstream"
                                                            : "client");
        ctx->close_seen = 1;
        ngx_http_ws_heartbeat_stop(ctx);
        ctx->client.out.drop_queued();
        ctx->upstream.out.drop_queued();
        ctx->client.set(NGX_HTTP_WS_HB_S_PING_QUEUED, 0);
        ctx->upstream.set(NGX_HTTP_WS_HB_S_PING_QUEUED, 0);

        /* a draining connection keeps its grace timer */

        if (ctx->draining) {
            return;
        }

        if (ngx_http_ws_heartbeat_timer(ctx)->timer_set) {
            ngx_del_timer(ngx_http_ws_heartbeat_timer(ctx));
        }
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
                      side->which() == NGX_HTTP_WS_HB_CLIENT ? "upstream"
                                                           : "client",
                      wshb::to_string(e));

        ngx_http_ws_heartbeat_step_aside(ctx);
    }
};

#pragma GCC visibility pop


static ngx_int_t
ngx_http_ws_heartbeat_header_filter(ngx_http_request_t *r) noexcept
{
    bool                               rsv1;
    void                              *p;
    size_t                             size;
    ngx_pool_cleanup_t                *cln;
    ngx_http_upstream_t               *u;
    ngx_http_ws_heartbeat_ctx_t       *ctx;
    ngx_http_ws_heartbeat_loc_conf_t  *lcf;

    lcf = static_cast<ngx_http_ws_heartbeat_loc_conf_t *>(
              ngx_http_get_module_loc_conf(r, ngx_ws_heartbeat_module));

    u = r->upstream;

    if (!lcf->enable
        || r != r->main
        || r->headers_out.status != NGX_HTTP_SWITCHING_PROTOCOLS
        || u == NULL
        || !u->upgrade
        || u->peer.connection == NULL
        || r->http_version != NGX_HTTP_VERSION_11
        || r->stream != NULL)
    {
        return ngx_http_next_header_filter(r);
    }

    if (ngx_http_ws_heartbeat_is_websocket(r, &rsv1) != NGX_OK) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "ws heartbeat: not a WebSocket upgrade, skipped");
        return ngx_http_next_header_filter(r);
    }

    /*
     * a block of its own size, freed with the connection's pool: in
     * r->pool it often opens a new request_pool_size (4k) block, and a
     * small allocation from the connection's pool a new 512-byte one
     */

    size = ngx_http_ws_heartbeat_ctx_t::size(lcf->upstream != 0);

    p = ngx_pmemalign(r->connection->pool, size,
                      alignof(ngx_http_ws_heartbeat_ctx_t));
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(p, size);

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    ctx = new (p) ngx_http_ws_heartbeat_ctx_t(r, lcf->upstream != 0, rsv1);
    ctx->header_write_handler = r->write_event_handler;

    cln->handler = ngx_http_ws_heartbeat_cleanup;
    cln->data = ctx;

    ngx_http_set_ctx(r, ctx, ngx_ws_heartbeat_module);

    return ngx_http_next_header_filter(r);
}


static ngx_int_t
ngx_http_ws_heartbeat_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
    noexcept
{
    ngx_http_ws_heartbeat_ctx_t  *ctx;

    ctx = static_cast<ngx_http_ws_heartbeat_ctx_t *>(
              ngx_http_get_module_ctx(r, ngx_ws_heartbeat_module));

    /*
     * the first body filter call after the 101 is ngx_http_send_special()
     * in ngx_http_upstream_upgrade(): the relay handlers are set by then
     */

    if (ctx != NULL && !ctx->seen) {
        ctx->seen = 1;

        if (r->write_event_handler != ctx->header_write_handler
            && r->upstream != NULL
            && r->upstream->peer.connection != NULL)
        {
            ngx_http_ws_heartbeat_hook(r, ctx);

        } else {
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "ws heartbeat: relay not started, skipped");
        }
    }

    return ngx_http_next_body_filter(r, in);
}


/* token "name" in a comma separated header value, case-insensitive */

static bool
ngx_http_ws_heartbeat_has_token(ngx_str_t *value, ngx_str_t *name) noexcept
{
    u_char  *p, *last, *start;

    p = value->data;
    last = p + value->len;

    while (p < last) {
        while (p < last && (*p == ' ' || *p == '\t' || *p == ',')) {
            p++;
        }

        start = p;

        while (p < last && *p != ',' && *p != ';' && *p != ' '
               && *p != '\t')
        {
            p++;
        }

        if ((size_t) (p - start) == name->len
            && ngx_strncasecmp(start, name->data, name->len) == 0)
        {
            return true;
        }

        while (p < last && *p != ',') {
            p++;
        }
    }

    return false;
}


/* all extensions in a Sec-WebSocket-Extensions value are permessage-deflate */

static bool
ngx_http_ws_heartbeat_only_deflate(ngx_str_t *value) noexcept
{
    u_char  *p, *last, *start;

    p = value->data;
    last = p + value->len;

    while (p < last) {
        while (p < last && (*p == ' ' || *p == '\t' || *p == ',')) {
            p++;
        }

        if (p == last) {
            break;
        }

        start = p;

        while (p < last && *p != ',' && *p != ';' && *p != ' '
               && *p != '\t')
        {
            p++;
        }

        if ((size_t) (p - start) != ngx_http_ws_heartbeat_deflate.len
            || ngx_strncasecmp(start, ngx_http_ws_heartbeat_deflate.data,
                               ngx_http_ws_heartbeat_deflate.len) != 0)
        {
            return false;
        }

        /* skip parameters; quoted commas do not occur in deflate params */

        while (p < last && *p != ',') {
            p++;
        }
    }

    return true;
}


static ngx_int_t
ngx_http_ws_heartbeat_is_websocket(ngx_http_request_t *r, bool *rsv1)
    noexcept
{
    ngx_uint_t        i;
    ngx_flag_t        upgrade;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    *rsv1 = false;

    if (r->headers_in.upgrade == NULL
        || !ngx_http_ws_heartbeat_has_token(&r->headers_in.upgrade->value,
                                            &ngx_http_ws_heartbeat_websocket))
    {
        return NGX_DECLINED;
    }

    upgrade = 0;
    part = &r->headers_out.headers.part;
    h = static_cast<ngx_table_elt_t *>(part->elts);

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = static_cast<ngx_table_elt_t *>(part->elts);
            i = 0;
        }

        if (h[i].hash == 0) {
            continue;
        }

        if (h[i].key.len == sizeof("Upgrade") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "Upgrade",
                               sizeof("Upgrade") - 1) == 0)
        {
            if (ngx_http_ws_heartbeat_has_token(&h[i].value,
                                      &ngx_http_ws_heartbeat_websocket))
            {
                upgrade = 1;
            }

            continue;
        }

        if (h[i].key.len == sizeof("Sec-WebSocket-Extensions") - 1
            && ngx_strncasecmp(h[i].key.data,
                               (u_char *) "Sec-WebSocket-Extensions",
                               sizeof("Sec-WebSocket-Extensions") - 1) == 0)
        {
            /* an unknown extension may use RSV bits or opcodes: step aside */

            if (!ngx_http_ws_heartbeat_only_deflate(&h[i].value)) {
                ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                               "ws heartbeat: unknown extension \"%V\"",
                               &h[i].value);
                return NGX_DECLINED;
            }

            if (h[i].value.len) {
                *rsv1 = true;
            }
        }
    }

    return upgrade ? NGX_OK : NGX_DECLINED;
}


static void
ngx_http_ws_heartbeat_start_side(ngx_http_ws_heartbeat_side_t *s,
    ngx_connection_t *c) noexcept
{
    wshb::heartbeat              *hb;
    ngx_http_ws_heartbeat_ctx_t  *ctx;

    c->send = ngx_http_ws_heartbeat_send;
    c->recv = ngx_http_ws_heartbeat_recv;

    ctx = ngx_http_ws_heartbeat_ctx_of(s);

    /* a side has a heartbeat when the module pings it */

    hb = ctx->hb(s->which());

    if (hb != nullptr) {
        hb->start(ngx_http_ws_heartbeat_hb_conf(ctx, s->which()),
                  ngx_current_msec);
    }
}


/* the relay handlers are the ones saved, or the first ones seen */

static bool
ngx_http_ws_heartbeat_same_handlers(ngx_http_request_t *r,
    ngx_http_ws_heartbeat_main_conf_t *hmcf) noexcept
{
    ngx_http_upstream_t  *u;

    u = r->upstream;

    if (hmcf->read_handler == NULL) {
        hmcf->read_handler = r->read_event_handler;
        hmcf->write_handler = r->write_event_handler;
        hmcf->upstream_write_handler = u->write_event_handler;
        return true;
    }

    return hmcf->read_handler == r->read_event_handler
           && hmcf->write_handler == r->write_event_handler
           && hmcf->upstream_write_handler == u->write_event_handler;
}


static void
ngx_http_ws_heartbeat_hook(ngx_http_request_t *r,
    ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    ngx_event_t                        *timer;
    ngx_connection_t                   *c, *uc;
    ngx_http_upstream_t                *u;
    ngx_http_ws_heartbeat_loc_conf_t   *lcf;
    ngx_http_ws_heartbeat_main_conf_t  *hmcf;

    c = r->connection;
    u = r->upstream;
    uc = u->peer.connection;
    timer = ngx_http_ws_heartbeat_timer(ctx);

    hmcf = static_cast<ngx_http_ws_heartbeat_main_conf_t *>(
               ngx_http_get_module_main_conf(r, ngx_ws_heartbeat_module));

    /* another module's hooks in the way: stay out, like stock nginx */

    if (!ngx_http_ws_heartbeat_same_handlers(r, hmcf)
        || c->send != ngx_http_ws_heartbeat_io_send(c)
        || c->recv != ngx_http_ws_heartbeat_io_recv(c)
        || uc->send != ngx_http_ws_heartbeat_io_send(uc)
        || uc->recv != ngx_http_ws_heartbeat_io_recv(uc))
    {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "ws heartbeat: relay hooked by another module, "
                      "skipped");
        return;
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0, "ws heartbeat: hooked");

    lcf = ngx_http_ws_heartbeat_conf(ctx);

    ctx->hooked = 1;

    r->read_event_handler = ngx_http_ws_heartbeat_read_handler;
    r->write_event_handler = ngx_http_ws_heartbeat_write_handler;
    u->write_event_handler = ngx_http_ws_heartbeat_upstream_write_handler;

    /*
     * not cancelable: like nginx's own relay timers it keeps an exiting
     * worker until the connection ends (ws_heartbeat_drain bounds that);
     * a cancelable bit would outlive the relay into a lingering close,
     * which the worker would then abandon ("open socket left")
     */

    timer->cancelable = 0;

    ngx_http_ws_heartbeat_start_side(&ctx->client, c);
    ngx_http_ws_heartbeat_start_side(&ctx->upstream, uc);

    ngx_http_ws_heartbeat_arm(ctx);

    ngx_http_ws_heartbeat_count(hmcf->stats, connections);
    ngx_http_ws_heartbeat_count(hmcf->stats, active);

    /* a connection upgraded while the worker is already exiting */

    if (lcf->drain && ngx_exiting) {
        ngx_http_ws_heartbeat_start_drain(ctx);
    }
}


static ngx_http_ws_heartbeat_side_t *
ngx_http_ws_heartbeat_side(ngx_connection_t *c) noexcept
{
    ngx_http_request_t           *r;
    ngx_http_ws_heartbeat_ctx_t  *ctx;

    r = static_cast<ngx_http_request_t *>(c->data);
    ctx = static_cast<ngx_http_ws_heartbeat_ctx_t *>(
              ngx_http_get_module_ctx(r, ngx_ws_heartbeat_module));

    if (ctx == NULL || !ctx->hooked) {
        return nullptr;
    }

    return c == r->connection ? &ctx->client : &ctx->upstream;
}


/*
 * r->ctx is zeroed by an internal redirect (post_action after the relay):
 * the saved functions are out of reach, nginx's own I/O functions are
 * what an upgraded connection had
 */

static void
ngx_http_ws_heartbeat_unhook(ngx_connection_t *c) noexcept
{
    c->send = ngx_http_ws_heartbeat_io_send(c);
    c->recv = ngx_http_ws_heartbeat_io_recv(c);
}


static void
ngx_http_ws_heartbeat_after_write(ngx_http_ws_heartbeat_side_t *s) noexcept
{
    /* the Pong deadline starts when our Ping has reached the socket */

    ngx_http_ws_heartbeat_ctx_t  *ctx;

    if (s->is(NGX_HTTP_WS_HB_S_PING_QUEUED) && !s->out.queued()) {
        s->set(NGX_HTTP_WS_HB_S_PING_QUEUED, 0);
        ctx = ngx_http_ws_heartbeat_ctx_of(s);
        ctx->hb(s->which())->on_ping_written(ngx_current_msec,
                                             ngx_http_ws_heartbeat_now_us());
        ngx_http_ws_heartbeat_arm(ctx);
    }
}


static ssize_t
ngx_http_ws_heartbeat_send(ngx_connection_t *c, u_char *buf, size_t size)
    noexcept
{
    long                           n;
    ngx_http_ws_heartbeat_side_t  *s;

    s = ngx_http_ws_heartbeat_side(c);

    if (s == nullptr) {
        ngx_http_ws_heartbeat_unhook(c);
        return c->send(c, buf, size);
    }

    ngx_http_ws_heartbeat_io  io(s, c);

    n = s->out.send(io, buf, size);

    ngx_http_ws_heartbeat_after_write(s);

    return n;
}


static ssize_t
ngx_http_ws_heartbeat_recv(ngx_connection_t *c, u_char *buf, size_t size)
    noexcept
{
    ssize_t                        n;
    wshb::heartbeat               *hb;
    ngx_http_ws_heartbeat_ctx_t   *ctx;
    ngx_http_ws_heartbeat_side_t  *s;

    s = ngx_http_ws_heartbeat_side(c);

    if (s == nullptr) {
        ngx_http_ws_heartbeat_unhook(c);
        return c->recv(c, buf, size);
    }

    n = ngx_http_ws_heartbeat_io_recv(c)(c, buf, size);

    ctx = ngx_http_ws_heartbeat_ctx_of(s);

    if (n > 0) {
        hb = ctx->hb(s->which());

        if (hb != nullptr) {
            hb->on_receive(ngx_current_msec);
        }

    } else if (n == 0 || n == NGX_ERROR) {
        if (ctx->first_eof == 0) {
            ctx->first_eof = s->which() + 1;
        }

        /* the start of a Pong held back from the other side goes on */

        ngx_http_ws_heartbeat_release(s->which() == NGX_HTTP_WS_HB_CLIENT
                                      ? &ctx->upstream : &ctx->client);
    }

    return n;
}


static void
ngx_http_ws_heartbeat_release(ngx_http_ws_heartbeat_side_t *s) noexcept
{
    ngx_connection_t  *c;

    c = ngx_http_ws_heartbeat_conn(s);

    if (c == NULL || !c->write->ready) {
        return;
    }

    ngx_http_ws_heartbeat_io  io(s, c);

    if (s->out.release(io) == NGX_AGAIN) {
        (void) ngx_handle_write_event(c->write, 0);
    }

    ngx_http_ws_heartbeat_after_write(s);
}


static void
ngx_http_ws_heartbeat_flush(ngx_http_ws_heartbeat_side_t *s) noexcept
{
    long               rc;
    ngx_connection_t  *c;

    /* the common case: each write event of the relay comes through here */

    if (!s->out.pending()) {
        return;
    }

    c = ngx_http_ws_heartbeat_conn(s);

    if (c == NULL || !c->write->ready) {
        return;
    }

    ngx_http_ws_heartbeat_io  io(s, c);

    /*
     * ngx_http_upstream_upgrade() does not check that the 101 header went
     * out whole; nothing of ours may go before its rest
     */

    if (s->which() == NGX_HTTP_WS_HB_CLIENT
        && (c->buffered || io.ctx->request->out != NULL))
    {
        return;
    }

    rc = s->out.flush(io);

    if (rc == NGX_AGAIN) {
        (void) ngx_handle_write_event(c->write, 0);
    }

    ngx_http_ws_heartbeat_after_write(s);
}


static ngx_http_ws_heartbeat_main_conf_t *
ngx_http_ws_heartbeat_main_conf(ngx_http_request_t *r) noexcept
{
    return static_cast<ngx_http_ws_heartbeat_main_conf_t *>(
               ngx_http_get_module_main_conf(r, ngx_ws_heartbeat_module));
}


/* the client connection's read event: readable, or the module's timer */

static void
ngx_http_ws_heartbeat_read_handler(ngx_http_request_t *r) noexcept
{
    ngx_http_ws_heartbeat_ctx_t  *ctx;

    ctx = static_cast<ngx_http_ws_heartbeat_ctx_t *>(
              ngx_http_get_module_ctx(r, ngx_ws_heartbeat_module));

    if (r->connection->read->timedout) {
        r->connection->read->timedout = 0;

        if (ctx != NULL && ctx->hooked) {
            ngx_http_ws_heartbeat_timer_handler(ctx);
            return;
        }
    }

    ngx_http_ws_heartbeat_main_conf(r)->read_handler(r);
}


static void
ngx_http_ws_heartbeat_write_handler(ngx_http_request_t *r) noexcept
{
    ngx_http_ws_heartbeat_ctx_t  *ctx;

    ctx = static_cast<ngx_http_ws_heartbeat_ctx_t *>(
              ngx_http_get_module_ctx(r, ngx_ws_heartbeat_module));

    if (ctx != NULL && ctx->hooked && !r->connection->write->timedout) {
        ngx_http_ws_heartbeat_flush(&ctx->client);
    }

    ngx_http_ws_heartbeat_main_conf(r)->write_handler(r);
}


static void
ngx_http_ws_heartbeat_upstream_write_handler(ngx_http_request_t *r,
    ngx_http_upstream_t *u) noexcept
{
    ngx_http_ws_heartbeat_ctx_t  *ctx;

    ctx = static_cast<ngx_http_ws_heartbeat_ctx_t *>(
              ngx_http_get_module_ctx(r, ngx_ws_heartbeat_module));

    if (ctx != NULL && ctx->hooked && !u->peer.connection->write->timedout) {
        ngx_http_ws_heartbeat_flush(&ctx->upstream);
    }

    ngx_http_ws_heartbeat_main_conf(r)->upstream_write_handler(r, u);
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

static void
ngx_http_ws_heartbeat_arm(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    ngx_msec_t     grain;
    std::uint64_t  deadline, d;

    /* a draining connection's timer is the drain's grace timer */

    if (ctx->draining) {
        return;
    }

    deadline = ngx_http_ws_heartbeat_deadline(&ctx->client);
    d = ngx_http_ws_heartbeat_deadline(&ctx->upstream);

    if (d != 0 && (deadline == 0 || d < deadline)) {
        deadline = d;
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
    size_t                        n;
    wshb::heartbeat              *hb;
    ngx_http_ws_heartbeat_ctx_t  *ctx;
    std::uint8_t                  payload[wshb::ping_payload_size];
    std::uint8_t                  frame[wshb::inject_capacity];
    std::uint8_t                  key[4], *mask;

    ctx = ngx_http_ws_heartbeat_ctx_of(s);
    hb = ctx->hb(s->which());
    mask = nullptr;

    if (s->which() == NGX_HTTP_WS_HB_UPSTREAM) {
        if (RAND_bytes(key, sizeof(key)) != 1) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "ws heartbeat: RAND_bytes() failed");
            hb->on_ping_not_sent(ngx_current_msec);
            return;
        }

        mask = key;
    }

    (void) hb->make_ping(payload, ngx_http_ws_heartbeat_ping_key(ctx));

    n = wshb::build_control(wshb::opcode::ping, payload, sizeof(payload),
                            mask, frame, sizeof(frame));

    if (n == 0 || !s->out.queue(frame, n)) {
        /* not sent: the next Ping an interval later */
        hb->on_ping_not_sent(ngx_current_msec);
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "ws heartbeat: ping to %s queued",
                   s->which() == NGX_HTTP_WS_HB_CLIENT ? "client"
                                                       : "upstream");

    s->set(NGX_HTTP_WS_HB_S_PING_QUEUED, 1);
    ngx_http_ws_heartbeat_count(
        ngx_http_ws_heartbeat_stats(ngx_http_ws_heartbeat_ctx_of(s)),
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

    if (ctx->draining) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "ws heartbeat: closing, drain timeout");
        ngx_http_ws_heartbeat_send_close(&ctx->client, 1001,
                                         "server shutting down");
        ngx_http_ws_heartbeat_finalize(ctx);
        return;
    }

    if (ctx->disabled) {
        return;
    }

    for (i = 0; i < 2; i++) {
        s = ngx_http_ws_heartbeat_side_at(ctx, i);
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

        if (s->is(NGX_HTTP_WS_HB_S_PING_QUEUED)
            && s->is(NGX_HTTP_WS_HB_S_BLOCKED)
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


static void
ngx_http_ws_heartbeat_step_aside(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    ngx_uint_t                     i;
    ngx_http_ws_heartbeat_side_t  *s;

    ctx->disabled = 1;

    ngx_http_ws_heartbeat_stop(ctx);

    /* a queued Ping not yet started goes too (safe in Io callbacks) */

    for (i = 0; i < 2; i++) {
        s = ngx_http_ws_heartbeat_side_at(ctx, i);

        if (s->is(NGX_HTTP_WS_HB_S_PING_QUEUED)) {
            s->out.drop_queued();
            s->set(NGX_HTTP_WS_HB_S_PING_QUEUED, 0);
        }
    }

    /* a draining connection keeps its grace timer */

    if (ngx_http_ws_heartbeat_timer(ctx)->timer_set && !ctx->draining) {
        ngx_del_timer(ngx_http_ws_heartbeat_timer(ctx));
    }
}


/* safe inside the Io callbacks of s->out: it only queues */

static bool
ngx_http_ws_heartbeat_queue_close(ngx_http_ws_heartbeat_side_t *s,
    std::uint16_t code, const char *reason) noexcept
{
    size_t        n;
    std::uint8_t  frame[wshb::inject_capacity];
    std::uint8_t  key[4], *mask;

    if (s->is(NGX_HTTP_WS_HB_S_CLOSE_SENT) || s->out.passthrough()) {
        return false;
    }

    mask = nullptr;

    if (s->which() == NGX_HTTP_WS_HB_UPSTREAM) {
        if (RAND_bytes(key, sizeof(key)) != 1) {
            return false;
        }

        mask = key;
    }

    n = wshb::build_close(code, reason, ngx_strlen(reason), mask, frame,
                          sizeof(frame));

    s->out.drop_queued();

    if (n == 0 || !s->out.queue(frame, n)) {
        return false;
    }

    s->set(NGX_HTTP_WS_HB_S_CLOSE_SENT, 1);
    s->set(NGX_HTTP_WS_HB_S_PING_QUEUED, 0);

    return true;
}


static void
ngx_http_ws_heartbeat_send_close(ngx_http_ws_heartbeat_side_t *s,
    std::uint16_t code, const char *reason) noexcept
{
    if (ngx_http_ws_heartbeat_queue_close(s, code, reason)) {
        ngx_http_ws_heartbeat_flush(s);
    }
}


/*
 * close() on a socket with unread input sends RST and discards what is
 * still queued for sending: our Close frame. Read and drop what has
 * arrived (bounded) so that the Close goes out before the FIN.
 */

static void
ngx_http_ws_heartbeat_drain(ngx_http_ws_heartbeat_side_t *s) noexcept
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


static void
ngx_http_ws_heartbeat_close(ngx_http_ws_heartbeat_ctx_t *ctx,
    ngx_http_ws_heartbeat_side_t *dead, wshb::close_reason reason) noexcept
{
    const char                *text;
    ngx_connection_t          *c;
    ngx_http_request_t        *r;
    ngx_http_core_loc_conf_t  *clcf;

    r = ctx->request;
    c = r->connection;
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

    if (dead->which() == NGX_HTTP_WS_HB_CLIENT) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "ws heartbeat: closing, client %s "
                      "in location \"%V\"",
                      wshb::to_string(reason), &clcf->name);

    } else {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "ws heartbeat: closing, upstream %s "
                      "in location \"%V\"",
                      wshb::to_string(reason), &clcf->name);
    }

    ngx_http_ws_heartbeat_step_aside(ctx);

    /*
     * tell the side still alive first, then best effort the other one;
     * a client gone dead makes the backend see 1001 "going away", a dead
     * upstream makes the client see 1011
     */

    if (dead->which() == NGX_HTTP_WS_HB_CLIENT) {
        text = reason == wshb::close_reason::heartbeat_timeout
               ? "heartbeat timeout"
               : reason == wshb::close_reason::read_timeout
               ? "read timeout" : "send timeout";

        ngx_http_ws_heartbeat_send_close(&ctx->upstream, 1001, text);
        ngx_http_ws_heartbeat_send_close(&ctx->client, 1001, text);

    } else {
        ngx_http_ws_heartbeat_send_close(&ctx->client, 1011,
                                         "upstream timeout");
        ngx_http_ws_heartbeat_send_close(&ctx->upstream, 1001,
                                         "heartbeat timeout");
    }

    ngx_http_ws_heartbeat_finalize(ctx);
}


static void
ngx_http_ws_heartbeat_finalize(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = ctx->request;
    c = r->connection;

    ngx_http_ws_heartbeat_drain(&ctx->upstream);
    ngx_http_ws_heartbeat_drain(&ctx->client);

    /*
     * ngx_http_finalize_request(r, NGX_ERROR) alone frees r inside
     * ngx_http_terminate_request(); take a reference the way
     * ngx_http_request_handler() does for c->close
     */

    r->main->count++;
    ngx_http_finalize_request(r, NGX_ERROR);
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_ws_heartbeat_cleanup(void *data) noexcept
{
    ngx_event_t                    *timer;
    ngx_connection_t               *c;
    ngx_http_ws_heartbeat_ctx_t    *ctx;
    ngx_http_ws_heartbeat_stats_t  *st;

    ctx = static_cast<ngx_http_ws_heartbeat_ctx_t *>(data);

    if (!ctx->hooked) {
        return;
    }

    st = ngx_http_ws_heartbeat_stats(ctx);

    if (st != NULL) {
        (void) ngx_atomic_fetch_add(&st->active, -1);
        (void) ngx_atomic_fetch_add(
                   &st->ends[ngx_http_ws_heartbeat_end(ctx)], 1);
    }

    /*
     * r goes with the client connection (keepalive is off after an
     * upgrade), after any lingering close, which takes over the read event
     * and its timer; the upstream connection is closed by now
     */

    timer = ngx_http_ws_heartbeat_timer(ctx);

    if (timer->timer_set) {
        ngx_del_timer(timer);
    }

    c = ctx->request->connection;

    if (c->send == ngx_http_ws_heartbeat_send) {
        c->send = ngx_http_ws_heartbeat_io_send(c);
    }

    if (c->recv == ngx_http_ws_heartbeat_recv) {
        c->recv = ngx_http_ws_heartbeat_io_recv(c);
    }

    c = ngx_http_ws_heartbeat_conn(&ctx->upstream);

    if (c != NULL) {
        if (c->send == ngx_http_ws_heartbeat_send) {
            c->send = ngx_http_ws_heartbeat_io_send(c);
        }

        if (c->recv == ngx_http_ws_heartbeat_recv) {
            c->recv = ngx_http_ws_heartbeat_io_recv(c);
        }
    }
}


/* configuration */


static char *
ngx_http_ws_heartbeat_set_time(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf) noexcept
{
    char  *p = static_cast<char *>(conf);

    ngx_int_t               ms;
    ngx_str_t              *value;
    ngx_msec_t             *mp;
    ngx_conf_num_bounds_t  *b;

    mp = reinterpret_cast<ngx_msec_t *>(p + cmd->offset);

    if (*mp != NGX_CONF_UNSET_MSEC) {
        return const_cast<char *>("is duplicate");
    }

    value = static_cast<ngx_str_t *>(cf->args->elts);
    b = static_cast<ngx_conf_num_bounds_t *>(cmd->post);

    ms = ngx_parse_time(&value[1], 0);

    if (ms == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive",
                           &value[1], &cmd->name);
        return static_cast<char *>(NGX_CONF_ERROR);
    }

    if (ms == 0 && b->low == 0) {
        *mp = 0;
        return NGX_CONF_OK;
    }

    if (ms < NGX_HTTP_WS_HEARTBEAT_MIN_TIME || ms > b->high) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive, "
                           "it must be %sbetween %dms and %dd",
                           &value[1], &cmd->name,
                           b->low == 0 ? "0 (off) or " : "",
                           (int) NGX_HTTP_WS_HEARTBEAT_MIN_TIME,
                           (int) (NGX_HTTP_WS_HEARTBEAT_MAX_TIME
                                  / (24 * 60 * 60 * 1000)));
        return static_cast<char *>(NGX_CONF_ERROR);
    }

    *mp = (ngx_msec_t) ms;

    return NGX_CONF_OK;
}


static void *
ngx_http_ws_heartbeat_create_loc_conf(ngx_conf_t *cf) noexcept
{
    ngx_http_ws_heartbeat_loc_conf_t  *conf;

    conf = static_cast<ngx_http_ws_heartbeat_loc_conf_t *>(
               ngx_pcalloc(cf->pool,
                           sizeof(ngx_http_ws_heartbeat_loc_conf_t)));
    if (conf == NULL) {
        return NULL;
    }

    conf->enable = NGX_CONF_UNSET;
    conf->upstream = NGX_CONF_UNSET;
    conf->interval = NGX_CONF_UNSET_MSEC;
    conf->timeout = NGX_CONF_UNSET_MSEC;
    conf->read_timeout = NGX_CONF_UNSET_MSEC;
    conf->send_timeout = NGX_CONF_UNSET_MSEC;
    conf->drain = NGX_CONF_UNSET;
    conf->drain_timeout = NGX_CONF_UNSET_MSEC;

    return conf;
}


static char *
ngx_http_ws_heartbeat_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child) noexcept
{
    ngx_http_ws_heartbeat_loc_conf_t *prev =
        static_cast<ngx_http_ws_heartbeat_loc_conf_t *>(parent);
    ngx_http_ws_heartbeat_loc_conf_t *conf =
        static_cast<ngx_http_ws_heartbeat_loc_conf_t *>(child);

    ngx_http_core_loc_conf_t  *clcf;
    ngx_http_upstream_conf_t  *ucf;

    ngx_conf_merge_value(conf->enable, prev->enable, 0);
    ngx_conf_merge_value(conf->upstream, prev->upstream, 0);
    ngx_conf_merge_msec_value(conf->interval, prev->interval, 30000);
    ngx_conf_merge_msec_value(conf->timeout, prev->timeout, 10000);
    ngx_conf_merge_msec_value(conf->read_timeout, prev->read_timeout, 0);
    ngx_conf_merge_msec_value(conf->send_timeout, prev->send_timeout, 0);
    ngx_conf_merge_value(conf->drain, prev->drain, 1);
    ngx_conf_merge_msec_value(conf->drain_timeout, prev->drain_timeout,
                              5000);

    if (!conf->enable) {
        return NGX_CONF_OK;
    }

    /*
     * nginx's own timers on the relay: warn where they would cut a
     * connection before the heartbeat can keep it alive or act
     */

    clcf = static_cast<ngx_http_core_loc_conf_t *>(
               ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module));

    if (conf->send_timeout && conf->send_timeout >= clcf->send_timeout) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "\"ws_heartbeat_send_timeout\" %Mms is not less "
                           "than \"send_timeout\" %Mms, nginx closes a "
                           "blocked client first",
                           conf->send_timeout, clcf->send_timeout);
    }

    if (&ngx_http_proxy_module == NULL) {
        return NGX_CONF_OK;
    }

    /* ngx_http_upstream_conf_t is the first member of the proxy conf */

    ucf = static_cast<ngx_http_upstream_conf_t *>(
              ngx_http_conf_get_module_loc_conf(cf, ngx_http_proxy_module));

    if (ucf != NULL && ucf->upstream != NULL
        && conf->interval >= ucf->read_timeout)
    {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "\"ws_heartbeat_interval\" %Mms is not less than "
                           "\"proxy_read_timeout\" %Mms, idle WebSocket "
                           "connections will be closed by nginx before "
                           "a Ping keeps them alive",
                           conf->interval, ucf->read_timeout);
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_ws_heartbeat_init(ngx_conf_t *cf) noexcept
{
    ngx_http_ws_heartbeat_main_conf_t  *hmcf;

    hmcf = static_cast<ngx_http_ws_heartbeat_main_conf_t *>(
               ngx_http_conf_get_module_main_conf(cf,
                                                  ngx_ws_heartbeat_module));

    if (ngx_http_ws_heartbeat_stats_init(cf, hmcf) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_ws_heartbeat_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_ws_heartbeat_body_filter;

    return NGX_OK;
}


/* graceful drain: Close 1001 to WebSocket peers when the worker exits */


static void
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
            s->set(NGX_HTTP_WS_HB_S_DRAIN_PENDING, 1);

        } else {
            ngx_http_ws_heartbeat_send_close(s, 1001, "server shutting down");
        }
    }

    ngx_add_timer(ngx_http_ws_heartbeat_timer(ctx),
                  ngx_http_ws_heartbeat_conf(ctx)->drain_timeout);
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

        ctx = static_cast<ngx_http_ws_heartbeat_ctx_t *>(
                  ngx_http_get_module_ctx(r, ngx_ws_heartbeat_module));

        if (ctx != NULL && ctx->hooked
            && ngx_http_ws_heartbeat_conf(ctx)->drain)
        {
            ngx_http_ws_heartbeat_start_drain(ctx);
        }
    }
}


static void *
ngx_http_ws_heartbeat_create_main_conf(ngx_conf_t *cf) noexcept
{
    ngx_http_ws_heartbeat_main_conf_t  *hmcf;

    hmcf = static_cast<ngx_http_ws_heartbeat_main_conf_t *>(
               ngx_pcalloc(cf->pool,
                           sizeof(ngx_http_ws_heartbeat_main_conf_t)));
    if (hmcf == NULL) {
        return NULL;
    }

    return hmcf;
}


/*
 * nginx tells an exiting worker's idle connections by calling their read
 * handler with c->close set; a connection of our own, marked idle and
 * never added to the event loop, is how the module learns of it
 */

static ngx_int_t
ngx_http_ws_heartbeat_init_process(ngx_cycle_t *cycle) noexcept
{
    ngx_socket_t                        s;
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

    s = ngx_socket(AF_INET, SOCK_DGRAM, 0);
    if (s == (ngx_socket_t) -1) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, ngx_socket_errno,
                      "ws heartbeat: socket() failed");
        return NGX_ERROR;
    }

    c = ngx_get_connection(s, cycle->log);
    if (c == NULL) {
        ngx_close_socket(s);
        return NGX_ERROR;
    }

    c->data = hmcf;
    c->idle = 1;
    c->read->handler = ngx_http_ws_heartbeat_exiting;
    c->read->log = cycle->log;

    hmcf->watch = c;

    return NGX_OK;
}


static void
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
