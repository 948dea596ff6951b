/* Generation tests: the KV-cache engine against full recomputation of the training forward
 * (llama_hidden + llama_logits over the whole sequence at every step) for MHA and GQA tiny random
 * models, with and without an adapter (non-zero gates, tanh and identity); zero gates equal the
 * base model; a batched prompt equals feeding it token by token; cache limits and eos; the
 * top-p/temperature sampler on hand-made distributions (nucleus membership, frequencies,
 * determinism per seed, the sorting shortcut against a brute-force nucleus); and the
 * `generate` subcommand through the binary: greedy on stories260K (deterministic, stops at eos or
 * the limit, same ids as the library), text mode, the Alpaca template, --prompt-file, --adapter,
 * seeded sampling, and one-line errors with a non-zero exit.
 * The binary is $LLAMA_ADAPTER_BIN or build/llama-adapter. A small SentencePiece model is
 * trained here (tok_train); stories260K checks SKIP when ../shared is absent. */
#include <ftw.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "autograd/rng.h"
#include "checkpoints/adapter_file.h"
#include "checkpoints/model_file.h"
#include "data/alpaca.h"
#include "data/tok.h"
#include "tests/test.h"
#include "trainer/generate.h"
#include "trainer/llama.h"
#include "trainer/params.h"

static char g_dir[256]; /* mkdtemp directory, removed at the end */

/* ---------------------------------------------------------------- helpers */

static void path_in(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", g_dir, name); }



static llama_config make_cfg(int dim, int n_layers, int H, int G, int hidden, int V, int max_seq) {
    llama_config c;
    memset(&c, 0, sizeof c);
    c.dim = dim;
    c.n_layers = n_layers;
    c.n_heads = H;
    c.n_kv_heads = G;
    c.hidden_dim = hidden;
    c.vocab_size = V;
    c.max_seq_len = max_seq;
    c.norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.tied = 0;
    return c;
}

/* A random adapter with non-zero gates (gates = scale * N(0,1)). */
static int make_adapter(trainable *ad, const llama_config *c, int K, int L, int act, float gate_scale, uint64_t seed) {
    char err[256];
    if (trainable_adapter_init(ad, c, K, L, act, seed, err, sizeof err)) {
        printf("  adapter init: %s\n", err);
        return -1;
    }
    ag_rng r;
    ag_rng_seed(&r, seed + 1000);
    for (int j = 0; j < L; j++)
        for (int h = 0; h < c->n_heads; h++) ((float *)ad->gate[j].data)[h] = gate_scale * (float)ag_rng_normal(&r);
    return 0;
}

/* Logits [V] at the last of ids[0..n) by the training forward over the whole sequence. */
static void full_logits(const model_weights *w, const trainable *ad, const int *ids, int n, float *out) {
    ag_arena a;
    ag_tape t;
    ag_arena_init(&a, 1 << 20);
    ag_tape_init(&t, &a);
    t.no_grad = 1;
    int *pos = malloc((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++) pos[i] = i;
    int off[2] = {0, n}, last = n - 1;
    ag_tensor *h = llama_hidden(&t, w, ad, ids, pos, off, 1, n);
    ag_tensor *lg = llama_logits(&t, w, h, &last, 1);
    memcpy(out, lg->data, (size_t)w->cfg.vocab_size * sizeof(float));
    free(pos);
    ag_tape_free(&t);
    ag_arena_free(&a);
}

static double max_abs_diff(const float *a, const float *b, int n) {
    double m = 0;
    for (int i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - (double)b[i]));
    return m;
}

static double max_abs(const float *a, int n) {
    double m = 0;
    for (int i = 0; i < n; i++) m = fmax(m, fabs((double)a[i]));
    return m;
}

static const int PROMPT[] = {1, 7, 3, 19, 12, 40, 5};
#define N_PROMPT ((int)(sizeof PROMPT / sizeof PROMPT[0]))

/* Greedy with the engine (gen_generate) and greedy by full recomputation from PROMPT; checks
 * ids equal and, feeding the recomputed ids through a second engine, logits within 1e-4. */
static void check_cache_vs_full(const char *what, const model_weights *w, const trainable *ad, int n_new) {
    char err[512];
    int V = w->cfg.vocab_size, total = N_PROMPT + n_new;
    gen_engine *e = gen_engine_new(w, ad, total, err, sizeof err);
    CHECK(e != NULL, "%s: engine: %s", what, err);
    if (!e) return;
    gen_sampler s;
    gen_sampler_init(&s, V, 0.0f, 0.75f, 0);
    int *gen = malloc((size_t)n_new * sizeof(int));
    gen_stats st;
    int n = gen_generate(e, PROMPT, N_PROMPT, n_new, -1, &s, gen, NULL, NULL, &st, err, sizeof err);
    CHECK(n == n_new, "%s: generated %d of %d: %s", what, n, n_new, err);
    CHECK(st.n_prompt == N_PROMPT && st.n_decode == n_new - 1, "%s: stats prompt %d decode %d", what, st.n_prompt,
          st.n_decode);

    int *seq = malloc((size_t)total * sizeof(int));
    memcpy(seq, PROMPT, sizeof PROMPT);
    float *lf = malloc((size_t)V * sizeof(float));
    gen_engine_reset(e);
    const float *le = gen_engine_feed(e, PROMPT, N_PROMPT, err, sizeof err);
    double worst = 0, scale = 0;
    int mismatches = 0, distinct_steps = 0;
    float prev0 = 0;
    for (int i = 0; i < n_new && le; i++) {
        full_logits(w, ad, seq, N_PROMPT + i, lf);
        double d = max_abs_diff(le, lf, V);
        worst = fmax(worst, d);
        scale = fmax(scale, max_abs(lf, V));
        int id = gen_argmax(lf, V);
        if (n == n_new && id != gen[i]) mismatches++;
        if (i > 0 && lf[0] != prev0) distinct_steps++;
        prev0 = lf[0];
        seq[N_PROMPT + i] = id;
        if (i + 1 < n_new) le = gen_engine_feed(e, &id, 1, err, sizeof err);
    }
    CHECK(le != NULL, "%s: feed: %s", what, err);
    CHECK(worst <= 1e-4, "%s: cached vs recomputed logits differ by %.3g (logit scale %.3g)", what, worst, scale);
    CHECK(mismatches == 0, "%s: %d of %d greedy ids differ from full recomputation", what, mismatches, n_new);
    CHECK(scale > 0.1 && distinct_steps == n_new - 1, "%s: degenerate logits (scale %.3g, %d distinct steps)", what,
          scale, distinct_steps);
    printf("  %-28s %d tokens, max |logit diff| %.2e (logit scale %.2f)\n", what, n_new, worst, scale);
    free(lf);
    free(seq);
    free(gen);
    gen_sampler_free(&s);
    gen_engine_free(e);
}

/* ---------------------------------------------------------------- engine vs full forward */

static void test_kv_cache_greedy_equals_full_recompute_mha_and_gqa(void) {
    struct { const char *name; int H, G; } cases[] = {{"MHA", 4, 4}, {"GQA", 4, 2}, {"MQA", 4, 1}};
    for (int ci = 0; ci < 3; ci++) {
        llama_config c = make_cfg(32, 3, cases[ci].H, cases[ci].G, 48, 61, 64);
        model_weights w;
        CHECK(model_init_random(&w, &c, 11 + ci, 0.25f) == 0, "model_init_random");
        char what[64];
        snprintf(what, sizeof what, "%s base", cases[ci].name);
        check_cache_vs_full(what, &w, NULL, 24);
        trainable ad;
        if (make_adapter(&ad, &c, 3, 2, GATE_TANH, 0.8f, 5 + ci) == 0) {
            snprintf(what, sizeof what, "%s adapter tanh", cases[ci].name);
            check_cache_vs_full(what, &w, &ad, 24);
            trainable_free(&ad);
        }
        if (make_adapter(&ad, &c, 4, 3, GATE_IDENTITY, 0.8f, 9 + ci) == 0) {
            snprintf(what, sizeof what, "%s adapter identity, all", cases[ci].name);
            check_cache_vs_full(what, &w, &ad, 16);
            trainable_free(&ad);
        }
        model_free(&w);
    }
}

/* The adapter is really in the cached path: non-zero gates change the logits, zero gates do not. */
static void test_zero_gates_generate_exactly_the_base_model(void) {
    char err[512];
    llama_config c = make_cfg(32, 4, 4, 2, 48, 61, 64);
    model_weights w;
    CHECK(model_init_random(&w, &c, 3, 0.25f) == 0, "model_init_random");
    trainable zero, live;
    CHECK(trainable_adapter_init(&zero, &c, 5, 3, GATE_TANH, 17, err, sizeof err) == 0, "%s", err);
    CHECK(make_adapter(&live, &c, 5, 3, GATE_TANH, 0.8f, 17) == 0, "adapter");
    gen_engine *eb = gen_engine_new(&w, NULL, 40, err, sizeof err);
    gen_engine *ez = gen_engine_new(&w, &zero, 40, err, sizeof err);
    gen_engine *el = gen_engine_new(&w, &live, 40, err, sizeof err);
    CHECK(eb && ez && el, "engines: %s", err);
    if (!eb || !ez || !el) goto out;
    gen_sampler s;
    gen_sampler_init(&s, c.vocab_size, 0.0f, 0.75f, 0);
    int gb[30], gz[30], gl[30];
    int nb = gen_generate(eb, PROMPT, N_PROMPT, 30, -1, &s, gb, NULL, NULL, NULL, err, sizeof err);
    int nz = gen_generate(ez, PROMPT, N_PROMPT, 30, -1, &s, gz, NULL, NULL, NULL, err, sizeof err);
    int nl = gen_generate(el, PROMPT, N_PROMPT, 30, -1, &s, gl, NULL, NULL, NULL, err, sizeof err);
    CHECK(nb == 30 && nz == 30 && nl == 30, "generated %d %d %d", nb, nz, nl);
    CHECK(!memcmp(gb, gz, sizeof gb), "zero gates: ids differ from the base model");
    /* logits along the same sequence */
    int seq[40];
    memcpy(seq, PROMPT, sizeof PROMPT);
    memcpy(seq + N_PROMPT, gb, 30 * sizeof(int));
    gen_engine_reset(eb);
    gen_engine_reset(ez);
    gen_engine_reset(el);
    double dz = 0, dl = 0;
    for (int i = N_PROMPT; i <= N_PROMPT + 30; i++) {
        int n = i == N_PROMPT ? N_PROMPT : 1, at = i == N_PROMPT ? 0 : i - 1;
        const float *lb = gen_engine_feed(eb, seq + at, n, err, sizeof err);
        const float *lz = gen_engine_feed(ez, seq + at, n, err, sizeof err);
        const float *ll = gen_engine_feed(el, seq + at, n, err, sizeof err);
        if (!lb || !lz || !ll) break;
        dz = fmax(dz, max_abs_diff(lb, lz, c.vocab_size));
        dl = fmax(dl, max_abs_diff(lb, ll, c.vocab_size));
    }
    CHECK(dz == 0.0, "zero gates: logits differ from the base model by %.3g (expected exactly 0)", dz);
    CHECK(dl > 1e-2, "non-zero gates change the logits by only %.3g", dl);
    printf("  zero gates: max diff %.3g; non-zero gates: max diff %.3g\n", dz, dl);
    gen_sampler_free(&s);
out:
    gen_engine_free(eb);
    gen_engine_free(ez);
    gen_engine_free(el);
    trainable_free(&zero);
    trainable_free(&live);
    model_free(&w);
}

static void test_batched_prompt_equals_token_by_token(void) {
    char err[512];
    llama_config c = make_cfg(48, 3, 6, 2, 64, 70, 0); /* max_seq_len unknown */
    model_weights w;
    CHECK(model_init_random(&w, &c, 21, 0.25f) == 0, "model_init_random");
    trainable ad;
    CHECK(make_adapter(&ad, &c, 4, 2, GATE_TANH, 1.0f, 4) == 0, "adapter");
    int prompt[17];
    for (int i = 0; i < 17; i++) prompt[i] = (i * 13 + 1) % c.vocab_size;
    gen_engine *ea = gen_engine_new(&w, &ad, 40, err, sizeof err);
    gen_engine *eb = gen_engine_new(&w, &ad, 40, err, sizeof err);
    CHECK(ea && eb, "engines: %s", err);
    if (ea && eb) {
        const float *la = gen_engine_feed(ea, prompt, 17, err, sizeof err);
        const float *lb = NULL;
        for (int i = 0; i < 17; i++) lb = gen_engine_feed(eb, prompt + i, 1, err, sizeof err);
        CHECK(la && lb && gen_engine_pos(ea) == 17 && gen_engine_pos(eb) == 17, "feed: %s", err);
        double d = la && lb ? max_abs_diff(la, lb, c.vocab_size) : 1e9;
        int ida = gen_argmax(la, c.vocab_size), idb = gen_argmax(lb, c.vocab_size);
        CHECK(d <= 1e-4, "batched vs one by one: prompt logits differ by %.3g", d);
        double worst = d;
        size_t wsa[1] = {0}, wsb[1] = {0};
        int diff_ids = ida != idb;
        for (int step = 0; step < 20 && la && lb; step++) {
            la = gen_engine_feed(ea, &ida, 1, err, sizeof err);
            lb = gen_engine_feed(eb, &idb, 1, err, sizeof err);
            if (!la || !lb) break;
            worst = fmax(worst, max_abs_diff(la, lb, c.vocab_size));
            if (step == 0) {
                wsa[0] = gen_engine_work_bytes(ea);
                wsb[0] = gen_engine_work_bytes(eb);
            }
            ida = gen_argmax(la, c.vocab_size);
            idb = gen_argmax(lb, c.vocab_size);
            diff_ids += ida != idb;
        }
        CHECK(la && lb, "continuation: %s", err);
        /* decoding runs in constant memory: the workspace after the 20 steps is what it was after the first */
        CHECK(wsa[0] > 0 && wsa[0] == gen_engine_work_bytes(ea) && wsb[0] > 0 && wsb[0] == gen_engine_work_bytes(eb),
              "workspace grew while decoding: batched %zu -> %zu, one by one %zu -> %zu bytes", wsa[0],
              gen_engine_work_bytes(ea), wsb[0], gen_engine_work_bytes(eb));
        CHECK(worst <= 1e-4 && diff_ids == 0, "continuation: logit diff %.3g, %d different ids", worst, diff_ids);
        printf("  batched prompt of 17 + 20 steps: max |logit diff| %.2e\n", worst);
        /* the engine's cache is full at 40: one more position is refused with a message */
        int ids[3] = {1, 2, 3};
        CHECK(gen_engine_feed(ea, ids, 3, err, sizeof err) != NULL && gen_engine_pos(ea) == 40, "fill to 40: %s", err);
        err[0] = 0;
        CHECK(gen_engine_feed(ea, ids, 1, err, sizeof err) == NULL && strstr(err, "40"),
              "overflow accepted or unnamed: '%s'", err);
        gen_engine_reset(ea);
        int bad = c.vocab_size;
        err[0] = 0;
        CHECK(gen_engine_feed(ea, &bad, 1, err, sizeof err) == NULL && strstr(err, "70"),
              "id == vocab accepted or unnamed: '%s'", err);
    }
    gen_engine_free(ea);
    gen_engine_free(eb);
    /* engine size checks: above a known max_seq_len is refused */
    llama_config c2 = make_cfg(16, 1, 2, 2, 16, 10, 8);
    model_weights w2;
    CHECK(model_init_random(&w2, &c2, 1, 0.1f) == 0, "model_init_random");
    gen_engine *e9 = gen_engine_new(&w2, NULL, 9, err, sizeof err);
    CHECK(e9 == NULL && strstr(err, "max_seq_len 8"), "cache above max_seq_len accepted: '%s'", e9 ? "" : err);
    gen_engine_free(e9);
    model_free(&w2);
    trainable_free(&ad);
    model_free(&w);
}

static int stop_after_3(void *ctx, const int *ids, int n) {
    (void)ids;
    ++*(int *)ctx;
    return n == 3;
}

static void test_generation_stops_at_eos_max_new_and_cache_end(void) {
    char err[512];
    llama_config c = make_cfg(32, 2, 4, 2, 48, 61, 64);
    model_weights w;
    CHECK(model_init_random(&w, &c, 8, 0.25f) == 0, "model_init_random");
    gen_engine *e = gen_engine_new(&w, NULL, N_PROMPT + 12, err, sizeof err);
    CHECK(e != NULL, "engine: %s", err);
    if (!e) {
        model_free(&w);
        return;
    }
    gen_sampler s;
    gen_sampler_init(&s, c.vocab_size, 0.0f, 0.75f, 0);
    int ref[12], out[40];
    gen_stats st;
    int n = gen_generate(e, PROMPT, N_PROMPT, 40, -1, &s, ref, NULL, NULL, &st, err, sizeof err);
    CHECK(n == 12 && !st.hit_eos && st.n_decode == 11, "cache end: generated %d, want 12 (cache of prompt + 12)", n);
    n = gen_generate(e, PROMPT, N_PROMPT, 5, -1, &s, out, NULL, NULL, &st, err, sizeof err);
    CHECK(n == 5 && !memcmp(out, ref, 5 * sizeof(int)), "max_new 5: generated %d", n);
    /* eos = the 4th greedy id: generation ends at its first occurrence, eos included */
    int first = 0;
    while (ref[first] != ref[3]) first++;
    n = gen_generate(e, PROMPT, N_PROMPT, 40, ref[3], &s, out, NULL, NULL, &st, err, sizeof err);
    CHECK(n == first + 1 && out[n - 1] == ref[3] && st.hit_eos, "eos %d: generated %d, want %d ending with eos",
          ref[3], n, first + 1);
    int calls = 0;
    n = gen_generate(e, PROMPT, N_PROMPT, 40, -1, &s, out, stop_after_3, &calls, &st, err, sizeof err);
    CHECK(n == 3 && calls == 3, "callback stop: %d generated, %d calls", n, calls);
    int big[80];
    for (int i = 0; i < 80; i++) big[i] = 1;
    err[0] = 0;
    n = gen_generate(e, big, N_PROMPT + 13, 4, -1, &s, out, NULL, NULL, &st, err, sizeof err);
    CHECK(n == -1 && err[0], "prompt longer than the cache accepted (%d)", n);
    gen_sampler_free(&s);
    gen_engine_free(e);
    model_free(&w);
}

/* ---------------------------------------------------------------- sampler */

/* logits = log(p) so that temperature 1 reproduces p */
static void logits_of(const float *p, float *lg, int V) {
    for (int i = 0; i < V; i++) lg[i] = logf(p[i]);
}

static void test_sampler_top_p_picks_only_inside_the_nucleus(void) {
    /* sorted: 0.5 (id 1), 0.2 (id 3), 0.15 (id 4), 0.1 (id 2), 0.05 (id 0) */
    const float p[5] = {0.05f, 0.5f, 0.1f, 0.2f, 0.15f};
    float lg[5];
    logits_of(p, lg, 5);
    struct { float top_p; int in[5]; } cases[] = {
        {0.6f, {0, 1, 0, 1, 0}},   /* mass before id 4 is 0.7 > 0.6 */
        {0.75f, {0, 1, 0, 1, 1}},  /* 0.7 <= 0.75 keeps id 4; 0.85 drops id 2 */
        {0.3f, {0, 1, 0, 0, 0}},   /* 0.5 > 0.3: only the top token */
        {1.0f, {1, 1, 1, 1, 1}},
    };
    for (int ci = 0; ci < 4; ci++) {
        gen_sampler s;
        CHECK(gen_sampler_init(&s, 5, 1.0f, cases[ci].top_p, 123) == 0, "init");
        int count[5] = {0}, outside = 0, N = 4000;
        for (int i = 0; i < N; i++) {
            int id = gen_sample(&s, lg);
            if (id < 0 || id >= 5 || !cases[ci].in[id]) outside++;
            else count[id]++;
        }
        CHECK(outside == 0, "top_p %.2f: %d draws outside the nucleus", (double)cases[ci].top_p, outside);
        double kept = 0;
        for (int i = 0; i < 5; i++) kept += cases[ci].in[i] ? p[i] : 0;
        for (int i = 0; i < 5; i++) {
            double want = cases[ci].in[i] ? p[i] / kept : 0, got = (double)count[i] / N;
            CHECK(fabs(got - want) <= 0.03, "top_p %.2f: id %d drawn %.3f of the time, want %.3f",
                  (double)cases[ci].top_p, i, got, want);
        }
        gen_sampler_free(&s);
    }
    /* temperature 0.5 squares the odds: 0.25/0.3175 = 0.79 > 0.6, so top_p 0.6 keeps id 1 alone */
    gen_sampler s;
    gen_sampler_init(&s, 5, 0.5f, 0.6f, 9);
    int others = 0;
    for (int i = 0; i < 500; i++) others += gen_sample(&s, lg) != 1;
    CHECK(others == 0, "temperature 0.5, top_p 0.6: %d draws other than the top token", others);
    gen_sampler_free(&s);
    /* a high temperature flattens: id 0 (p 0.05) gets (0.05^0.5)/sum(p^0.5) at temperature 2 */
    gen_sampler_init(&s, 5, 2.0f, 1.0f, 10);
    int c0 = 0;
    for (int i = 0; i < 4000; i++) c0 += gen_sample(&s, lg) == 0;
    double z = 0;
    for (int i = 0; i < 5; i++) z += sqrt(p[i]);
    CHECK(fabs(c0 / 4000.0 - sqrt(0.05) / z) <= 0.03, "temperature 2: id 0 drawn %.3f, want %.3f", c0 / 4000.0,
          sqrt(0.05) / z);
    gen_sampler_free(&s);
    /* temperature 0: argmax, lowest id on ties */
    gen_sampler_init(&s, 5, 0.0f, 0.75f, 1);
    CHECK(gen_sample(&s, lg) == 1, "greedy picks %d", gen_sample(&s, lg));
    float tie[5] = {0, 3, 1, 3, 2};
    CHECK(gen_sample(&s, tie) == 1, "greedy tie picks %d, want the lowest id 1", gen_sample(&s, tie));
    gen_sampler_free(&s);
}

static void test_sampler_is_deterministic_for_a_seed(void) {
    int V = 300;
    float *lg = malloc((size_t)V * sizeof(float));
    ag_rng r;
    ag_rng_seed(&r, 77);
    for (int i = 0; i < V; i++) lg[i] = 2.0f * (float)ag_rng_normal(&r);
    gen_sampler a, b, c;
    gen_sampler_init(&a, V, 0.8f, 0.9f, 42);
    gen_sampler_init(&b, V, 0.8f, 0.9f, 42);
    gen_sampler_init(&c, V, 0.8f, 0.9f, 43);
    int same_ab = 1, same_ac = 1, distinct = 0, seen[300] = {0};
    for (int i = 0; i < 200; i++) {
        int x = gen_sample(&a, lg), y = gen_sample(&b, lg), z = gen_sample(&c, lg);
        same_ab &= x == y;
        same_ac &= x == z;
        if (!seen[x]++) distinct++;
    }
    CHECK(same_ab, "same seed, different draws");
    CHECK(!same_ac, "seeds 42 and 43 give the same 200 draws");
    CHECK(distinct > 3, "only %d distinct tokens in 200 draws at temperature 0.8", distinct);
    gen_sampler_free(&a);
    gen_sampler_free(&b);
    gen_sampler_free(&c);
    free(lg);
}

/* The shortcut (only tokens above (1-top_p)/(V-1) are sorted) against a brute-force nucleus. */
static int cmp_desc(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

static void test_sampler_shortcut_matches_brute_force_nucleus(void) {
    int V = 2000;
    float *lg = malloc((size_t)V * sizeof(float));
    double *p = malloc((size_t)V * sizeof(double)), *srt = malloc((size_t)V * sizeof(double));
    const float tps[3] = {0.5f, 0.9f, 0.99f};
    for (int trial = 0; trial < 6; trial++) {
        ag_rng r;
        ag_rng_seed(&r, 500 + trial);
        for (int i = 0; i < V; i++) lg[i] = (float)(trial + 1) * (float)ag_rng_normal(&r);
        float top_p = tps[trial % 3];
        double mx = -1e30, sum = 0;
        for (int i = 0; i < V; i++) mx = fmax(mx, lg[i]);
        for (int i = 0; i < V; i++) sum += p[i] = exp(lg[i] - mx);
        for (int i = 0; i < V; i++) srt[i] = p[i] /= sum;
        qsort(srt, (size_t)V, sizeof(double), cmp_desc);
        double cum = 0, thresh = 0;
        int size = 0;
        for (int i = 0; i < V; i++) {
            if (cum > top_p) break;
            cum += srt[i];
            thresh = srt[i];
            size++;
        }
        gen_sampler s;
        gen_sampler_init(&s, V, 1.0f, top_p, 900 + trial);
        int outside = 0, hits = 0;
        char *seen = calloc((size_t)V, 1);
        for (int i = 0; i < 3000; i++) {
            int id = gen_sample(&s, lg);
            if (p[id] < thresh * (1 - 1e-5)) outside++;
            if (!seen[id]) hits++;
            seen[id] = 1;
        }
        CHECK(outside == 0, "trial %d (top_p %.2f, nucleus %d): %d draws below the nucleus threshold", trial,
              (double)top_p, size, outside);
        CHECK(size < 3 || hits > 1, "trial %d: nucleus of %d but %d distinct draws", trial, size, hits);
        free(seen);
        gen_sampler_free(&s);
    }
    free(lg);
    free(p);
    free(srt);
}

/* ---------------------------------------------------------------- the binary */


/* Runs `BIN generate --precision f32 ARGS` (the library's exact path, which the ids are compared
 * with); returns the exit status (-1 when it did not exit); stdout and stderr (malloc'ed) into
 * *out / *errt when not NULL. */
static int run_gen(const char *args, char **out, char **errt) {
    size_t n = strlen(args) + 40;
    char *full = malloc(n);
    snprintf(full, n, "generate --precision f32 %s", args);
    int st = test_run_bin(g_dir, full, out, errt);
    free(full);
    return st;
}

/* space-separated ids -> array; returns count (-1 on a non-number) */
static int parse_id_line(const char *s, int *ids, int cap) {
    int n = 0;
    while (s && *s) {
        while (*s == ' ' || *s == '\n') s++;
        if (!*s) break;
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || n == cap) return -1;
        ids[n++] = (int)v;
        s = end;
    }
    return n;
}

static int lib_generate(const model_weights *w, const trainable *ad, const int *prompt, int np, int max_new, int eos,
                        float temp, float top_p, uint64_t seed, int *out) {
    char err[512];
    int max_len = np + max_new;
    if (w->cfg.max_seq_len > 0 && max_len > w->cfg.max_seq_len) max_len = w->cfg.max_seq_len;
    gen_engine *e = gen_engine_new(w, ad, max_len, err, sizeof err);
    if (!e) {
        printf("  engine: %s\n", err);
        return -1;
    }
    gen_sampler s;
    gen_sampler_init(&s, w->cfg.vocab_size, temp, top_p, seed);
    int n = gen_generate(e, prompt, np, max_new, eos, &s, out, NULL, NULL, NULL, err, sizeof err);
    if (n < 0) printf("  generate: %s\n", err);
    gen_sampler_free(&s);
    gen_engine_free(e);
    return n;
}

static void test_cli_greedy_on_stories260K_is_deterministic_and_stops(void) {
    char mp[512];
    if (!test_shared("models/stories260K.bin", mp, sizeof mp)) SKIP("%s absent", mp);
    char args[1024], *o1, *o2, *e1;
    snprintf(args, sizeof args, "--model %s --prompt-ids '' --print-ids --temperature 0 --max-new-tokens 200", mp);
    int s1 = run_gen(args, &o1, &e1);
    int s2 = run_gen(args, &o2, NULL);
    CHECK(s1 == 0 && s2 == 0, "exit status %d %d: %s", s1, s2, e1 ? e1 : "");
    CHECK(o1 && o2 && !strcmp(o1, o2), "two greedy runs differ:\n%s\n%s", o1 ? o1 : "", o2 ? o2 : "");
    int ids[256];
    int n = parse_id_line(o1, ids, 256);
    CHECK(n > 0, "no ids printed: '%s'", o1 ? o1 : "");
    int early_eos = 0, bad = 0;
    for (int i = 0; i < n; i++) {
        bad += ids[i] < 0 || ids[i] >= 512;
        early_eos += ids[i] == 2 && i + 1 < n;
    }
    CHECK(!bad && !early_eos && (n == 200 || (n > 0 && ids[n - 1] == 2)),
          "%d ids (%d out of range, %d eos before the end); want 200 or ending with eos 2", n, bad, early_eos);
    /* golden: the first greedy ids of an independent plain-C llama2.c-style forward (run.c's
     * formulas, double-accumulated matvecs, written for this check outside the project) */
    static const int golden[24] = {461, 461, 401, 401, 401, 461, 378, 455, 473, 456, 435, 299,
                                   362, 409, 283, 264, 283, 452, 288, 13, 431, 431, 431, 431};
    int gm = 0;
    while (gm < 24 && gm < n && ids[gm] == golden[gm]) gm++;
    CHECK(gm == 24, "greedy ids differ from the independent reference at index %d (got %d, want %d)", gm,
          gm < n ? ids[gm] : -1, golden[gm < 24 ? gm : 23]);
    /* the same ids through the library */
    model_weights w;
    char err[512];
    if (model_load(mp, &w, err, sizeof err) == 0) {
        int lib[200], bos = 1;
        int m = lib_generate(&w, NULL, &bos, 1, 200, 2, 0.0f, 0.75f, 0, lib);
        CHECK(m == n && !memcmp(lib, ids, (size_t)(n > 0 ? n : 0) * sizeof(int)), "library gives %d ids, binary %d", m,
              n);
        model_free(&w);
    } else {
        CHECK(0, "model_load: %s", err);
    }
    printf("  stories260K greedy from bos: %d tokens, %s; first ids: %d %d %d %d\n", n,
           n > 0 && ids[n - 1] == 2 ? "ended at eos" : "hit the limit", ids[0], n > 1 ? ids[1] : -1, n > 2 ? ids[2] : -1,
           n > 3 ? ids[3] : -1);
    /* the model's max_seq_len (512) ends a long generation: prompt + generated <= 512 */
    char *o3 = NULL, *e3 = NULL;
    snprintf(args, sizeof args, "--model %s --prompt-ids '' --print-ids --temperature 1 --top-p 1 --seed 3 "
             "--max-new-tokens 1000", mp);
    int s3 = run_gen(args, &o3, &e3);
    int *all = malloc(1100 * sizeof(int));
    int n3 = parse_id_line(o3, all, 1100);
    CHECK(s3 == 0 && (n3 == 511 || (n3 > 0 && n3 < 511 && all[n3 - 1] == 2)),
          "--max-new-tokens 1000 on a 512-position model: status %d, %d ids (want 511, or fewer ending at eos): %s", s3,
          n3, e3 ? e3 : "");
    printf("  sampling with --max-new-tokens 1000: %d ids%s\n", n3, n3 > 0 && all[n3 - 1] == 2 ? " (eos)" : "");
    free(o3);
    free(e3);
    /* a prompt that fills max_seq_len leaves no room: one line, exit 1 */
    char *big = malloc(512 * 4 + 16), *p = big;
    for (int i = 0; i < 511; i++) p += sprintf(p, i ? ",%d" : "%d", 5);
    char *args2 = malloc(strlen(big) + 1024);
    sprintf(args2, "--model %s --prompt-ids %s --print-ids --temperature 0", mp, big);
    s3 = run_gen(args2, NULL, &e3);
    CHECK(s3 == 1 && test_count_lines(e3) == 1 && strstr(e3, "max_seq_len"), "512-token prompt: status %d [%s]", s3,
          e3 ? e3 : "");
    free(e3);
    free(args2);
    free(big);
    free(all);
    if (e1 && strstr(e1, "tok/s")) {
        const char *l = strstr(e1, "generate: prompt");
        if (l) printf("  %.*s\n", (int)strcspn(l, "\n"), l);
    }
    free(o1);
    free(o2);
    free(e1);
}

/* ---- a trained tokenizer + a random model of its vocabulary, saved as llama2.c ---- */

static const char *CORPUS[] = {
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "Below is an instruction that describes a task, paired with an input that provides further context.",
    "### Instruction:", "### Input:", "### Response:",
    "Name three colors. Red, green and blue are colors.",
    "What is the capital of France? The capital of France is Paris.",
    "Write a short poem about the sea and the sky.",
    "List five fruits: apple, banana, cherry, grape, orange.",
    "Count from 1 to 10: 1 2 3 4 5 6 7 8 9 10.",
};

static tok *g_tok;
static char g_tok_path[600], g_model_path[600], g_adapter_path[600];
static model_weights g_w;
static trainable g_ad;
static int g_ready;

static int setup_text_model(void) {
    char err[512], corpus[512], prefix[512];
    path_in(corpus, sizeof corpus, "corpus.txt");
    FILE *f = fopen(corpus, "w");
    if (!f) return -1;
    for (int rep = 0; rep < 20; rep++)
        for (size_t i = 0; i < sizeof CORPUS / sizeof *CORPUS; i++) fprintf(f, "%s\n", CORPUS[i]);
    fclose(f);
    path_in(prefix, sizeof prefix, "spm");
    if (tok_train(corpus, prefix, 320, "bpe", err, sizeof err)) {
        CHECK(0, "tok_train: %s", err);
        return -1;
    }
    snprintf(g_tok_path, sizeof g_tok_path, "%s.model", prefix);
    g_tok = tok_load(g_tok_path, err, sizeof err);
    CHECK(g_tok != NULL, "tok_load: %s", err);
    if (!g_tok) return -1;
    llama_config c = make_cfg(32, 3, 4, 2, 64, tok_vocab_size(g_tok), 256);
    model_weights rw;
    if (model_init_random(&rw, &c, 99, 0.3f)) return -1;
    path_in(g_model_path, sizeof g_model_path, "tiny.bin");
    int rc = model_save_llama2c(g_model_path, &rw, err, sizeof err);
    model_free(&rw);
    CHECK(rc == 0, "model_save_llama2c: %s", err);
    if (rc) return -1;
    rc = model_load(g_model_path, &g_w, err, sizeof err);
    CHECK(rc == 0, "model_load: %s", err);
    if (rc) return -1;
    if (make_adapter(&g_ad, &g_w.cfg, 4, 2, GATE_TANH, 1.5f, 31)) return -1;
    adapter_data a = trainable_adapter_view(&g_ad);
    path_in(g_adapter_path, sizeof g_adapter_path, "adapter.safetensors");
    rc = adapter_export(g_adapter_path, EXPORT_SAFETENSORS, &a, err, sizeof err);
    CHECK(rc == 0, "adapter_export: %s", err);
    if (rc) return -1;
    g_ready = 1;
    return 0;
}

/* [bos] + encode(text) */
static int encode_bos(const char *text, int *ids, int cap) {
    char err[256];
    int *v, n;
    if (tok_encode(g_tok, text, &v, &n, err, sizeof err) || n + 1 > cap) return -1;
    ids[0] = tok_bos(g_tok);
    memcpy(ids + 1, v, (size_t)n * sizeof(int));
    free(v);
    return n + 1;
}

static void test_cli_instruction_prompt_and_text_mode_match_the_library(void) {
    if (setup_text_model()) SKIP("could not build the test tokenizer/model (see the failures above)");
    const char *instr = "Name three colors.";
    char *text = alpaca_prompt(instr, "");
    int prompt[512], lib[64], ids[64];
    int np = encode_bos(text, prompt, 512);
    free(text);
    CHECK(np > 10, "encoded prompt of %d tokens", np);
    int eos = tok_eos(g_tok);
    int m = lib_generate(&g_w, NULL, prompt, np, 24, eos, 0.0f, 0.75f, 0, lib);
    char args[4096], *out = NULL, *errt = NULL;
    /* --instruction, ids */
    snprintf(args, sizeof args, "--model %s --tokenizer %s --instruction '%s' --temperature 0 --max-new-tokens 24 "
             "--print-ids", g_model_path, g_tok_path, instr);
    int st = run_gen(args, &out, &errt);
    int n = parse_id_line(out, ids, 64);
    CHECK(st == 0 && n == m && m > 0 && !memcmp(ids, lib, (size_t)m * sizeof(int)),
          "--instruction: status %d, %d ids vs library %d: %s", st, n, m, errt ? errt : "");
    free(out);
    free(errt);
    /* text mode prints the decoded ids (eos decodes to nothing) and a newline */
    snprintf(args, sizeof args, "--model %s --tokenizer %s --instruction '%s' --temperature 0 --max-new-tokens 24",
             g_model_path, g_tok_path, instr);
    st = run_gen(args, &out, &errt);
    char *want = tok_decode(g_tok, lib, m > 0 && lib[m - 1] == eos ? m - 1 : m);
    size_t wl = want ? strlen(want) : 0;
    CHECK(st == 0 && out && want && strlen(out) == wl + 1 && !strncmp(out, want, wl) && out[wl] == '\n',
          "text mode: status %d, printed [%s], want [%s]", st, out ? out : "", want ? want : "");
    CHECK(errt && strstr(errt, "tok/s") && strstr(errt, "decode"), "no speed report on stderr: [%s]", errt ? errt : "");
    free(want);
    free(out);
    free(errt);
    /* --instruction with --input uses the input template */
    char *t2 = alpaca_prompt("Translate", "the sea");
    np = encode_bos(t2, prompt, 512);
    free(t2);
    m = lib_generate(&g_w, NULL, prompt, np, 10, eos, 0.0f, 0.75f, 0, lib);
    snprintf(args, sizeof args, "--model %s --tokenizer %s --instruction Translate --input 'the sea' --temperature 0 "
             "--max-new-tokens 10 --print-ids", g_model_path, g_tok_path);
    st = run_gen(args, &out, NULL);
    n = parse_id_line(out, ids, 64);
    CHECK(st == 0 && n == m && !memcmp(ids, lib, (size_t)(m > 0 ? m : 0) * sizeof(int)),
          "--input: status %d, %d ids vs %d", st, n, m);
    free(out);
    /* --prompt is raw text, no template */
    np = encode_bos("The capital of France", prompt, 512);
    m = lib_generate(&g_w, NULL, prompt, np, 10, eos, 0.0f, 0.75f, 0, lib);
    snprintf(args, sizeof args, "--model %s --tokenizer %s --prompt 'The capital of France' --temperature 0 "
             "--max-new-tokens 10 --print-ids", g_model_path, g_tok_path);
    st = run_gen(args, &out, NULL);
    n = parse_id_line(out, ids, 64);
    CHECK(st == 0 && n == m && !memcmp(ids, lib, (size_t)(m > 0 ? m : 0) * sizeof(int)),
          "--prompt: status %d, %d ids vs %d", st, n, m);
    free(out);
}

static void test_cli_adapter_prompt_file_and_seeded_sampling(void) {
    if (!g_ready) SKIP("test tokenizer/model not built");
    int eos = tok_eos(g_tok), prompt[512], lib[64], base[64], ids[64];
    char *text = alpaca_prompt("Write a short poem.", "");
    int np = encode_bos(text, prompt, 512);
    free(text);
    int m = lib_generate(&g_w, &g_ad, prompt, np, 20, eos, 0.0f, 0.75f, 0, lib);
    int mb = lib_generate(&g_w, NULL, prompt, np, 20, eos, 0.0f, 0.75f, 0, base);
    CHECK(m != mb || memcmp(lib, base, (size_t)(m > 0 ? m : 0) * sizeof(int)),
          "the adapter (gates 1.5*N(0,1)) does not change greedy generation");
    char args[4096], *out = NULL, *errt = NULL;
    snprintf(args, sizeof args, "--model %s --tokenizer %s --adapter %s --instruction 'Write a short poem.' "
             "--temperature 0 --max-new-tokens 20 --print-ids", g_model_path, g_tok_path, g_adapter_path);
    int st = run_gen(args, &out, &errt);
    int n = parse_id_line(out, ids, 64);
    CHECK(st == 0 && n == m && !memcmp(ids, lib, (size_t)(m > 0 ? m : 0) * sizeof(int)),
          "--adapter: status %d, %d ids vs library %d: %s", st, n, m, errt ? errt : "");
    free(out);
    free(errt);
    /* a run directory: its newest training checkpoint's adapter */
    char run[600], ck[700];
    path_in(run, sizeof run, "run");
    mkdir(run, 0755);
    train_ckpt tc;
    memset(&tc, 0, sizeof tc);
    snprintf(tc.method, sizeof tc.method, "adapter");
    tc.n_params = g_ad.n;
    tc.params = g_ad.p;
    tc.adam_m = calloc(g_ad.n, sizeof(float));
    tc.adam_v = calloc(g_ad.n, sizeof(float));
    tc.adapter = trainable_adapter_view(&g_ad);
    tc.step = 7;
    tc.config_json = (char *)"{}";
    ckpt_path(run, 7, ck, sizeof ck);
    char err[512];
    int rc = ckpt_save(ck, &tc, err, sizeof err);
    CHECK(rc == 0, "ckpt_save: %s", err);
    free(tc.adam_m);
    free(tc.adam_v);
    snprintf(args, sizeof args, "--model %s --tokenizer %s --adapter %s --instruction 'Write a short poem.' "
             "--temperature 0 --max-new-tokens 20 --print-ids", g_model_path, g_tok_path, run);
    st = run_gen(args, &out, &errt);
    n = parse_id_line(out, ids, 64);
    CHECK(st == 0 && n == m && !memcmp(ids, lib, (size_t)(m > 0 ? m : 0) * sizeof(int)),
          "--adapter RUN_DIR: status %d, %d ids vs library %d: %s", st, n, m, errt ? errt : "");
    free(out);
    free(errt);
    /* seeded sampling: same seed same output, and the library's draws */
    int ls = lib_generate(&g_w, &g_ad, prompt, np, 20, eos, 0.9f, 0.9f, 5, lib);
    snprintf(args, sizeof args, "--model %s --tokenizer %s --adapter %s --instruction 'Write a short poem.' "
             "--temperature 0.9 --top-p 0.9 --seed 5 --max-new-tokens 20 --print-ids", g_model_path, g_tok_path,
             g_adapter_path);
    char *o2 = NULL;
    st = run_gen(args, &out, NULL);
    int st2 = run_gen(args, &o2, NULL);
    n = parse_id_line(out, ids, 64);
    CHECK(st == 0 && st2 == 0 && out && o2 && !strcmp(out, o2), "seeded sampling differs between runs");
    CHECK(n == ls && !memcmp(ids, lib, (size_t)(ls > 0 ? ls : 0) * sizeof(int)), "sampling: binary %d ids, library %d",
          n, ls);
    free(out);
    free(o2);
    /* --prompt-file: one header and one generation per non-empty line, each as --instruction */
    char pf[600];
    path_in(pf, sizeof pf, "prompts.txt");
    FILE *f = fopen(pf, "w");
    fputs("Name three colors.\n\nWrite a short poem.\n", f);
    fclose(f);
    snprintf(args, sizeof args, "--model %s --tokenizer %s --adapter %s --prompt-file %s --temperature 0 "
             "--max-new-tokens 20 --print-ids", g_model_path, g_tok_path, g_adapter_path, pf);
    st = run_gen(args, &out, &errt);
    CHECK(st == 0 && out, "--prompt-file: status %d: %s", st, errt ? errt : "");
    const char *h1 = out ? strstr(out, "[1/2] Name three colors.") : NULL;
    const char *h2 = out ? strstr(out, "[2/2] Write a short poem.") : NULL;
    CHECK(h1 && h2 && h2 > h1, "--prompt-file headers missing: [%s]", out ? out : "");
    if (h2) {
        const char *body = strchr(h2, '\n');
        n = parse_id_line(body, ids, 64);
        int lib2[64];
        int m2 = lib_generate(&g_w, &g_ad, prompt, np, 20, eos, 0.0f, 0.75f, 0, lib2);
        CHECK(n == m2 && !memcmp(ids, lib2, (size_t)(m2 > 0 ? m2 : 0) * sizeof(int)),
              "--prompt-file second prompt differs from --instruction");
    }
    free(out);
    free(errt);
}

static void test_cli_bad_input_gives_one_line_and_nonzero_exit(void) {
    char mp[600], args[2048], *errt = NULL;
    if (g_ready) snprintf(mp, sizeof mp, "%s", g_model_path);
    else if (!test_shared("models/stories260K.bin", mp, sizeof mp)) SKIP("no model to run against");
    int V = 0;
    {
        model_weights w;
        char err[512];
        if (model_load(mp, &w, err, sizeof err) == 0) {
            V = w.cfg.vocab_size;
            model_free(&w);
        }
    }
    struct { const char *what; char args[1200]; int want; } cases[6];
    int nc = 0;
    cases[nc].what = "missing --model";
    snprintf(cases[nc].args, sizeof cases[nc].args, "--prompt-ids 1 --print-ids");
    cases[nc++].want = 2;
    cases[nc].what = "model file missing";
    snprintf(cases[nc].args, sizeof cases[nc].args, "--model %s/nope.bin --prompt-ids 1 --print-ids", g_dir);
    cases[nc++].want = 1;
    cases[nc].what = "--prompt-ids with a non-number";
    snprintf(cases[nc].args, sizeof cases[nc].args, "--model %s --prompt-ids 1,x,3 --print-ids", mp);
    cases[nc++].want = 2;
    cases[nc].what = "id >= vocab";
    snprintf(cases[nc].args, sizeof cases[nc].args, "--model %s --prompt-ids 1,%d --print-ids", mp, V);
    cases[nc++].want = 1;
    cases[nc].what = "bad --temperature";
    snprintf(cases[nc].args, sizeof cases[nc].args, "--model %s --prompt-ids 1 --print-ids --temperature abc", mp);
    cases[nc++].want = 2;
    cases[nc].what = "adapter file missing";
    snprintf(cases[nc].args, sizeof cases[nc].args, "--model %s --prompt-ids 1 --print-ids --adapter %s/none.safetensors",
             mp, g_dir);
    cases[nc++].want = 1;
    for (int i = 0; i < nc; i++) {
        int st = run_gen(cases[i].args, NULL, &errt);
        CHECK(st == cases[i].want && test_count_lines(errt) == 1, "%s: status %d (want %d), stderr [%s]", cases[i].what, st,
              cases[i].want, errt ? errt : "");
        if (i == 3) CHECK(errt && strstr(errt, "vocabulary"), "id >= vocab: message [%s]", errt ? errt : "");
        free(errt);
    }
    /* no tokenizer for text output */
    snprintf(args, sizeof args, "--model %s --prompt 'hello'", mp);
    int st = run_gen(args, NULL, &errt);
    CHECK(st == 2 && test_count_lines(errt) == 1 && strstr(errt, "--tokenizer"), "missing --tokenizer: status %d [%s]", st,
          errt ? errt : "");
    free(errt);
}

/* ---------------------------------------------------------------- main */


int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/test_generate_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_kv_cache_greedy_equals_full_recompute_mha_and_gqa);
    RUN(test_zero_gates_generate_exactly_the_base_model);
    RUN(test_batched_prompt_equals_token_by_token);
    RUN(test_generation_stops_at_eos_max_new_and_cache_end);
    RUN(test_sampler_top_p_picks_only_inside_the_nucleus);
    RUN(test_sampler_is_deterministic_for_a_seed);
    RUN(test_sampler_shortcut_matches_brute_force_nucleus);
    RUN(test_cli_greedy_on_stories260K_is_deterministic_and_stops);
    RUN(test_cli_instruction_prompt_and_text_mode_match_the_library);
    RUN(test_cli_adapter_prompt_file_and_seeded_sampling);
    RUN(test_cli_bad_input_gives_one_line_and_nonzero_exit);
    if (g_ready) {
        trainable_free(&g_ad);
        model_free(&g_w);
    }
    tok_free(g_tok);
    test_rmtree(g_dir);
    return TEST_MAIN_END("test_generate");
}
