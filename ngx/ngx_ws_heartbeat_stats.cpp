
/*
 * ngx_ws_heartbeat_module: what the module reports. Counters in shared
 * memory (atomic adds on the relay path, no lock), the ws_heartbeat_status
 * handler (Prometheus text or JSON), and the $ws_heartbeat_* variables.
 */


#include "ngx_ws_heartbeat.hpp"


typedef enum {
    NGX_HTTP_WS_HB_VAR_RTT = 0,
    NGX_HTTP_WS_HB_VAR_RTT_MIN,
    NGX_HTTP_WS_HB_VAR_RTT_AVG,
    NGX_HTTP_WS_HB_VAR_PINGS,
    NGX_HTTP_WS_HB_VAR_PONGS,
    NGX_HTTP_WS_HB_VAR_UPSTREAM_RTT,
    NGX_HTTP_WS_HB_VAR_UPSTREAM_PINGS,
    NGX_HTTP_WS_HB_VAR_UPSTREAM_PONGS,
    NGX_HTTP_WS_HB_VAR_CLOSE_REASON
} ngx_http_ws_heartbeat_var_e;


static ngx_int_t ngx_http_ws_heartbeat_init_zone(ngx_shm_zone_t *shm_zone,
    void *data) noexcept;
static ngx_int_t ngx_http_ws_heartbeat_status_handler(ngx_http_request_t *r)
    noexcept;
static ngx_int_t ngx_http_ws_heartbeat_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data) noexcept;


static ngx_str_t  ngx_http_ws_heartbeat_zone_name =
    ngx_string("ngx_ws_heartbeat");


/* one word per reason: log variable values and metric labels */

static const char  *ngx_http_ws_heartbeat_end_names[] = {
    "open",
    "client_heartbeat_timeout",
    "upstream_heartbeat_timeout",
    "read_timeout",
    "send_timeout",
    "invalid_frame",
    "drain",
    "client_close",
    "upstream_close",
    "other"
};

static_assert(sizeof(ngx_http_ws_heartbeat_end_names)
              / sizeof(ngx_http_ws_heartbeat_end_names[0])
              == NGX_HTTP_WS_HB_END_N, "a name for every end");


static const char  *ngx_http_ws_heartbeat_sides[] = { "client", "upstream" };


/* upper bounds of the RTT buckets, in microseconds (Prometheus "le") */

static const std::uint64_t  ngx_http_ws_heartbeat_rtt_le[] = {
    1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
    1000000, 2500000, 5000000, 10000000
};

static_assert(sizeof(ngx_http_ws_heartbeat_rtt_le)
              / sizeof(ngx_http_ws_heartbeat_rtt_le[0])
              == NGX_HTTP_WS_HB_RTT_BUCKETS - 1, "buckets and +Inf");


static ngx_http_variable_t  ngx_http_ws_heartbeat_vars[] = {

    { ngx_string("ws_heartbeat_rtt"), NULL, ngx_http_ws_heartbeat_variable,
      NGX_HTTP_WS_HB_VAR_RTT, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("ws_heartbeat_rtt_min"), NULL,
      ngx_http_ws_heartbeat_variable,
      NGX_HTTP_WS_HB_VAR_RTT_MIN, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("ws_heartbeat_rtt_avg"), NULL,
      ngx_http_ws_heartbeat_variable,
      NGX_HTTP_WS_HB_VAR_RTT_AVG, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("ws_heartbeat_pings"), NULL, ngx_http_ws_heartbeat_variable,
      NGX_HTTP_WS_HB_VAR_PINGS, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("ws_heartbeat_pongs"), NULL, ngx_http_ws_heartbeat_variable,
      NGX_HTTP_WS_HB_VAR_PONGS, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("ws_heartbeat_upstream_rtt"), NULL,
      ngx_http_ws_heartbeat_variable,
      NGX_HTTP_WS_HB_VAR_UPSTREAM_RTT, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("ws_heartbeat_upstream_pings"), NULL,
      ngx_http_ws_heartbeat_variable,
      NGX_HTTP_WS_HB_VAR_UPSTREAM_PINGS, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("ws_heartbeat_upstream_pongs"), NULL,
      ngx_http_ws_heartbeat_variable,
      NGX_HTTP_WS_HB_VAR_UPSTREAM_PONGS, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("ws_heartbeat_close_reason"), NULL,
      ngx_http_ws_heartbeat_variable,
      NGX_HTTP_WS_HB_VAR_CLOSE_REASON, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


ngx_int_t
ngx_http_ws_heartbeat_stats_init(ngx_conf_t *cf,
    ngx_http_ws_heartbeat_main_conf_t *hmcf) noexcept
{
    ngx_shm_zone_t  *zone;

    zone = ngx_shared_memory_add(cf, &ngx_http_ws_heartbeat_zone_name,
                                 8 * ngx_pagesize, &ngx_ws_heartbeat_module);
    if (zone == NULL) {
        return NGX_ERROR;
    }

    zone->init = ngx_http_ws_heartbeat_init_zone;
    zone->data = hmcf;
    hmcf->zone = zone;

    return NGX_OK;
}


static ngx_int_t
ngx_http_ws_heartbeat_init_zone(ngx_shm_zone_t *shm_zone, void *data)
    noexcept
{
    ngx_slab_pool_t                    *shpool;
    ngx_http_ws_heartbeat_main_conf_t  *hmcf, *old;

    hmcf = static_cast<ngx_http_ws_heartbeat_main_conf_t *>(shm_zone->data);
    old = static_cast<ngx_http_ws_heartbeat_main_conf_t *>(data);

    /* a reload keeps the counters of the previous configuration */

    if (old != NULL) {
        hmcf->stats = old->stats;
        return NGX_OK;
    }

    shpool = reinterpret_cast<ngx_slab_pool_t *>(shm_zone->shm.addr);

    if (shm_zone->shm.exists) {
        hmcf->stats = static_cast<ngx_http_ws_heartbeat_stats_t *>(
                          shpool->data);
        return NGX_OK;
    }

    hmcf->stats = static_cast<ngx_http_ws_heartbeat_stats_t *>(
                      ngx_slab_calloc(shpool,
                                      sizeof(ngx_http_ws_heartbeat_stats_t)));
    if (hmcf->stats == NULL) {
        return NGX_ERROR;
    }

    shpool->data = hmcf->stats;

    return NGX_OK;
}


void
ngx_http_ws_heartbeat_count_rtt(ngx_http_ws_heartbeat_stats_t *st,
    ngx_uint_t side, std::uint64_t us) noexcept
{
    ngx_uint_t  i;

    if (st == NULL) {
        return;
    }

    /* buckets are kept apart here and made cumulative when reported */

    for (i = 0; i < NGX_HTTP_WS_HB_RTT_BUCKETS - 1; i++) {
        if (us <= ngx_http_ws_heartbeat_rtt_le[i]) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&st->rtt[side][i], 1);
    (void) ngx_atomic_fetch_add(&st->rtt_sum_us[side], (ngx_atomic_int_t) us);
    (void) ngx_atomic_fetch_add(&st->rtt_count[side], 1);
}


void
ngx_http_ws_heartbeat_count_close_frame(ngx_http_ws_heartbeat_stats_t *st,
    ngx_uint_t from, const std::uint8_t *payload, std::size_t n) noexcept
{
    ngx_uint_t  code, i;

    if (st == NULL) {
        return;
    }

    /* 1000..1015 by code; application codes and an empty Close: "other" */

    i = NGX_HTTP_WS_HB_CODES - 1;

    if (n >= 2) {
        code = (ngx_uint_t) payload[0] << 8 | payload[1];

        if (code >= 1000 && code < 1000 + NGX_HTTP_WS_HB_CODES - 1) {
            i = code - 1000;
        }
    }

    (void) ngx_atomic_fetch_add(&st->close_frames[from][i], 1);
}


ngx_http_ws_heartbeat_end_e
ngx_http_ws_heartbeat_end(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    if (ctx->end != NGX_HTTP_WS_HB_END_NONE) {
        return (ngx_http_ws_heartbeat_end_e) ctx->end;
    }

    /* who started the closing handshake, or else who hung up first */

    switch (ctx->first_close ? ctx->first_close : ctx->first_eof) {

    case 1:
        return NGX_HTTP_WS_HB_END_CLIENT_CLOSE;

    case 2:
        return NGX_HTTP_WS_HB_END_UPSTREAM_CLOSE;

    default:
        return NGX_HTTP_WS_HB_END_OTHER;
    }
}


/* ws_heartbeat_status */


char *
ngx_http_ws_heartbeat_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
    noexcept
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = static_cast<ngx_http_core_loc_conf_t *>(
               ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module));

    if (clcf->handler != NULL) {
        return const_cast<char *>("is duplicate");
    }

    clcf->handler = ngx_http_ws_heartbeat_status_handler;

    return NGX_CONF_OK;
}


static bool
ngx_http_ws_heartbeat_wants_json(ngx_http_request_t *r) noexcept
{
    ngx_str_t         value;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    if (ngx_http_arg(r, (u_char *) "format", 6, &value) == NGX_OK) {
        return value.len == 4 && ngx_strncasecmp(value.data,
                                                 (u_char *) "json", 4) == 0;
    }

    part = &r->headers_in.headers.part;
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

        if (h[i].key.len == 6
            && ngx_strncasecmp(h[i].key.data, (u_char *) "Accept", 6) == 0
            && ngx_strlcasestrn(h[i].value.data,
                                h[i].value.data + h[i].value.len,
                                (u_char *) "application/json", 16 - 1)
               != NULL)
        {
            return true;
        }
    }

    return false;
}


/* a counter read once: workers keep adding while we print */

static ngx_atomic_uint_t
ngx_http_ws_heartbeat_get(ngx_atomic_t *a) noexcept
{
    return *a;
}


static u_char *
ngx_http_ws_heartbeat_seconds(u_char *p, ngx_atomic_uint_t us) noexcept
{
    return ngx_sprintf(p, "%uA.%06uA", us / 1000000, us % 1000000);
}


static u_char *
ngx_http_ws_heartbeat_le(u_char *p, ngx_uint_t i) noexcept
{
    if (i == NGX_HTTP_WS_HB_RTT_BUCKETS - 1) {
        return ngx_cpymem(p, "+Inf", 4);
    }

    return ngx_http_ws_heartbeat_seconds(p, ngx_http_ws_heartbeat_rtt_le[i]);
}


static u_char *
ngx_http_ws_heartbeat_code(u_char *p, ngx_uint_t i) noexcept
{
    if (i == NGX_HTTP_WS_HB_CODES - 1) {
        return ngx_cpymem(p, "other", 5);
    }

    return ngx_sprintf(p, "%ui", 1000 + i);
}


#define NGX_HTTP_WS_HB_FAMILY(p, name, type, help)                           \
    p = ngx_cpymem(p, "# HELP nginx_ws_heartbeat_" name " " help "\n"          \
                      "# TYPE nginx_ws_heartbeat_" name " " type "\n",         \
                   sizeof("# HELP nginx_ws_heartbeat_" name " " help "\n"      \
                          "# TYPE nginx_ws_heartbeat_" name " " type "\n")     \
                   - 1)


static u_char *
ngx_http_ws_heartbeat_prometheus(u_char *p, ngx_http_ws_heartbeat_stats_t *st)
    noexcept
{
    ngx_uint_t          side, i;
    ngx_atomic_uint_t   cum;

    NGX_HTTP_WS_HB_FAMILY(p, "connections_total", "counter",
                          "WebSocket connections the module has managed.");
    p = ngx_sprintf(p, "nginx_ws_heartbeat_connections_total %uA\n",
                    ngx_http_ws_heartbeat_get(&st->connections));

    NGX_HTTP_WS_HB_FAMILY(p, "connections_active", "gauge",
                          "WebSocket connections the module manages now.");
    p = ngx_sprintf(p, "nginx_ws_heartbeat_connections_active %uA\n",
                    ngx_http_ws_heartbeat_get(&st->active));

    NGX_HTTP_WS_HB_FAMILY(p, "pings_total", "counter",
                          "Pings the module sent, by peer.");
    for (side = 0; side < 2; side++) {
        p = ngx_sprintf(p, "nginx_ws_heartbeat_pings_total{peer=\"%s\"} %uA\n",
                        ngx_http_ws_heartbeat_sides[side],
                        ngx_http_ws_heartbeat_get(&st->pings[side]));
    }

    NGX_HTTP_WS_HB_FAMILY(p, "pongs_total", "counter",
                          "Pongs to the module's Pings, by peer.");
    for (side = 0; side < 2; side++) {
        p = ngx_sprintf(p, "nginx_ws_heartbeat_pongs_total{peer=\"%s\"} %uA\n",
                        ngx_http_ws_heartbeat_sides[side],
                        ngx_http_ws_heartbeat_get(&st->pongs[side]));
    }

    NGX_HTTP_WS_HB_FAMILY(p, "closes_total", "counter",
                          "WebSocket connections ended, by reason.");
    for (i = 1; i < NGX_HTTP_WS_HB_END_N; i++) {
        p = ngx_sprintf(p, "nginx_ws_heartbeat_closes_total{reason=\"%s\"} "
                        "%uA\n", ngx_http_ws_heartbeat_end_names[i],
                        ngx_http_ws_heartbeat_get(&st->ends[i]));
    }

    NGX_HTTP_WS_HB_FAMILY(p, "close_frames_total", "counter",
                          "Close frames the endpoints sent, by sender "
                          "and status code.");
    for (side = 0; side < 2; side++) {
        for (i = 0; i < NGX_HTTP_WS_HB_CODES; i++) {
            p = ngx_sprintf(p, "nginx_ws_heartbeat_close_frames_total"
                            "{from=\"%s\",code=\"",
                            ngx_http_ws_heartbeat_sides[side]);
            p = ngx_http_ws_heartbeat_code(p, i);
            p = ngx_sprintf(p, "\"} %uA\n", ngx_http_ws_heartbeat_get(
                                               &st->close_frames[side][i]));
        }
    }

    NGX_HTTP_WS_HB_FAMILY(p, "rtt_seconds", "histogram",
                          "Round trip of the module's Pings, by peer.");
    for (side = 0; side < 2; side++) {
        cum = 0;

        for (i = 0; i < NGX_HTTP_WS_HB_RTT_BUCKETS; i++) {
            cum += ngx_http_ws_heartbeat_get(&st->rtt[side][i]);
            p = ngx_sprintf(p, "nginx_ws_heartbeat_rtt_seconds_bucket"
                            "{peer=\"%s\",le=\"",
                            ngx_http_ws_heartbeat_sides[side]);
            p = ngx_http_ws_heartbeat_le(p, i);
            p = ngx_sprintf(p, "\"} %uA\n", cum);
        }

        p = ngx_sprintf(p, "nginx_ws_heartbeat_rtt_seconds_sum{peer=\"%s\"} ",
                        ngx_http_ws_heartbeat_sides[side]);
        p = ngx_http_ws_heartbeat_seconds(p, ngx_http_ws_heartbeat_get(
                                                 &st->rtt_sum_us[side]));
        p = ngx_sprintf(p, "\nnginx_ws_heartbeat_rtt_seconds_count"
                        "{peer=\"%s\"} %uA\n",
                        ngx_http_ws_heartbeat_sides[side],
                        ngx_http_ws_heartbeat_get(&st->rtt_count[side]));
    }

    return p;
}


static u_char *
ngx_http_ws_heartbeat_json(u_char *p, ngx_http_ws_heartbeat_stats_t *st)
    noexcept
{
    ngx_uint_t          side, i;
    ngx_atomic_uint_t   cum;

    p = ngx_sprintf(p, "{\"connections\":{\"total\":%uA,\"active\":%uA},",
                    ngx_http_ws_heartbeat_get(&st->connections),
                    ngx_http_ws_heartbeat_get(&st->active));

    p = ngx_sprintf(p, "\"pings\":{\"client\":%uA,\"upstream\":%uA},"
                    "\"pongs\":{\"client\":%uA,\"upstream\":%uA},",
                    ngx_http_ws_heartbeat_get(&st->pings[0]),
                    ngx_http_ws_heartbeat_get(&st->pings[1]),
                    ngx_http_ws_heartbeat_get(&st->pongs[0]),
                    ngx_http_ws_heartbeat_get(&st->pongs[1]));

    p = ngx_cpymem(p, "\"closes\":{", sizeof("\"closes\":{") - 1);
    for (i = 1; i < NGX_HTTP_WS_HB_END_N; i++) {
        p = ngx_sprintf(p, "%s\"%s\":%uA", i == 1 ? "" : ",",
                        ngx_http_ws_heartbeat_end_names[i],
                        ngx_http_ws_heartbeat_get(&st->ends[i]));
    }

    p = ngx_cpymem(p, "},\"close_frames\":{",
                   sizeof("},\"close_frames\":{") - 1);
    for (side = 0; side < 2; side++) {
        p = ngx_sprintf(p, "%s\"%s\":{", side ? "," : "",
                        ngx_http_ws_heartbeat_sides[side]);

        for (i = 0; i < NGX_HTTP_WS_HB_CODES; i++) {
            p = ngx_sprintf(p, "%s\"", i ? "," : "");
            p = ngx_http_ws_heartbeat_code(p, i);
            p = ngx_sprintf(p, "\":%uA", ngx_http_ws_heartbeat_get(
                                             &st->close_frames[side][i]));
        }

        *p++ = '}';
    }

    p = ngx_cpymem(p, "},\"rtt_seconds\":{", sizeof("},\"rtt_seconds\":{") - 1);
    for (side = 0; side < 2; side++) {
        p = ngx_sprintf(p, "%s\"%s\":{\"buckets\":{", side ? "," : "",
                        ngx_http_ws_heartbeat_sides[side]);
        cum = 0;

        for (i = 0; i < NGX_HTTP_WS_HB_RTT_BUCKETS; i++) {
            cum += ngx_http_ws_heartbeat_get(&st->rtt[side][i]);
            p = ngx_sprintf(p, "%s\"", i ? "," : "");
            p = ngx_http_ws_heartbeat_le(p, i);
            p = ngx_sprintf(p, "\":%uA", cum);
        }

        p = ngx_cpymem(p, "},\"sum\":", sizeof("},\"sum\":") - 1);
        p = ngx_http_ws_heartbeat_seconds(p, ngx_http_ws_heartbeat_get(
                                                 &st->rtt_sum_us[side]));
        p = ngx_sprintf(p, ",\"count\":%uA}", ngx_http_ws_heartbeat_get(
                                                   &st->rtt_count[side]));
    }

    return ngx_cpymem(p, "}}\n", 3);
}


static ngx_int_t
ngx_http_ws_heartbeat_status_handler(ngx_http_request_t *r) noexcept
{
    bool                                json;
    size_t                              size;
    ngx_int_t                           rc;
    ngx_buf_t                          *b;
    ngx_chain_t                         out;
    ngx_http_ws_heartbeat_stats_t      *st;
    ngx_http_ws_heartbeat_main_conf_t  *hmcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    hmcf = static_cast<ngx_http_ws_heartbeat_main_conf_t *>(
               ngx_http_get_module_main_conf(r, ngx_ws_heartbeat_module));
    st = hmcf->stats;

    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json = ngx_http_ws_heartbeat_wants_json(r);

    if (json) {
        ngx_str_set(&r->headers_out.content_type, "application/json");

    } else {
        ngx_str_set(&r->headers_out.content_type,
                    "text/plain; version=0.0.4; charset=utf-8");
    }

    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    /* generous: every line is well under 128 bytes */

    size = 128 * (16 + 2 * NGX_HTTP_WS_HB_END_N
                  + 2 * NGX_HTTP_WS_HB_CODES
                  + 2 * (NGX_HTTP_WS_HB_RTT_BUCKETS + 2));

    b = ngx_create_temp_buf(r->pool, size);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = json ? ngx_http_ws_heartbeat_json(b->last, st)
                   : ngx_http_ws_heartbeat_prometheus(b->last, st);
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* variables */


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
    u_char                        *p;
    const char                    *name;
    wshb::heartbeat               *hb;
    ngx_http_ws_heartbeat_ctx_t   *ctx;

    ctx = static_cast<ngx_http_ws_heartbeat_ctx_t *>(
              ngx_http_get_module_ctx(r, ngx_ws_heartbeat_module));

    if (ctx == NULL || !ctx->hooked) {
        v->not_found = 1;
        return NGX_OK;
    }

    p = static_cast<u_char *>(ngx_pnalloc(r->pool, NGX_INT64_LEN + 8));
    if (p == NULL) {
        return NGX_ERROR;
    }

    v->data = p;
    hb = &ctx->client_hb;

    switch (data) {

    case NGX_HTTP_WS_HB_VAR_RTT:
        p = ngx_http_ws_heartbeat_ms(p, hb->rtt_last_us(), hb->rtt_samples());
        break;

    case NGX_HTTP_WS_HB_VAR_RTT_MIN:
        p = ngx_http_ws_heartbeat_ms(p, hb->rtt_min_us(), hb->rtt_samples());
        break;

    case NGX_HTTP_WS_HB_VAR_RTT_AVG:
        p = ngx_http_ws_heartbeat_ms(p, hb->rtt_smoothed_us(),
                                     hb->rtt_samples());
        break;

    case NGX_HTTP_WS_HB_VAR_PINGS:
        p = ngx_sprintf(p, "%uD", hb->pings());
        break;

    case NGX_HTTP_WS_HB_VAR_PONGS:
        p = ngx_sprintf(p, "%uD", hb->pongs());
        break;

    case NGX_HTTP_WS_HB_VAR_UPSTREAM_RTT:
        hb = ctx->hb(NGX_HTTP_WS_HB_UPSTREAM);
        p = hb != nullptr ? ngx_http_ws_heartbeat_ms(p, hb->rtt_last_us(),
                                                     hb->rtt_samples())
                          : ngx_http_ws_heartbeat_ms(p, 0, false);
        break;

    case NGX_HTTP_WS_HB_VAR_UPSTREAM_PINGS:
        hb = ctx->hb(NGX_HTTP_WS_HB_UPSTREAM);
        p = ngx_sprintf(p, "%uD", hb != nullptr ? hb->pings() : 0);
        break;

    case NGX_HTTP_WS_HB_VAR_UPSTREAM_PONGS:
        hb = ctx->hb(NGX_HTTP_WS_HB_UPSTREAM);
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
