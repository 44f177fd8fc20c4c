
/*
 * ngx_ws_heartbeat_module: the ws_heartbeat_status endpoint. Prints the
 * shared counters (ngx_ws_heartbeat_stats.cpp) as Prometheus text or as
 * JSON, both from one table of metric families: a metric of a known shape
 * is one line of that table.
 */


#include "ngx_ws_heartbeat.hpp"


/* a family's labels, and so the layout of its counters */

typedef enum {
    NGX_HTTP_WS_HB_BY_NONE = 0,     /* one counter */
    NGX_HTTP_WS_HB_BY_WORKERS,      /* a slot's field, summed: no label */
    NGX_HTTP_WS_HB_BY_SIDE,         /* [2]: side */
    NGX_HTTP_WS_HB_BY_REASON,       /* [END_N]: reason, "open" left out */
    NGX_HTTP_WS_HB_BY_SIDE_CODE,    /* [2][CODES]: side, code */
    NGX_HTTP_WS_HB_BY_SIDE_RTT      /* histogram_t[2]: side, le */
} ngx_http_ws_heartbeat_by_e;


typedef struct {
    const char                 *name;   /* nginx_ws_heartbeat_<name> */
    const char                 *type;   /* Prometheus TYPE */
    const char                 *help;
    const char                 *json;   /* its place in the JSON: "a" "a.b" */
    ngx_http_ws_heartbeat_by_e  by;
    const char                 *side;   /* the label of a side: peer, from */
    size_t                      offset; /* in ngx_http_ws_heartbeat_stats_t */
} ngx_http_ws_heartbeat_family_t;


/* every metric the status endpoint reports, in the order it prints them */

#define ngx_http_ws_heartbeat_at(field)                                      \
    offsetof(ngx_http_ws_heartbeat_stats_t, field)

static const ngx_http_ws_heartbeat_family_t  ngx_http_ws_heartbeat_families[]
    = {
    { "connections_total", "counter",
      "WebSocket connections the module has managed.",
      "connections.total", NGX_HTTP_WS_HB_BY_NONE, NULL,
      ngx_http_ws_heartbeat_at(connections) },

    { "connections_active", "gauge",
      "WebSocket connections the module manages now.",
      "connections.active", NGX_HTTP_WS_HB_BY_WORKERS, NULL, 0 },

    { "pings_total", "counter",
      "Pings the module sent, by peer.",
      "pings", NGX_HTTP_WS_HB_BY_SIDE, "peer",
      ngx_http_ws_heartbeat_at(pings) },

    { "pongs_total", "counter",
      "Pongs to the module's Pings, by peer.",
      "pongs", NGX_HTTP_WS_HB_BY_SIDE, "peer",
      ngx_http_ws_heartbeat_at(pongs) },

    { "closes_total", "counter",
      "WebSocket connections ended, by reason.",
      "closes", NGX_HTTP_WS_HB_BY_REASON, NULL,
      ngx_http_ws_heartbeat_at(ends) },

    { "close_frames_total", "counter",
      "Close frames the endpoints sent, by sender and status code.",
      "close_frames", NGX_HTTP_WS_HB_BY_SIDE_CODE, "from",
      ngx_http_ws_heartbeat_at(close_frames) },

    { "discarded_frames_total", "counter",
      "Frames an endpoint sent after the module had closed the stream "
      "toward the other one on its behalf, consumed and not relayed, "
      "by sender.",
      "discarded_frames", NGX_HTTP_WS_HB_BY_SIDE, "from",
      ngx_http_ws_heartbeat_at(discarded) },

    { "rtt_seconds", "histogram",
      "Round trip of the module's Pings, by peer.",
      "rtt_seconds", NGX_HTTP_WS_HB_BY_SIDE_RTT, "peer",
      ngx_http_ws_heartbeat_at(rtt) }
};


/*
 * One value of a family: its Prometheus line is the family's name, the
 * suffix and the labels; its JSON place is the family's place and the
 * keys below it (the label values, and for a histogram its parts).
 */

#define NGX_HTTP_WS_HB_KEY_LEN  32

typedef struct {
    const char                 *suffix;
    ngx_uint_t                  nlabels;
    const char                 *label[2];
    ngx_uint_t                  nkeys;
    u_char                      key[3][NGX_HTTP_WS_HB_KEY_LEN];
    ngx_uint_t                  label_key[2];   /* the key of each label */
    ngx_atomic_uint_t           value;
    bool                        seconds;        /* value in microseconds */
} ngx_http_ws_heartbeat_sample_t;


/* where the JSON printer is: the objects open, below the document's */

#define NGX_HTTP_WS_HB_DEPTH  5

typedef struct {
    u_char                     *p;
    bool                        json;
    bool                        first;
    ngx_uint_t                  open;
    u_char                      path[NGX_HTTP_WS_HB_DEPTH]
                                    [NGX_HTTP_WS_HB_KEY_LEN];
} ngx_http_ws_heartbeat_printer_t;


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

    part = NULL;

    while ((h = ngx_http_ws_heartbeat_next_header(&r->headers_in.headers,
                                                  "Accept", &part, &i)))
    {
        if (ngx_strlcasestrn(h->value.data, h->value.data + h->value.len,
                             (u_char *) "application/json", 16 - 1)
            != NULL)
        {
            return true;
        }
    }

    return false;
}


/* the module's counters as the status endpoint prints them */

static void
ngx_http_ws_heartbeat_key(ngx_http_ws_heartbeat_sample_t *s, ngx_uint_t i,
    const char *text) noexcept
{
    *ngx_cpystrn(s->key[i], (u_char *) text, NGX_HTTP_WS_HB_KEY_LEN) = '\0';
    s->nkeys = i + 1;
}


static void
ngx_http_ws_heartbeat_label(ngx_http_ws_heartbeat_sample_t *s,
    const char *name, ngx_uint_t key) noexcept
{
    s->label[s->nlabels] = name;
    s->label_key[s->nlabels++] = key;
}


static u_char *
ngx_http_ws_heartbeat_seconds(u_char *p, ngx_atomic_uint_t us) noexcept
{
    return ngx_sprintf(p, "%uA.%06uA", us / 1000000, us % 1000000);
}


static u_char *
ngx_http_ws_heartbeat_value(u_char *p, ngx_http_ws_heartbeat_sample_t *s)
    noexcept
{
    return s->seconds ? ngx_http_ws_heartbeat_seconds(p, s->value)
                      : ngx_sprintf(p, "%uA", s->value);
}


static void
ngx_http_ws_heartbeat_prometheus(ngx_http_ws_heartbeat_printer_t *pr,
    const ngx_http_ws_heartbeat_family_t *f,
    ngx_http_ws_heartbeat_sample_t *s) noexcept
{
    ngx_uint_t  i;

    pr->p = ngx_sprintf(pr->p, "nginx_ws_heartbeat_%s%s", f->name,
                        s->suffix);

    for (i = 0; i < s->nlabels; i++) {
        pr->p = ngx_sprintf(pr->p, "%c%s=\"%s\"", i ? ',' : '{',
                            s->label[i], s->key[s->label_key[i]]);
    }

    pr->p = ngx_sprintf(pr->p, "%s ", s->nlabels ? "}" : "");
    pr->p = ngx_http_ws_heartbeat_value(pr->p, s);
    *pr->p++ = '\n';
}


/*
 * the JSON document is printed as a stream of values, each at its place
 * (the family's keys, then the sample's): objects are closed and opened
 * where the place of a value leaves that of the one before
 */

static void
ngx_http_ws_heartbeat_json(ngx_http_ws_heartbeat_printer_t *pr,
    const ngx_http_ws_heartbeat_family_t *f,
    ngx_http_ws_heartbeat_sample_t *s) noexcept
{
    u_char      *k;
    ngx_uint_t   depth, same, i;
    const char  *place;
    u_char       path[NGX_HTTP_WS_HB_DEPTH + 1][NGX_HTTP_WS_HB_KEY_LEN];

    depth = 0;

    for (place = f->json; *place; depth++) {
        for (k = path[depth]; *place && *place != '.'; place++) {
            *k++ = *place;
        }

        *k = '\0';
        place += *place == '.';
    }

    for (i = 0; i < s->nkeys; i++) {
        (void) ngx_cpystrn(path[depth++], s->key[i], NGX_HTTP_WS_HB_KEY_LEN);
    }

    /* path[0 .. depth - 1) are objects, path[depth - 1] the value's key */

    for (same = 0; same < pr->open && same < depth - 1; same++) {
        if (ngx_strcmp(pr->path[same], path[same]) != 0) {
            break;
        }
    }

    for ( /* void */ ; pr->open > same; pr->open--) {
        *pr->p++ = '}';
    }

    if (!pr->first) {
        *pr->p++ = ',';
    }

    pr->first = false;

    for ( /* void */ ; pr->open < depth - 1; pr->open++) {
        pr->p = ngx_sprintf(pr->p, "\"%s\":{", path[pr->open]);
        (void) ngx_cpystrn(pr->path[pr->open], path[pr->open],
                           NGX_HTTP_WS_HB_KEY_LEN);
    }

    pr->p = ngx_sprintf(pr->p, "\"%s\":", path[depth - 1]);
    pr->p = ngx_http_ws_heartbeat_value(pr->p, s);
}


static void
ngx_http_ws_heartbeat_emit(ngx_http_ws_heartbeat_printer_t *pr,
    const ngx_http_ws_heartbeat_family_t *f,
    ngx_http_ws_heartbeat_sample_t *s, ngx_atomic_t *counter) noexcept
{
    /* a counter read once: workers keep adding while we print */

    if (counter != NULL) {
        s->value = *counter;
    }

    if (pr->json) {
        ngx_http_ws_heartbeat_json(pr, f, s);

    } else {
        ngx_http_ws_heartbeat_prometheus(pr, f, s);
    }
}


/* a histogram of each peer: cumulative buckets, the sum, the count */

static void
ngx_http_ws_heartbeat_histograms(ngx_http_ws_heartbeat_printer_t *pr,
    const ngx_http_ws_heartbeat_family_t *f,
    ngx_http_ws_heartbeat_histogram_t *h) noexcept
{
    u_char                          le[NGX_HTTP_WS_HB_KEY_LEN];
    ngx_uint_t                      side, i;
    ngx_atomic_uint_t               cum;
    ngx_http_ws_heartbeat_sample_t  s;

    for (side = 0; side < 2; side++) {
        cum = 0;

        for (i = 0; i < NGX_HTTP_WS_HB_RTT_BUCKETS; i++) {
            cum += h[side].buckets[i];

            if (i == NGX_HTTP_WS_HB_RTT_BUCKETS - 1) {
                ngx_memcpy(le, "+Inf", sizeof("+Inf"));

            } else {
                *ngx_http_ws_heartbeat_seconds(le,
                     ngx_http_ws_heartbeat_rtt_le[i]) = '\0';
            }

            s = {};
            s.suffix = "_bucket";
            ngx_http_ws_heartbeat_key(&s, 0,
                                      ngx_http_ws_heartbeat_side_name(side));
            ngx_http_ws_heartbeat_key(&s, 1, "buckets");
            ngx_http_ws_heartbeat_key(&s, 2, (const char *) le);
            ngx_http_ws_heartbeat_label(&s, f->side, 0);
            ngx_http_ws_heartbeat_label(&s, "le", 2);
            s.value = cum;
            ngx_http_ws_heartbeat_emit(pr, f, &s, NULL);
        }

        s = {};
        s.suffix = "_sum";
        ngx_http_ws_heartbeat_key(&s, 0, ngx_http_ws_heartbeat_side_name(side));
        ngx_http_ws_heartbeat_key(&s, 1, "sum");
        ngx_http_ws_heartbeat_label(&s, f->side, 0);
        s.seconds = true;
        ngx_http_ws_heartbeat_emit(pr, f, &s, &h[side].sum_us);

        s.suffix = "_count";
        ngx_http_ws_heartbeat_key(&s, 1, "count");
        s.seconds = false;
        ngx_http_ws_heartbeat_emit(pr, f, &s, &h[side].count);
    }
}


/* the values of one family, by its labels */

static void
ngx_http_ws_heartbeat_family(ngx_http_ws_heartbeat_printer_t *pr,
    const ngx_http_ws_heartbeat_family_t *f, ngx_http_ws_heartbeat_stats_t *st)
    noexcept
{
    u_char                          code[NGX_HTTP_WS_HB_KEY_LEN], *base;
    ngx_uint_t                      side, i;
    ngx_atomic_t                   *a;
    ngx_http_ws_heartbeat_sample_t  s;

    base = reinterpret_cast<u_char *>(st) + f->offset;
    a = reinterpret_cast<ngx_atomic_t *>(base);

    switch (f->by) {

    case NGX_HTTP_WS_HB_BY_NONE:
        s = {};
        s.suffix = "";
        ngx_http_ws_heartbeat_emit(pr, f, &s, a);
        break;

    case NGX_HTTP_WS_HB_BY_WORKERS:
        s = {};
        s.suffix = "";
        s.value = ngx_http_ws_heartbeat_active(st);
        ngx_http_ws_heartbeat_emit(pr, f, &s, NULL);
        break;

    case NGX_HTTP_WS_HB_BY_SIDE:
        for (side = 0; side < 2; side++) {
            s = {};
            s.suffix = "";
            ngx_http_ws_heartbeat_key(&s, 0,
                                      ngx_http_ws_heartbeat_side_name(side));
            ngx_http_ws_heartbeat_label(&s, f->side, 0);
            ngx_http_ws_heartbeat_emit(pr, f, &s, &a[side]);
        }
        break;

    case NGX_HTTP_WS_HB_BY_REASON:
        for (i = 1; i < NGX_HTTP_WS_HB_END_N; i++) {
            s = {};
            s.suffix = "";
            ngx_http_ws_heartbeat_key(&s, 0,
                                      ngx_http_ws_heartbeat_end_names[i]);
            ngx_http_ws_heartbeat_label(&s, "reason", 0);
            ngx_http_ws_heartbeat_emit(pr, f, &s, &a[i]);
        }
        break;

    case NGX_HTTP_WS_HB_BY_SIDE_CODE:

        /* 1000..1015 by code; application codes and an empty Close: other */

        for (side = 0; side < 2; side++) {
            for (i = 0; i < NGX_HTTP_WS_HB_CODES; i++) {
                if (i == NGX_HTTP_WS_HB_CODES - 1) {
                    ngx_memcpy(code, "other", sizeof("other"));

                } else {
                    *ngx_sprintf(code, "%ui", 1000 + i) = '\0';
                }

                s = {};
                s.suffix = "";
                ngx_http_ws_heartbeat_key(&s, 0,
                    ngx_http_ws_heartbeat_side_name(side));
                ngx_http_ws_heartbeat_key(&s, 1, (const char *) code);
                ngx_http_ws_heartbeat_label(&s, f->side, 0);
                ngx_http_ws_heartbeat_label(&s, "code", 1);
                ngx_http_ws_heartbeat_emit(pr, f, &s,
                                    &a[side * NGX_HTTP_WS_HB_CODES + i]);
            }
        }
        break;

    case NGX_HTTP_WS_HB_BY_SIDE_RTT:
        ngx_http_ws_heartbeat_histograms(pr, f,
            reinterpret_cast<ngx_http_ws_heartbeat_histogram_t *>(base));
        break;
    }
}


/*
 * the most the printers write: a family's HELP and TYPE lines, and for
 * each value a line or JSON member of at most NGX_HTTP_WS_HB_LINE bytes
 * (a name, 3 keys or 2 labels of at most NGX_HTTP_WS_HB_KEY_LEN, a number)
 */

#define NGX_HTTP_WS_HB_LINE  (64 + 4 * NGX_HTTP_WS_HB_KEY_LEN + NGX_INT64_LEN)

static size_t
ngx_http_ws_heartbeat_print_size() noexcept
{
    size_t                                 size, n;
    ngx_uint_t                             i;
    const ngx_http_ws_heartbeat_family_t  *f;

    size = 16;

    for (i = 0; i < sizeof(ngx_http_ws_heartbeat_families)
                    / sizeof(ngx_http_ws_heartbeat_families[0]); i++)
    {
        f = &ngx_http_ws_heartbeat_families[i];

        switch (f->by) {

        case NGX_HTTP_WS_HB_BY_NONE:
        case NGX_HTTP_WS_HB_BY_WORKERS:
            n = 1;
            break;

        case NGX_HTTP_WS_HB_BY_SIDE:
            n = 2;
            break;

        case NGX_HTTP_WS_HB_BY_REASON:
            n = NGX_HTTP_WS_HB_END_N;
            break;

        case NGX_HTTP_WS_HB_BY_SIDE_CODE:
            n = 2 * NGX_HTTP_WS_HB_CODES;
            break;

        default: /* NGX_HTTP_WS_HB_BY_SIDE_RTT */
            n = 2 * (NGX_HTTP_WS_HB_RTT_BUCKETS + 2);
            break;
        }

        size += 64 + 2 * ngx_strlen(f->name) + ngx_strlen(f->help)
                + ngx_strlen(f->type) + n * NGX_HTTP_WS_HB_LINE;
    }

    return size;
}


static u_char *
ngx_http_ws_heartbeat_print(u_char *p, ngx_http_ws_heartbeat_stats_t *st,
    bool json) noexcept
{
    ngx_uint_t                        i;
    ngx_http_ws_heartbeat_printer_t   pr;
    const ngx_http_ws_heartbeat_family_t  *f;

    pr.p = p;
    pr.json = json;
    pr.first = true;
    pr.open = 0;

    if (json) {
        *pr.p++ = '{';
    }

    for (i = 0; i < sizeof(ngx_http_ws_heartbeat_families)
                    / sizeof(ngx_http_ws_heartbeat_families[0]); i++)
    {
        f = &ngx_http_ws_heartbeat_families[i];

        if (!json) {
            pr.p = ngx_sprintf(pr.p, "# HELP nginx_ws_heartbeat_%s %s\n"
                               "# TYPE nginx_ws_heartbeat_%s %s\n",
                               f->name, f->help, f->name, f->type);
        }

        ngx_http_ws_heartbeat_family(&pr, f, st);
    }

    if (json) {
        for ( /* void */ ; pr.open; pr.open--) {
            *pr.p++ = '}';
        }

        pr.p = ngx_cpymem(pr.p, "}\n", 2);
    }

    return pr.p;
}


ngx_int_t
ngx_http_ws_heartbeat_status_handler(ngx_http_request_t *r) noexcept
{
    bool                                json;
    size_t                              size;
    ngx_int_t                           rc;
    ngx_buf_t                          *b;
    ngx_chain_t                         out;
    ngx_http_ws_heartbeat_stats_t      *st;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    st = ngx_http_ws_heartbeat_main_conf(r)->stats;

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

    size = ngx_http_ws_heartbeat_print_size();

    b = ngx_create_temp_buf(r->pool, size);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_http_ws_heartbeat_print(b->last, st, json);
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
