
/*
 * ngx_ws_heartbeat_module: the $ws_heartbeat_* variables, read from a
 * connection's heartbeat machines (RTT, Pings, Pongs) and its end reason,
 * for the access log of the upgraded request.
 */


#include "ngx_ws_heartbeat.hpp"


/* what a variable reports; its data is that, of the side's machine */

typedef enum {
    NGX_HTTP_WS_HB_VAR_RTT = 0,
    NGX_HTTP_WS_HB_VAR_RTT_MIN,
    NGX_HTTP_WS_HB_VAR_RTT_AVG,
    NGX_HTTP_WS_HB_VAR_PINGS,
    NGX_HTTP_WS_HB_VAR_PONGS,
    NGX_HTTP_WS_HB_VAR_CLOSE_REASON
} ngx_http_ws_heartbeat_var_e;

#define ngx_http_ws_heartbeat_var(name, side, what)                         \
    { ngx_string(name), NULL, ngx_http_ws_heartbeat_variable,                \
      (side) << 4 | NGX_HTTP_WS_HB_VAR_ ## what, NGX_HTTP_VAR_NOCACHEABLE, 0 }


static ngx_int_t ngx_http_ws_heartbeat_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data) noexcept;


static ngx_http_variable_t  ngx_http_ws_heartbeat_vars[] = {
    ngx_http_ws_heartbeat_var("ws_heartbeat_rtt", NGX_HTTP_WS_HB_CLIENT, RTT),
    ngx_http_ws_heartbeat_var("ws_heartbeat_rtt_min", NGX_HTTP_WS_HB_CLIENT, RTT_MIN),
    ngx_http_ws_heartbeat_var("ws_heartbeat_rtt_avg", NGX_HTTP_WS_HB_CLIENT, RTT_AVG),
    ngx_http_ws_heartbeat_var("ws_heartbeat_pings", NGX_HTTP_WS_HB_CLIENT, PINGS),
    ngx_http_ws_heartbeat_var("ws_heartbeat_pongs", NGX_HTTP_WS_HB_CLIENT, PONGS),
    ngx_http_ws_heartbeat_var("ws_heartbeat_upstream_rtt", NGX_HTTP_WS_HB_UPSTREAM, RTT),
    ngx_http_ws_heartbeat_var("ws_heartbeat_upstream_pings", NGX_HTTP_WS_HB_UPSTREAM, PINGS),
    ngx_http_ws_heartbeat_var("ws_heartbeat_upstream_pongs", NGX_HTTP_WS_HB_UPSTREAM, PONGS),
    ngx_http_ws_heartbeat_var("ws_heartbeat_close_reason", NGX_HTTP_WS_HB_CLIENT, CLOSE_REASON),
      ngx_http_null_variable
};


ngx_int_t
ngx_http_ws_heartbeat_add_variables(ngx_conf_t *cf) noexcept
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_ws_heartbeat_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


/* milliseconds with microsecond precision, "-" without a sample */

static u_char *
ngx_http_ws_heartbeat_ms(u_char *p, std::uint64_t us, bool sampled) noexcept
{
    if (!sampled) {
        *p++ = '-';
        return p;
    }

    return ngx_sprintf(p, "%uL.%03uL", (uint64_t) (us / 1000),
                       (uint64_t) (us % 1000));
}


static ngx_int_t
ngx_http_ws_heartbeat_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data) noexcept
{
    u_char                       *p;
    bool                          sampled;
    const char                   *name;
    wshb::heartbeat              *hb;
    ngx_http_ws_heartbeat_ctx_t  *ctx;

    ctx = ngx_http_ws_heartbeat_get_ctx(r);

    if (ctx == NULL || !ctx->hooked) {
        v->not_found = 1;
        return NGX_OK;
    }

    p = static_cast<u_char *>(ngx_pnalloc(r->pool, NGX_INT64_LEN + 8));
    if (p == NULL) {
        return NGX_ERROR;
    }

    v->data = p;

    /* the upstream has no machine without ws_heartbeat_upstream: no Pings */

    hb = ctx->hb(data >> 4);
    sampled = hb != nullptr && hb->rtt_samples() != 0;

    switch (data & 0x0f) {

    case NGX_HTTP_WS_HB_VAR_RTT:
        p = ngx_http_ws_heartbeat_ms(p, sampled ? hb->rtt_last_us() : 0,
                                     sampled);
        break;

    case NGX_HTTP_WS_HB_VAR_RTT_MIN:
        p = ngx_http_ws_heartbeat_ms(p, sampled ? hb->rtt_min_us() : 0,
                                     sampled);
        break;

    case NGX_HTTP_WS_HB_VAR_RTT_AVG:
        p = ngx_http_ws_heartbeat_ms(p, sampled ? hb->rtt_smoothed_us() : 0,
                                     sampled);
        break;

    case NGX_HTTP_WS_HB_VAR_PINGS:
        p = ngx_sprintf(p, "%uD", hb != nullptr ? hb->pings() : 0);
        break;

    case NGX_HTTP_WS_HB_VAR_PONGS:
        p = ngx_sprintf(p, "%uD", hb != nullptr ? hb->pongs() : 0);
        break;

    default: /* NGX_HTTP_WS_HB_VAR_CLOSE_REASON */
        name = ngx_http_ws_heartbeat_end_names[ngx_http_ws_heartbeat_end(ctx)];
        p = ngx_cpymem(p, name, ngx_strlen(name));
        break;
    }

    v->len = p - v->data;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}
