
/*
 * ngx_ws_heartbeat_module: finding upgraded connections and hooking them.
 * The header filter picks real WebSocket upgrades and allocates the ctx;
 * the first body filter call (the relay has started by then) swaps in the
 * send/recv wrappers (ngx_ws_heartbeat_io.cpp) and the event handlers,
 * starts the heartbeat (ngx_ws_heartbeat_timer.cpp); the pool cleanup
 * undoes what is still the module's.
 */


#include "ngx_ws_heartbeat.hpp"

#include <openssl/rand.h>


static ngx_int_t ngx_http_ws_heartbeat_is_websocket(ngx_http_request_t *r,
    bool *rsv1) noexcept;
static void ngx_http_ws_heartbeat_hook(ngx_http_request_t *r,
    ngx_http_ws_heartbeat_ctx_t *ctx) noexcept;
static void ngx_http_ws_heartbeat_cleanup(void *data) noexcept;


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;


static ngx_str_t  ngx_http_ws_heartbeat_websocket = ngx_string("websocket");
static ngx_str_t  ngx_http_ws_heartbeat_deflate =
    ngx_string("permessage-deflate");


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

    ctx = ngx_http_ws_heartbeat_get_ctx(r);

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


/*
 * the next name in a comma separated header value (Upgrade, the
 * Sec-WebSocket-Extensions list); its ";" parameters are skipped
 * (quoted commas do not occur in permessage-deflate's)
 */

static bool
ngx_http_ws_heartbeat_next_token(u_char **pos, u_char *last, ngx_str_t *name)
    noexcept
{
    u_char  *p;

    p = *pos;

    while (p < last && (*p == ' ' || *p == '\t' || *p == ',')) {
        p++;
    }

    if (p == last) {
        return false;
    }

    name->data = p;

    while (p < last && *p != ',' && *p != ';' && *p != ' ' && *p != '\t') {
        p++;
    }

    name->len = p - name->data;

    while (p < last && *p != ',') {
        p++;
    }

    *pos = p;

    return true;
}


static bool
ngx_http_ws_heartbeat_token_is(ngx_str_t *token, ngx_str_t *name) noexcept
{
    return token->len == name->len
           && ngx_strncasecmp(token->data, name->data, name->len) == 0;
}


/* token "name" in a comma separated header value, case-insensitive */

static bool
ngx_http_ws_heartbeat_has_token(ngx_str_t *value, ngx_str_t *name) noexcept
{
    u_char     *p;
    ngx_str_t   token;

    p = value->data;

    while (ngx_http_ws_heartbeat_next_token(&p, value->data + value->len,
                                            &token))
    {
        if (ngx_http_ws_heartbeat_token_is(&token, name)) {
            return true;
        }
    }

    return false;
}


/* all extensions in a Sec-WebSocket-Extensions value are permessage-deflate */

static bool
ngx_http_ws_heartbeat_only_deflate(ngx_str_t *value) noexcept
{
    u_char     *p;
    ngx_str_t   token;

    p = value->data;

    while (ngx_http_ws_heartbeat_next_token(&p, value->data + value->len,
                                            &token))
    {
        if (!ngx_http_ws_heartbeat_token_is(&token,
                                            &ngx_http_ws_heartbeat_deflate))
        {
            return false;
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
    part = NULL;

    while ((h = ngx_http_ws_heartbeat_next_header(&r->headers_out.headers,
                                                  "Upgrade", &part, &i)))
    {
        if (ngx_http_ws_heartbeat_has_token(&h->value,
                                            &ngx_http_ws_heartbeat_websocket))
        {
            upgrade = 1;
        }
    }

    part = NULL;

    while ((h = ngx_http_ws_heartbeat_next_header(&r->headers_out.headers,
                                                  "Sec-WebSocket-Extensions",
                                                  &part, &i)))
    {
        /* an unknown extension may use RSV bits or opcodes: step aside */

        if (!ngx_http_ws_heartbeat_only_deflate(&h->value)) {
            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "ws heartbeat: unknown extension \"%V\"",
                           &h->value);
            return NGX_DECLINED;
        }

        if (h->value.len) {
            *rsv1 = true;
        }
    }

    return upgrade ? NGX_OK : NGX_DECLINED;
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
        hmcf->upstream_read_handler = u->read_event_handler;
        return true;
    }

    return hmcf->read_handler == r->read_event_handler
           && hmcf->write_handler == r->write_event_handler
           && hmcf->upstream_write_handler == u->write_event_handler
           && hmcf->upstream_read_handler == u->read_event_handler;
}


static void
ngx_http_ws_heartbeat_hook(ngx_http_request_t *r,
    ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    ngx_event_t                        *timer;
    ngx_connection_t                   *c, *uc;
    ngx_http_upstream_t                *u;
    ngx_http_ws_heartbeat_main_conf_t  *hmcf;

    c = r->connection;
    u = r->upstream;
    uc = u->peer.connection;
    timer = ngx_http_ws_heartbeat_timer(ctx);

    hmcf = ngx_http_ws_heartbeat_main_conf(r);

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

    if (RAND_bytes(reinterpret_cast<unsigned char *>(&ctx->random),
                   sizeof(ctx->random)) != 1)
    {
        ctx->random = (std::uint32_t) ngx_random() << 16
                      ^ (std::uint32_t) ngx_random();
    }

    ctx->hooked = 1;

    /* header_write_handler has served; its room is unsent[] from now on */

    ctx->unsent[0] = NGX_HTTP_WS_HB_UNSENT_NONE;
    ctx->unsent[1] = NGX_HTTP_WS_HB_UNSENT_NONE;

    /*
     * the client's read event is the module's timer: always the module's;
     * the other three are the module's only while it has something to do
     * there (ngx_http_ws_heartbeat_watch(), the idle buffers)
     */

    r->read_event_handler = ngx_http_ws_heartbeat_read_handler;

    /*
     * not cancelable: like nginx's own relay timers it keeps an exiting
     * worker until the connection ends (ws_heartbeat_drain bounds that);
     * a cancelable bit would outlive the relay into a lingering close,
     * which the worker would then abandon ("open socket left")
     */

    timer->cancelable = 0;

    c->send = ngx_http_ws_heartbeat_send_client;
    c->recv = ngx_http_ws_heartbeat_recv_client;
    uc->send = ngx_http_ws_heartbeat_send_upstream;
    uc->recv = ngx_http_ws_heartbeat_recv_upstream;

    /* ws_heartbeat_idle_buffers release: its handlers go around these */

    ngx_http_ws_heartbeat_buffers_hook(r, ctx);

    ngx_http_ws_heartbeat_start(ctx);

    ngx_http_ws_heartbeat_count_start(ctx);

    ngx_http_ws_heartbeat_exit_hooked(ctx);
}


static void
ngx_http_ws_heartbeat_cleanup(void *data) noexcept
{
    ngx_event_t                  *timer;
    ngx_connection_t             *c;
    ngx_http_ws_heartbeat_ctx_t  *ctx;

    ctx = static_cast<ngx_http_ws_heartbeat_ctx_t *>(data);

    if (!ctx->hooked) {
        return;
    }

    ngx_http_ws_heartbeat_count_end(ctx);

    /*
     * r goes with the client connection (keepalive is off after an
     * upgrade), after any lingering close, which takes over the read event
     * and its timer; the upstream connection is closed by now
     */

    timer = ngx_http_ws_heartbeat_timer(ctx);

    if (timer->timer_set) {
        ngx_del_timer(timer);
    }

    ngx_http_ws_heartbeat_unhook(ctx->request->connection);

    c = ngx_http_ws_heartbeat_conn(&ctx->upstream);

    if (c != NULL) {
        ngx_http_ws_heartbeat_unhook(c);
    }
}



ngx_int_t
ngx_http_ws_heartbeat_filter_init(ngx_conf_t *cf) noexcept
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_ws_heartbeat_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_ws_heartbeat_body_filter;

    return NGX_OK;
}
