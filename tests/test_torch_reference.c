/* End to end against an independent reference (STYLE.md 10): the C trainer's first optimizer
 * steps, its final adapter (or, with --method full, every weight) and its eval loss, compared
 * with bench/peer_torch.py, a plain PyTorch LLaMA-Adapter written apart from the C code, run on
 * the same fixture: a random HF model, a SentencePiece model trained here, Alpaca JSON written
 * here, and the same token ids (the dataset as the C library builds it, written as JSON; the
 * peer re-encodes the data itself with Python sentencepiece when that module is installed).
 *
 * Configurations: A) bf16 weights, untied classifier, grouped-query heads (4 q / 2 kv), tanh
 * gates, batch 2 x accum 2; B) f32 weights, tied classifier, 4/4 heads, identity gates, batch 3;
 * C) --method full on a model shaped as A's. Both sides start from the same adapter (written here, gates
 * non-zero so the prompts learn from the first step), train in file order (--no-shuffle)
 * through the warm-up into the cosine phase; some examples are truncated at max_seq_len and one
 * has no loss token at all.
 *
 * Tolerances: step loss rel 1e-5, lr rel 1e-12 (the same formula in double), adapter and
 * weights abs 1e-5 after 3 AdamW steps (lr 0.05 adapter / 0.002 full), eval loss rel 1e-5.
 * Needs /usr/bin/python3 with torch (Debian python3-torch); SKIPs with the reason otherwise.
 * The binary is $LLAMA_ADAPTER_BIN or build/llama-adapter. */
#include <cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "autograd/rng.h"
#include "checkpoints/adapter_file.h"
#include "checkpoints/model_file.h"
#include "data/alpaca.h"
#include "data/tok.h"
#include "tests/test.h"

#define PY "/usr/bin/python3"
#define PEER "bench/peer_torch.py"

static char dir[256], tok_path[300], data_path[300], tokens_path[300];
static const char *bin;
static int have_torch; /* 1: python3 imports torch; 0: skip with reason */
static char skip_reason[256];


static const char *WORDS[] = {"apple", "river", "stone", "cloud", "green", "table", "music", "light",
                              "paper", "glass", "horse", "bread", "ocean", "chair", "tiger", "honey"};

/* Tokenizer and Alpaca data: 24 examples of varied lengths, with and without input; example 5
 * has a prompt longer than max_seq_len (no loss token); several outputs are cut. */
static int make_data(void) {
    char p[400], err[512];
    snprintf(p, sizeof p, "%s/corpus.txt", dir);
    FILE *f = fopen(p, "w");
    if (!f) return -1;
    ag_rng r;
    ag_rng_seed(&r, 5);
    for (int i = 0; i < 300; i++) {
        const char *a = WORDS[ag_rng_below(&r, 16)], *b = WORDS[ag_rng_below(&r, 16)];
        fprintf(f, "The %s is near the %s, %s %s.\n", a, b, b, a);
        if (i % 3 == 0) /* the templates, so that prompts take few tokens */
            fprintf(f, "Below is an instruction that describes a task%s. Write a response that appropriately completes "
                       "the request.\n\n### Instruction:\nDescribe the %s.\n\n%s### Response:%s\n",
                    i % 2 ? ", paired with an input that provides further context" : "", a, i % 2 ? "### Input:\n" : "", b);
    }
    fclose(f);
    char prefix[400];
    snprintf(prefix, sizeof prefix, "%s/tok", dir);
    if (tok_train(p, prefix, 700, "bpe", err, sizeof err)) {
        printf("  fixture: %s\n", err);
        return -1;
    }
    snprintf(tok_path, sizeof tok_path, "%s/tok.model", dir);
    snprintf(data_path, sizeof data_path, "%s/data.json", dir);
    f = fopen(data_path, "w");
    if (!f) return -1;
    fprintf(f, "[\n");
    for (int i = 0; i < 24; i++) {
        fprintf(f, "%s{\"instruction\": \"Describe the %s", i ? ",\n" : "", WORDS[i % 16]);
        if (i == 5)
            for (int k = 0; k < 40; k++) fprintf(f, " %s", WORDS[(i + k) % 16]);
        fprintf(f, ".\", \"input\": \"");
        if (i % 3 == 0) fprintf(f, "%s and %s", WORDS[(i + 3) % 16], WORDS[(i + 7) % 16]);
        fprintf(f, "\", \"output\": \"");
        int n = 1 + (int)ag_rng_below(&r, 14);
        for (int k = 0; k < n; k++) fprintf(f, "%s%s", k ? " " : "", WORDS[ag_rng_below(&r, 16)]);
        fprintf(f, ".\"}");
    }
    fprintf(f, "\n]\n");
    return fclose(f) ? -1 : 0;
}

/* The dataset as the C library builds it, in the peer's format: [n_prompt, id0, id1, ...]. */
static int write_tokens(int max_seq_len) {
    char err[512];
    tok *t = tok_load(tok_path, err, sizeof err);
    alpaca_set raw = {0};
    dataset d;
    memset(&d, 0, sizeof d);
    if (!t || alpaca_load(data_path, &raw, err, sizeof err) || dataset_build(&d, &raw, t, max_seq_len, err, sizeof err)) {
        printf("  fixture: %s\n", err);
        tok_free(t);
        alpaca_free(&raw);
        return -1;
    }
    snprintf(tokens_path, sizeof tokens_path, "%s/tokens.json", dir);
    int rc = dataset_write_json(&d, t, tok_path, tokens_path, err, sizeof err);
    if (rc) printf("  fixture: %s\n", err);
    printf("  data: %d examples, %d truncated, %d without a loss token\n", d.n, d.n_truncated, d.n_no_loss);
    if (d.n_no_loss < 1 || d.n_truncated < 2) {
        printf("  fixture: expected truncated examples and one without loss tokens\n");
        rc = -1;
    }
    dataset_free(&d);
    alpaca_free(&raw);
    tok_free(t);
    return rc;
}

typedef struct config {
    const char *name;
    int n_kv_heads, tied;
    ag_dtype dtype;
    const char *gate_act;
    int batch, accum;
    const char *method;
    double lr;
} config;

static const config CFGS[] = {
    {"A", 2, 0, AG_BF16, "tanh", 2, 2, "adapter", 0.05},
    {"B", 4, 1, AG_F32, "identity", 3, 1, "adapter", 0.05},
    {"C", 2, 0, AG_BF16, "tanh", 2, 2, "full", 0.002},
};
enum { N_CFG = 3, K_LEN = 3, L_AD = 2, STEPS = 3, MAX_LEN = 64 };

typedef struct outcome {
    int ok;                 /* both sides ran */
    char *c_metrics[STEPS]; /* metrics lines */
    cJSON *py;              /* the peer's record */
    adapter_data c_ad;      /* C's exported adapter (adapter configs) */
    double c_eval;          /* C eval loss of the trained adapter/model */
} outcome;

static outcome OUT[N_CFG];

static double jnum(cJSON *o, const char *k) {
    cJSON *v = cJSON_GetObjectItem(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static double metric(const char *line, const char *key) {
    cJSON *o = cJSON_Parse(line);
    double d = jnum(o, key);
    cJSON_Delete(o);
    return d;
}

/* Builds the model and starting adapter of configuration i, runs both sides. */
static void run_config(int ci) {
    const config *c = &CFGS[ci];
    outcome *o = &OUT[ci];
    char err[512], model[400], init[400], run[400], res[400], p[500];
    tok *t = tok_load(tok_path, err, sizeof err);
    int vocab = t ? tok_vocab_size(t) : 0;
    tok_free(t);
    snprintf(model, sizeof model, "%s/model_%s", dir, c->name);
    llama_config mc = {.dim = 32, .n_layers = 3, .n_heads = 4, .n_kv_heads = c->n_kv_heads, .hidden_dim = 48,
                       .vocab_size = vocab + 3, .max_seq_len = 64, .norm_eps = 1e-5f, .rope_theta = 10000.0f, .tied = c->tied};
    model_weights w;
    if (model_init_random(&w, &mc, 100 + (uint64_t)ci, 0.3f) || model_save_hf(model, &w, c->dtype, 0, err, sizeof err)) {
        CHECK(0, "fixture model %s: %s", c->name, err);
        return;
    }
    model_free(&w);
    int full = !strcmp(c->method, "full");
    snprintf(init, sizeof init, "%s/init_%s.safetensors", dir, c->name);
    if (!full) {
        adapter_data a = {K_LEN, L_AD, mc.n_layers, mc.n_heads, mc.dim, strcmp(c->gate_act, "tanh") ? GATE_IDENTITY : GATE_TANH,
                          NULL, NULL};
        float q[L_AD * K_LEN * 32], g[L_AD * 4];
        ag_rng r;
        ag_rng_seed(&r, 77 + (uint64_t)ci);
        for (int i = 0; i < L_AD * K_LEN * 32; i++) q[i] = (float)ag_rng_normal(&r);
        for (int i = 0; i < L_AD * 4; i++) g[i] = (float)(0.5 * ag_rng_normal(&r));
        a.query = q;
        a.gates = g;
        if (adapter_export(init, EXPORT_SAFETENSORS, &a, err, sizeof err)) {
            CHECK(0, "starting adapter: %s", err);
            return;
        }
    }
    /* C: STEPS steps through warm-up (0.2 epoch) into the cosine phase */
    snprintf(run, sizeof run, "%s/run_%s", dir, c->name);
    char common[1200];
    snprintf(common, sizeof common,
             "--batch-size %d --accum-iter %d --max-seq-len %d --epochs 2 --warmup-epochs 0.2 --lr %g --weight-decay 0.02"
             " --gate-act %s --threads 2",
             c->batch, c->accum, MAX_LEN, c->lr, c->gate_act);
    char init_flag[420] = "";
    if (!full) snprintf(init_flag, sizeof init_flag, "--init-adapter %s", init);
    int st = test_sh("%s train --model %s --tokenizer %s --data %s --out %s --method %s %s --no-shuffle --max-steps %d %s --log-every 0 --precision f32"
                " > %s.log 2>&1",
                bin, model, tok_path, data_path, run, c->method, init_flag, STEPS, common, run);
    CHECK(st == 0, "C train (config %s) exit %d, see %s.log", c->name, st, run);
    if (st) return;
    snprintf(p, sizeof p, "%s/metrics.jsonl", run);
    FILE *f = fopen(p, "r");
    char line[4096];
    int n = 0;
    while (f && n < STEPS && fgets(line, sizeof line, f)) o->c_metrics[n++] = strdup(line);
    if (f) fclose(f);
    CHECK(n == STEPS, "%d metrics lines, expected %d", n, STEPS);
    if (n < STEPS) return;
    /* C eval of the result: the exported adapter, or the written model */
    char evalp[500], target[500];
    snprintf(evalp, sizeof evalp, "%s_eval.json", run);
    if (full) {
        snprintf(target, sizeof target, "--model %s/model", run);
    } else {
        char exp_path[500];
        snprintf(exp_path, sizeof exp_path, "%s/final.safetensors", run);
        st = test_sh("%s export --adapter %s --format safetensors --out %s > /dev/null 2>&1", bin, run, exp_path);
        CHECK(st == 0, "export exit %d", st);
        if (st || adapter_import(exp_path, K_LEN, mc.n_layers, mc.n_heads, mc.dim, &o->c_ad, err, sizeof err)) {
            CHECK(0, "reading the exported adapter: %s", err);
            return;
        }
        snprintf(target, sizeof target, "--model %s --adapter %s", model, exp_path);
    }
    st = test_sh("%s eval %s --tokenizer %s --data %s --batch-size 4 --max-seq-len %d --threads 2 --precision f32 > %s 2>/dev/null", bin, target,
            tok_path, data_path, MAX_LEN, evalp);
    char *ev = test_read_file(evalp, NULL);
    o->c_eval = ev ? metric(ev, "loss") : NAN;
    free(ev);
    CHECK(st == 0 && !isnan(o->c_eval), "C eval exit %d", st);
    /* PyTorch */
    snprintf(res, sizeof res, "%s/torch_%s.json", dir, c->name);
    char cmp[500] = "";
    if (full) snprintf(cmp, sizeof cmp, "--compare-model %s/model", run);
    else snprintf(cmp, sizeof cmp, "--init-adapter %s", init);
    st = test_sh(PY " " PEER " check --model %s --tokens %s --data %s --method %s %s --steps %d --eval-batch 4 %s --out %s"
               " > %s/torch_%s.log 2>&1",
            model, tokens_path, data_path, c->method, cmp, STEPS, common, res, dir, c->name);
    CHECK(st == 0, "peer_torch.py check (config %s) exit %d, see %s/torch_%s.log", c->name, st, dir, c->name);
    char *txt = st == 0 ? test_read_file(res, NULL) : NULL;
    o->py = txt ? cJSON_Parse(txt) : NULL;
    free(txt);
    CHECK(o->py != NULL, "peer result %s is not JSON", res);
    o->ok = o->py != NULL;
}

static void setup_all(void) {
    if (test_sh(PY " -c 'import torch' > /dev/null 2>&1") != 0) {
        snprintf(skip_reason, sizeof skip_reason, PY " cannot import torch (install python3-torch: scripts/deps.sh)");
        return;
    }
    if (access(PEER, R_OK) != 0) {
        snprintf(skip_reason, sizeof skip_reason, PEER " not found (tests run from the repository root)");
        return;
    }
    have_torch = 1;
}

static void test_fixture_and_both_sides_run(void) {
    if (!have_torch) SKIP("%s", skip_reason);
    CHECK(access(bin, X_OK) == 0, "binary %s not found: build it (make build/llama-adapter) or set LLAMA_ADAPTER_BIN", bin);
    if (t_cur_failed) return;
    CHECK(make_data() == 0 && write_tokens(MAX_LEN) == 0, "fixture data and tokens in %s", dir);
    if (t_cur_failed) return;
    for (int i = 0; i < N_CFG; i++) run_config(i);
}

static void test_peer_reference_and_packed_styles_agree(void) {
    if (!have_torch) SKIP("%s", skip_reason);
    for (int i = 0; i < N_CFG; i++) {
        if (!OUT[i].ok) continue;
        double d = jnum(OUT[i].py, "ref_vs_opt_rel");
        printf("  config %s: padded full-autograd vs packed PyTorch loss, rel diff %.2e\n", CFGS[i].name, d);
        CHECK(d <= 1e-5, "the peer's two implementations disagree (rel %.3g)", d);
    }
}

static void test_step_losses_and_lr_match_pytorch(void) {
    if (!have_torch) SKIP("%s", skip_reason);
    int compared = 0;
    for (int i = 0; i < N_CFG; i++) {
        if (!OUT[i].ok) continue;
        cJSON *steps = cJSON_GetObjectItem(OUT[i].py, "steps");
        CHECK(cJSON_GetArraySize(steps) == STEPS, "peer steps");
        double worst = 0;
        for (int s = 0; s < STEPS && s < cJSON_GetArraySize(steps); s++) {
            cJSON *ps = cJSON_GetArrayItem(steps, s);
            double cl = metric(OUT[i].c_metrics[s], "loss"), pl = jnum(ps, "loss");
            double clr = metric(OUT[i].c_metrics[s], "lr"), plr = jnum(ps, "lr");
            printf("  config %s (%s) step %d: loss C %.9f PyTorch %.9f | lr C %.12g PyTorch %.12g\n", CFGS[i].name,
                   CFGS[i].method, s + 1, cl, pl, clr, plr);
            CHECK_CLOSE(cl, pl, 0, 1e-5, "step loss");
            CHECK_CLOSE(clr, plr, 1e-15, 1e-12, "step lr");
            double d = fabs(cl - pl) / fabs(pl);
            worst = d > worst ? d : worst;
            compared++;
        }
        printf("  config %s: max rel loss diff %.2e over %d steps\n", CFGS[i].name, worst, STEPS);
        /* the schedule really moved: lr 0 at step 1, then non-zero */
        CHECK(metric(OUT[i].c_metrics[0], "lr") == 0.0 && metric(OUT[i].c_metrics[STEPS - 1], "lr") > 0, "lr 0 then > 0");
    }
    CHECK(compared == N_CFG * STEPS, "compared %d steps of %d", compared, N_CFG * STEPS);
}

static void test_final_adapter_matches_pytorch(void) {
    if (!have_torch) SKIP("%s", skip_reason);
    for (int i = 0; i < N_CFG; i++) {
        if (!OUT[i].ok || strcmp(CFGS[i].method, "adapter")) continue;
        const adapter_data *a = &OUT[i].c_ad;
        cJSON *q = cJSON_GetObjectItem(OUT[i].py, "adapter_query"), *g = cJSON_GetObjectItem(OUT[i].py, "gates");
        int nq = a->adapter_layer * a->adapter_len * a->dim, ng = a->adapter_layer * a->n_heads;
        CHECK(cJSON_GetArraySize(q) == nq && cJSON_GetArraySize(g) == ng, "adapter sizes: C %d+%d, PyTorch %d+%d", nq, ng,
              cJSON_GetArraySize(q), cJSON_GetArraySize(g));
        if (t_cur_failed) return;
        double wq = 0, wg = 0, moved = 0;
        int k = 0;
        for (cJSON *e = q->child; e; e = e->next, k++) {
            double d = fabs(a->query[k] - e->valuedouble);
            if (k < 3) printf("  config %s adapter_query[%d]: C %.9f PyTorch %.9f\n", CFGS[i].name, k, a->query[k], e->valuedouble);
            wq = d > wq ? d : wq;
        }
        k = 0;
        for (cJSON *e = g->child; e; e = e->next, k++) {
            double d = fabs(a->gates[k] - e->valuedouble);
            if (k < 2) printf("  config %s gate[%d]: C %.9f PyTorch %.9f\n", CFGS[i].name, k, a->gates[k], e->valuedouble);
            wg = d > wg ? d : wg;
        }
        /* the adapter must have changed from its start, or the comparison proves little */
        adapter_data a0;
        char init[400], err[512];
        snprintf(init, sizeof init, "%s/init_%s.safetensors", dir, CFGS[i].name);
        if (adapter_import(init, K_LEN, 3, 4, 32, &a0, err, sizeof err) == 0) {
            for (int j = 0; j < nq; j++) moved = fmax(moved, fabs(a0.query[j] - a->query[j]));
            adapter_data_free(&a0);
        }
        printf("  config %s: max |C - PyTorch| adapter_query %.2e, gates %.2e (prompts moved up to %.3g from the start)\n",
               CFGS[i].name, wq, wg, moved);
        CHECK(wq <= 1e-5 && wg <= 1e-5, "final adapter differs: query %.3g gates %.3g (tolerance 1e-5)", wq, wg);
        CHECK(moved > 1e-3, "the prompts did not train (moved %.3g)", moved);
    }
}

static void test_full_finetuned_weights_match_pytorch(void) {
    if (!have_torch) SKIP("%s", skip_reason);
    for (int i = 0; i < N_CFG; i++) {
        if (!OUT[i].ok || strcmp(CFGS[i].method, "full")) continue;
        double d = jnum(OUT[i].py, "weights_max_abs_diff");
        cJSON *wt = cJSON_GetObjectItem(OUT[i].py, "weights_worst_tensor");
        printf("  config %s: every weight after %d steps, max |C - PyTorch| %.2e (in %s, %g tensors)\n", CFGS[i].name, STEPS, d,
               cJSON_IsString(wt) ? wt->valuestring : "?", jnum(OUT[i].py, "weights_tensors"));
        CHECK(d <= 1e-5, "full fine-tuning weights differ by %.3g (tolerance 1e-5)", d);
    }
}

static void test_eval_loss_matches_pytorch(void) {
    if (!have_torch) SKIP("%s", skip_reason);
    for (int i = 0; i < N_CFG; i++) {
        if (!OUT[i].ok) continue;
        double pl = jnum(OUT[i].py, "eval_loss");
        printf("  config %s: eval loss of the trained %s, C %.9f PyTorch %.9f\n", CFGS[i].name,
               strcmp(CFGS[i].method, "full") ? "adapter" : "model", OUT[i].c_eval, pl);
        CHECK_CLOSE(OUT[i].c_eval, pl, 0, 1e-5, "eval loss");
    }
}

static void test_tokenization_matches_python_sentencepiece(void) {
    if (!have_torch) SKIP("%s", skip_reason);
    if (!OUT[0].ok) SKIP("no peer result");
    cJSON *t = cJSON_GetObjectItem(OUT[0].py, "tokenization");
    const char *s = cJSON_IsString(t) ? t->valuestring : "?";
    if (strstr(s, "not checked")) SKIP("%s", s);
    printf("  token ids: %s\n", s);
    CHECK(!strncmp(s, "identical", 9), "Python sentencepiece + the Alpaca template give other ids: %s", s);
}

int main(void) {
    bin = getenv("LLAMA_ADAPTER_BIN") ? getenv("LLAMA_ADAPTER_BIN") : "build/llama-adapter";
    snprintf(dir, sizeof dir, "/tmp/test_torch_ref_XXXXXX");
    if (!mkdtemp(dir)) {
        printf("cannot create a temporary directory\n");
        return 1;
    }
    setup_all();
    RUN(test_fixture_and_both_sides_run);
    RUN(test_peer_reference_and_packed_styles_agree);
    RUN(test_step_losses_and_lr_match_pytorch);
    RUN(test_final_adapter_matches_pytorch);
    RUN(test_full_finetuned_weights_match_pytorch);
    RUN(test_eval_loss_matches_pytorch);
    RUN(test_tokenization_matches_python_sentencepiece);
    for (int i = 0; i < N_CFG; i++) {
        for (int s = 0; s < STEPS; s++) free(OUT[i].c_metrics[s]);
        cJSON_Delete(OUT[i].py);
        if (OUT[i].c_ad.query) adapter_data_free(&OUT[i].c_ad);
    }
    if (!getenv("KEEP_TMP")) test_rmtree(dir);
    return TEST_MAIN_END("test_torch_reference");
}
