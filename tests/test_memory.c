/* The memory plan (trainer/memory.h) against what the trainer really takes: the predicted
 * activation bytes vs the step arena's high-water mark of a real forward + backward, with and
 * without recomputation, adapter and full mode, MHA and GQA, few and many labels; and the size
 * parser. The 7B-shape check against peak RSS is the bench probe (bench/probe_7b.sh). */
#include <string.h>

#include "tests/test.h"
#include "trainer/llama.h"
#include "trainer/memory.h"

typedef struct shape {
    int dim, hidden, heads, kv_heads, vocab, layers, adapted, tokens, seqs, label_pct, full;
} shape;

/* Arena high-water of one forward + backward, and the plan's figure for it. */
static void measure(const shape *s, int recompute, double *measured, double *planned) {
    llama_config c = {.dim = s->dim, .n_layers = s->layers, .n_heads = s->heads, .n_kv_heads = s->kv_heads,
                      .hidden_dim = s->hidden, .vocab_size = s->vocab, .max_seq_len = 4096, .norm_eps = 1e-5f,
                      .rope_theta = 10000.0f, .tied = 0};
    model_weights w;
    CHECK(model_init_random(&w, &c, 1, 0.02f) == 0, "random model");
    trainable tr;
    char err[256];
    int K = 10;
    if (s->full) CHECK(trainable_full_init(&tr, &w, err, sizeof err) == 0, "%s", err);
    else CHECK(trainable_adapter_init(&tr, &c, K, s->adapted, AG_GATE_TANH, 1, err, sizeof err) == 0, "%s", err);
    int T = s->tokens, per = T / s->seqs, n_label = 0;
    int *ids = malloc(sizeof(int) * T), *tg = malloc(sizeof(int) * T), *pos = malloc(sizeof(int) * T);
    int off[65], ex[64];
    for (int q = 0, t = 0; q < s->seqs; q++) {
        off[q] = t;
        ex[q] = q;
        for (int i = 0; i < per; i++, t++) {
            ids[t] = 1 + t % (c.vocab_size - 1);
            pos[t] = i;
        }
    }
    off[s->seqs] = T;
    for (int i = 0; i < T; i++) {
        tg[i] = i % 100 < s->label_pct ? 1 + (i * 7) % (c.vocab_size - 1) : 0;
        n_label += tg[i] != 0;
    }
    microbatch mb = {s->seqs, T, ids, tg, pos, off, ex, n_label};
    ag_arena a;
    ag_arena_init(&a, 1 << 16);
    ag_tape t;
    ag_tape_init(&t, &a);
    t.checkpoint = recompute;
    trainable_zero_grad(&tr);
    ag_tensor *loss = llama_loss(&t, &w, s->full ? NULL : &tr, &mb, NULL);
    ag_backward(&t, loss, 1.0f);
    *measured = (double)a.high;
    *planned = mem_activation_bytes(&c, T, n_label, s->full ? c.n_layers : s->adapted, recompute, s->full ? 0 : K);
    ag_tape_free(&t);
    ag_arena_free(&a);
    free(ids);
    free(tg);
    free(pos);
    trainable_free(&tr);
    model_free(&w);
}

static void test_activation_plan_matches_arena(void) {
    const shape shapes[] = {
        {256, 688, 8, 8, 1000, 4, 3, 512, 4, 50, 0},   {256, 688, 8, 8, 1000, 4, 3, 1024, 4, 100, 0},
        {256, 688, 8, 2, 1000, 8, 6, 1024, 4, 50, 0},  {512, 1376, 8, 8, 4000, 4, 3, 1024, 4, 50, 0},
        {512, 1376, 8, 8, 4000, 4, 4, 1024, 2, 20, 0}, {256, 688, 8, 8, 1000, 4, 4, 1024, 2, 50, 1},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int rc = 0; rc < 2; rc++) {
            const shape *s = &shapes[i];
            double got, plan;
            measure(s, rc, &got, &plan);
            double ratio = plan / got;
            printf("  dim %4d hidden %4d H %d G %d vocab %4d, %d of %d layers %s, %4d tokens, %3d%% labelled, recompute %s: "
                   "arena %6.1f MB, plan %6.1f MB (%.3f)\n",
                   s->dim, s->hidden, s->heads, s->kv_heads, s->vocab, s->full ? s->layers : s->adapted, s->layers,
                   s->full ? "(full)" : "adapted", s->tokens, s->label_pct, rc ? "on " : "off", got / 1e6, plan / 1e6, ratio);
            CHECK(ratio > 0.97 && ratio < 1.10, "plan %.0f vs arena %.0f bytes: ratio %.3f outside [0.97, 1.10]", plan, got,
                  ratio);
        }
}

static void test_size_parser(void) {
    double b = -1;
    CHECK(mem_parse_size("auto", &b) == 0 && b == 0, "auto");
    CHECK(mem_parse_size("20G", &b) == 0 && b == 20.0 * 1024 * 1024 * 1024, "20G -> %.0f", b);
    CHECK(mem_parse_size("1.5GiB", &b) == 0 && b == 1.5 * 1024 * 1024 * 1024, "1.5GiB -> %.0f", b);
    CHECK(mem_parse_size("512m", &b) == 0 && b == 512.0 * 1024 * 1024, "512m -> %.0f", b);
    CHECK(mem_parse_size("4096", &b) == 0 && b == 4096, "4096 -> %.0f", b);
    const char *bad[] = {"", "G", "-1G", "0", "12X", "1GiBs", "nan", NULL};
    for (int i = 0; i < 7; i++) CHECK(mem_parse_size(bad[i], &b) != 0, "'%s' must be refused", bad[i]);
    CHECK(mem_parse_size(NULL, &b) != 0, "NULL must be refused");
    char h[32];
    mem_human(h, sizeof h, 1.5 * 1024 * 1024 * 1024);
    CHECK(!strcmp(h, "1.5 GiB"), "human: %s", h);
    double avail = mem_available();
    CHECK(avail > 0, "MemAvailable readable on Linux (%.0f)", avail);
    CHECK(mem_default_budget() < avail, "the default budget keeps a margin");
}

int main(void) {
    RUN(test_activation_plan_matches_arena);
    RUN(test_size_parser);
    return TEST_MAIN_END("test_memory");
}
