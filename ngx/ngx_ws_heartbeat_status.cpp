
/*
 * ngx_ws_heartbeat_module: the ws_heartbeat_status endpoint. Prints the
 * shared counters (ngx_ws_heartbeat_stats.cpp) as Prometheus text or as
 * JSON, both from one table of metric families: a metric of a known shape
 * is one line of that table. Every value is by group
 * (ws_heartbeat_metrics_group): the group label in Prometheus; in the JSON
 * the sum over the groups at the top, and each group under "groups".
 */


#include "ngx_ws_heartbeat.hpp"


/* a family's labels, and so the layout of its counters */

typedef enum {
    NGX_HTTP_WS_HB_BY_NONE = 0,     /* one counter */
    NGX_HTTP_WS_HB_BY_WORKERS,      /* a slot's field, summed: no label */
    NGX_HTTP_WS_HB_BY_SIDE,         /* [2]: side */
    NGX_HTTP_WS_HB_BY_REASON,       /* [END_N]: reason, "open" left out */
    NGX_HTTP_WS_HB_BY_SIDE_CODE,    /* [2][CODES]: side, code */
    NGX_HTTP_WS_HB_BY_CLOSING,      /* [2]: reason drain, max_age */
    NGX_HTTP_WS_HB_BY_SIDE_HIST,    /* histogram[2]: side, le */
    NGX_HTTP_WS_HB_BY_HIST          /* histogram: le */
} ngx_http_ws_heartbeat_by_e;


/* the version of the JSON document (docs/status.schema.json) */

#define NGX_HTTP_WS_HB_JSON_VERSION  2


typedef struct {
    const char                 *name;   /* nginx_ws_heartbeat_<name> */
    const char                 *type;   /* Prometheus TYPE */
    const char                 *help;
    const char                 *json;   /* its place in the JSON: "a" "a.b" */
    ngx_http_ws_heartbeat_by_e  by;
    const char                 *side;   /* the label of a side: peer, from */
    size_t                      offset; /* in ngx_http_ws_heartbeat_stats_t */

    /*
     * a histogram's bucket bounds (microseconds) but +Inf; its counters:
     * buckets[nle + 1], sum_us, count, one after the other
     */
    const std::uint64_t        *le;
    ngx_uint_t                  nle;
} ngx_http_ws_heartbeat_family_t;


/* every metric the status endpoint reports, in the order it prints them */

#define ngx_http_ws_heartbeat_at(field)                                      \
    offsetof(ngx_http_ws_heartbeat_stats_t, field)

static const ngx_http_ws_heartbeat_family_t  ngx_http_ws_heartbeat_families[]
    = {
    { "connections_total", "counter",
      "WebSocket connections the module has managed.",
      "connections.total", NGX_HTTP_WS_HB_BY_NONE, NULL,
      ngx_http_ws_heartbeat_at(connections), NULL, 0 },

    { "connections_active", "gauge",
      "WebSocket connections the module manages now.",
      "connections.active", NGX_HTTP_WS_HB_BY_WORKERS, NULL, 0, NULL, 0 },

    { "pings_total", "counter",
      "Pings the module sent, by peer.",
      "pings", NGX_HTTP_WS_HB_BY_SIDE, "peer",
      ngx_http_ws_heartbeat_at(pings), NULL, 0 },

    { "pongs_total", "counter",
      "Pongs to the module's Pings, by peer.",
      "pongs", NGX_HTTP_WS_HB_BY_SIDE, "peer",
      ngx_http_ws_heartbeat_at(pongs), NULL, 0 },

    { "closes_total", "counter",
      "WebSocket connections ended, by reason.",
      "closes", NGX_HTTP_WS_HB_BY_REASON, NULL,
      ngx_http_ws_heartbeat_at(ends), NULL, 0 },

    { "close_frames_total", "counter",
      "Close frames the endpoints sent, by sender and status code.",
      "close_frames", NGX_HTTP_WS_HB_BY_SIDE_CODE, "from",
      ngx_http_ws_heartbeat_at(close_frames), NULL, 0 },

    { "discarded_frames_total", "counter",
      "Frames an endpoint sent after the module had closed the stream "
      "toward the other one on its behalf, consumed and not relayed, "
      "by sender.",
      "discarded_frames", NGX_HTTP_WS_HB_BY_SIDE, "from",
      ngx_http_ws_heartbeat_at(discarded), NULL, 0 },

    { "closing_timeouts_total", "counter",
      "Connections the module was closing (drain, max age) that were "
      "still open at ws_heartbeat_drain_timeout and were cut, by reason.",
      "closing_timeouts", NGX_HTTP_WS_HB_BY_CLOSING, NULL,
      ngx_http_ws_heartbeat_at(closing_timeouts), NULL, 0 },

    { "rtt_seconds", "histogram",
      "Round trip of the module's Pings, by peer.",
      "rtt_seconds", NGX_HTTP_WS_HB_BY_SIDE_HIST, "peer",
      ngx_http_ws_heartbeat_at(rtt), ngx_http_ws_heartbeat_rtt_le,
      NGX_HTTP_WS_HB_RTT_BUCKETS - 1 },

    { "connection_duration_seconds", "histogram",
      "How long the WebSocket connections the module managed lived, "
      "from the request to the end.",
      "connection_duration_seconds", NGX_HTTP_WS_HB_BY_HIST, NULL,
      ngx_http_ws_heartbeat_at(ages), ngx_http_ws_heartbeat_age_le,
      NGX_HTTP_WS_HB_AGE_BUCKETS - 1 }
};

#define NGX_HTTP_WS_HB_FAMILIES                                              \
    (sizeof(ngx_http_ws_heartbeat_families)                                 \
     / sizeof(ngx_http_ws_heartbeat_families[0]))

static_assert(sizeof(ngx_http_ws_heartbeat_histogram_t)
              == (NGX_HTTP_WS_HB_RTT_BUCKETS + 2) * sizeof(ngx_atomic_t)
              && sizeof(ngx_http_ws_heartbeat_ages_t)
              == (NGX_HTTP_WS_HB_AGE_BUCKETS + 2) * sizeof(ngx_atomic_t),
              "a histogram: buckets, sum, count, nothing between");


/*
 * One value of a family: its Prometheus line is the family's name, the
 * suffix and the labels; its JSON place is the family's place and the
 * keys below it (the label values, and for a histogram its parts).
 */

#define NGX_HTTP_WS_HB_KEY_LEN  (NGX_HTTP_WS_HB_GROUP_LEN + 8)

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


/*
 * the groups a value is the sum of: all those printed (the JSON's top) or
 * one (name: its label, its place under the JSON's "groups")
 */

typedef struct {
    ngx_http_ws_heartbeat_shm_t    *shm;
    ngx_uint_t                      n;
    ngx_http_ws_heartbeat_stats_t  *stats[NGX_HTTP_WS_HB_GROUPS];
    ngx_uint_t                      slot[NGX_HTTP_WS_HB_GROUPS];
    ngx_str_t                      *name;
} ngx_http_ws_heartbeat_view_t;


/* where the JSON printer is: the objects open, below the document's */

#define NGX_HTTP_WS_HB_DEPTH  7     /* groups.<name>.<place a.b>.<3 keys> */

typedef struct {
    u_char                     *p;
    bool                        json;
    bool                        first;
    ngx_uint_t                  open;
    u_char                      path[NGX_HTTP_WS_HB_DEPTH]
                                    [NGX_HTTP_WS_HB_KEY_LEN];
    ngx_http_ws_heartbeat_view_t  *view;
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

    pr->p = ngx_sprintf(pr->p, "nginx_ws_heartbeat_%s%s{group=\"%V\"",
                        f->name, s->suffix, pr->view->name);

    for (i = 0; i < s->nlabels; i++) {
        pr->p = ngx_sprintf(pr->p, ",%s=\"%s\"",
                            s->label[i], s->key[s->label_key[i]]);
    }

    pr->p = ngx_cpymem(pr->p, "} ", 2);
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

    if (pr->view->name != NULL) {
        ngx_memcpy(path[depth++], "groups", sizeof("groups"));
        *ngx_cpymem(path[depth++], pr->view->name->data,
                    pr->view->name->len) = '\0';
    }

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


/*
 * a counter of the groups of the view, at offset in their stats, summed;
 * each read once: workers keep adding while we print
 */

static ngx_atomic_uint_t
ngx_http_ws_heartbeat_sum(ngx_http_ws_heartbeat_view_t *v, size_t offset)
    noexcept
{
    ngx_uint_t         g;
    ngx_atomic_uint_t  sum;

    sum = 0;

    for (g = 0; g < v->n; g++) {
        sum += *reinterpret_cast<ngx_atomic_t *>(
                   reinterpret_cast<u_char *>(v->stats[g]) + offset);
    }

    return sum;
}


static void
ngx_http_ws_heartbeat_emit(ngx_http_ws_heartbeat_printer_t *pr,
    const ngx_http_ws_heartbeat_family_t *f,
    ngx_http_ws_heartbeat_sample_t *s, size_t offset) noexcept
{
    /* offset 0 (the name of a group, no counter): the caller set it */

    if (offset != 0) {
        s->value = ngx_http_ws_heartbeat_sum(pr->view, offset);
    }

    if (pr->json) {
        ngx_http_ws_heartbeat_json(pr, f, s);

    } else {
        ngx_http_ws_heartbeat_prometheus(pr, f, s);
    }
}


/*
 * a histogram, of each peer (BY_SIDE_HIST) or one: cumulative buckets, the
 * sum, the count
 */

static void
ngx_http_ws_heartbeat_histograms(ngx_http_ws_heartbeat_printer_t *pr,
    const ngx_http_ws_heartbeat_family_t *f) noexcept
{
    u_char                          le[NGX_HTTP_WS_HB_KEY_LEN];
    size_t                          base;
    ngx_uint_t                      side, sides, i, k;
    ngx_atomic_uint_t               cum;
    ngx_http_ws_heartbeat_sample_t  s;

    sides = f->by == NGX_HTTP_WS_HB_BY_SIDE_HIST ? 2 : 1;

    for (side = 0; side < sides; side++) {
        base = f->offset + side * (f->nle + 3) * sizeof(ngx_atomic_t);
        cum = 0;

        for (i = 0; i <= f->nle; i++) {
            cum += ngx_http_ws_heartbeat_sum(pr->view,
                                             base + i * sizeof(ngx_atomic_t));

            if (i == f->nle) {
                ngx_memcpy(le, "+Inf", sizeof("+Inf"));

            } else {
                *ngx_http_ws_heartbeat_seconds(le, f->le[i]) = '\0';
            }

            s = {};
            s.suffix = "_bucket";
            k = 0;

            if (sides == 2) {
                ngx_http_ws_heartbeat_key(&s, k++,
                                      ngx_http_ws_heartbeat_side_name(side));
                ngx_http_ws_heartbeat_label(&s, f->side, 0);
            }

            ngx_http_ws_heartbeat_key(&s, k++, "buckets");
            ngx_http_ws_heartbeat_key(&s, k, (const char *) le);
            ngx_http_ws_heartbeat_label(&s, "le", k);
            s.value = cum;
            ngx_http_ws_heartbeat_emit(pr, f, &s, 0);
        }

        s = {};
        s.suffix = "_sum";
        k = 0;

        if (sides == 2) {
            ngx_http_ws_heartbeat_key(&s, k++,
                                      ngx_http_ws_heartbeat_side_name(side));
            ngx_http_ws_heartbeat_label(&s, f->side, 0);
        }

        ngx_http_ws_heartbeat_key(&s, k, "sum");
        s.seconds = true;
        ngx_http_ws_heartbeat_emit(pr, f, &s,
                                   base + (f->nle + 1) * sizeof(ngx_atomic_t));

        s.suffix = "_count";
        ngx_http_ws_heartbeat_key(&s, k, "count");
        s.seconds = false;
        ngx_http_ws_heartbeat_emit(pr, f, &s,
                                   base + (f->nle + 2) * sizeof(ngx_atomic_t));
    }
}


/* the values of one family, by its labels */

static void
ngx_http_ws_heartbeat_family(ngx_http_ws_heartbeat_printer_t *pr,
    const ngx_http_ws_heartbeat_family_t *f) noexcept
{
    u_char                          code[NGX_HTTP_WS_HB_KEY_LEN];
    size_t                          a;
    ngx_uint_t                      side, i;
    ngx_http_ws_heartbeat_sample_t  s;

    /* the i-th counter of the family's array */

#define ngx_http_ws_heartbeat_nth(i)  (a + (i) * sizeof(ngx_atomic_t))

    a = f->offset;

    switch (f->by) {

    case NGX_HTTP_WS_HB_BY_NONE:
        s = {};
        s.suffix = "";
        ngx_http_ws_heartbeat_emit(pr, f, &s, a);
        break;

    case NGX_HTTP_WS_HB_BY_WORKERS:
        s = {};
        s.suffix = "";

        for (i = 0; i < pr->view->n; i++) {
            s.value += ngx_http_ws_heartbeat_active(pr->view->shm,
                                                    pr->view->slot[i]);
        }

        ngx_http_ws_heartbeat_emit(pr, f, &s, 0);
        break;

    case NGX_HTTP_WS_HB_BY_SIDE:
        for (side = 0; side < 2; side++) {
            s = {};
            s.suffix = "";
            ngx_http_ws_heartbeat_key(&s, 0,
                                      ngx_http_ws_heartbeat_side_name(side));
            ngx_http_ws_heartbeat_label(&s, f->side, 0);
            ngx_http_ws_heartbeat_emit(pr, f, &s,
                                       ngx_http_ws_heartbeat_nth(side));
        }
        break;

    case NGX_HTTP_WS_HB_BY_REASON:
        for (i = 1; i < NGX_HTTP_WS_HB_END_N; i++) {
            s = {};
            s.suffix = "";
            ngx_http_ws_heartbeat_key(&s, 0,
                                      ngx_http_ws_heartbeat_end_names[i]);
            ngx_http_ws_heartbeat_label(&s, "reason", 0);
            ngx_http_ws_heartbeat_emit(pr, f, &s,
                                       ngx_http_ws_heartbeat_nth(i));
        }
        break;

    case NGX_HTTP_WS_HB_BY_CLOSING:
        for (i = 0; i < 2; i++) {
            s = {};
            s.suffix = "";
            ngx_http_ws_heartbeat_key(&s, 0,
                ngx_http_ws_heartbeat_end_names[i ? NGX_HTTP_WS_HB_END_MAX_AGE
                                                  : NGX_HTTP_WS_HB_END_DRAIN]);
            ngx_http_ws_heartbeat_label(&s, "reason", 0);
            ngx_http_ws_heartbeat_emit(pr, f, &s,
                                       ngx_http_ws_heartbeat_nth(i));
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
                    ngx_http_ws_heartbeat_nth(side * NGX_HTTP_WS_HB_CODES
                                              + i));
            }
        }
        break;

    case NGX_HTTP_WS_HB_BY_SIDE_HIST:
    case NGX_HTTP_WS_HB_BY_HIST:
        ngx_http_ws_heartbeat_histograms(pr, f);
        break;
    }

#undef ngx_http_ws_heartbeat_nth
}


/*
 * the most the printers write: a family's HELP and TYPE lines, and for
 * each value of each group (and the JSON's sums) a line or JSON member of
 * at most NGX_HTTP_WS_HB_LINE bytes (a name, the group, 3 keys or 2
 * labels of at most NGX_HTTP_WS_HB_KEY_LEN, a number)
 */

#define NGX_HTTP_WS_HB_LINE  (64 + 6 * NGX_HTTP_WS_HB_KEY_LEN + NGX_INT64_LEN)

static size_t
ngx_http_ws_heartbeat_print_size(ngx_uint_t ngroups) noexcept
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
        case NGX_HTTP_WS_HB_BY_CLOSING:
            n = 2;
            break;

        case NGX_HTTP_WS_HB_BY_REASON:
            n = NGX_HTTP_WS_HB_END_N;
            break;

        case NGX_HTTP_WS_HB_BY_SIDE_CODE:
            n = 2 * NGX_HTTP_WS_HB_CODES;
            break;

        case NGX_HTTP_WS_HB_BY_SIDE_HIST:
            n = 2 * (f->nle + 3);
            break;

        default: /* NGX_HTTP_WS_HB_BY_HIST */
            n = f->nle + 3;
            break;
        }

        size += 64 + 2 * ngx_strlen(f->name) + ngx_strlen(f->help)
                + ngx_strlen(f->type)
                + (ngroups + 1) * n * NGX_HTTP_WS_HB_LINE;
    }

    return size;
}


/*
 * the groups of the view all (names: their labels): Prometheus prints
 * each family group by group; the JSON its version, every family summed
 * over the groups, then each group's under "groups" (the JSON printer
 * opens and closes the objects)
 */

static u_char *
ngx_http_ws_heartbeat_print(u_char *p, ngx_http_ws_heartbeat_view_t *all,
    ngx_str_t *names, bool json) noexcept
{
    ngx_uint_t                             i, g;
    ngx_http_ws_heartbeat_view_t           one;
    ngx_http_ws_heartbeat_printer_t        pr;
    const ngx_http_ws_heartbeat_family_t  *f;

    pr.p = p;
    pr.json = json;
    pr.first = true;
    pr.open = 0;

    one.shm = all->shm;
    one.n = 1;

    if (!json) {
        for (i = 0; i < NGX_HTTP_WS_HB_FAMILIES; i++) {
            f = &ngx_http_ws_heartbeat_families[i];

            pr.p = ngx_sprintf(pr.p, "# HELP nginx_ws_heartbeat_%s %s\n"
                               "# TYPE nginx_ws_heartbeat_%s %s\n",
                               f->name, f->help, f->name, f->type);

            for (g = 0; g < all->n; g++) {
                one.stats[0] = all->stats[g];
                one.slot[0] = all->slot[g];
                one.name = &names[g];
                pr.view = &one;
                ngx_http_ws_heartbeat_family(&pr, f);
            }
        }

        return pr.p;
    }

    pr.p = ngx_sprintf(pr.p, "{\"version\":%d", NGX_HTTP_WS_HB_JSON_VERSION);
    pr.first = false;

    for (g = 0; g <= all->n; g++) {
        if (g == 0) {
            pr.view = all;

        } else {
            one.stats[0] = all->stats[g - 1];
            one.slot[0] = all->slot[g - 1];
            one.name = &names[g - 1];
            pr.view = &one;
        }

        for (i = 0; i < NGX_HTTP_WS_HB_FAMILIES; i++) {
            ngx_http_ws_heartbeat_family(&pr,
                                         &ngx_http_ws_heartbeat_families[i]);
        }
    }

    for ( /* void */ ; pr.open; pr.open--) {
        *pr.p++ = '}';
    }

    return ngx_cpymem(pr.p, "}\n", 2);
}


ngx_int_t
ngx_http_ws_heartbeat_status_handler(ngx_http_request_t *r) noexcept
{
    bool                                json;
    size_t                              size;
    ngx_int_t                           rc, g;
    ngx_str_t                           names[NGX_HTTP_WS_HB_GROUPS], arg;
    ngx_str_t                          *conf_names;
    ngx_buf_t                          *b;
    ngx_uint_t                          i;
    ngx_chain_t                         out;
    ngx_http_ws_heartbeat_view_t        all;
    ngx_http_ws_heartbeat_main_conf_t  *hmcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    hmcf = ngx_http_ws_heartbeat_main_conf(r);

    if (hmcf->shm == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* the groups of the configuration, "" first */

    conf_names = hmcf->groups != NULL
                 ? static_cast<ngx_str_t *>(hmcf->groups->elts) : NULL;

    all.shm = hmcf->shm;
    all.n = hmcf->ngroups;
    all.name = NULL;

    for (i = 0; i < hmcf->ngroups; i++) {
        all.stats[i] = hmcf->stats[i];
        all.slot[i] = hmcf->stats_slot[i];

        if (i == 0) {
            ngx_str_set(&names[0], "");     /* not NULL: it is copied */

        } else {
            names[i] = conf_names[i - 1];
        }
    }

    /*
     * ?group=name: that group alone ("group=": the unnamed one); a name
     * the configuration does not have is 404, as a scrape of a group that
     * was removed should fail (up == 0) rather than look empty
     */

    if (ngx_http_arg(r, (u_char *) "group", 5, &arg) == NGX_OK) {
        g = ngx_http_ws_heartbeat_find_group(hmcf, &arg);

        if (g == NGX_DECLINED) {
            return NGX_HTTP_NOT_FOUND;
        }

        all.n = 1;
        all.stats[0] = hmcf->stats[g];
        all.slot[0] = hmcf->stats_slot[g];
        names[0] = names[g];
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

    size = ngx_http_ws_heartbeat_print_size(all.n);

    b = ngx_create_temp_buf(r->pool, size);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_http_ws_heartbeat_print(b->last, &all, names, json);
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
