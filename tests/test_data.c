/* Data pipeline tests (DESIGN.md §2): prompt templates byte for byte, token ids and label masks
 * against an independent route (the template string written out by hand in this file, encoded
 * whole, then [bos] + ... + [eos]), truncation inside the prompt and inside the output, the
 * LLaMA-2 tokenizer on the shared Alpaca sample, the loader's order/drop_last/shuffle/targets, and
 * every kind of bad input, both through the library (message text) and through the binary
 * (exit status 1, one line on stderr).
 * A small SentencePiece model is trained inside the test (tok_train) so most checks need no
 * shared files; the LLaMA-2 checks SKIP when ../shared is absent.
 * The binary is $LLAMA_ADAPTER_BIN or build/llama-adapter. */
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>

#include "autograd/rng.h"
#include "data/alpaca.h"
#include "data/loader.h"
#include "data/tok.h"
#include "tests/test.h"

static char g_dir[256];      /* mkdtemp directory, removed at the end */
static char g_model[512];    /* the SentencePiece model trained in the test */
static tok *g_tok;           /* loaded g_model, NULL when training failed */

#define BOS 1
#define EOS 2

/* ---------------------------------------------------------------- helpers */

static void path_in(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", g_dir, name); }

static int write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t k = fwrite(p, 1, n, f);
    return fclose(f) == 0 && k == n ? 0 : -1;
}
static int write_text(const char *path, const char *s) { return write_bytes(path, s, strlen(s)); }


static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* [bos] + encode(text) (+ [eos]) into a malloc'ed array. */
static int *encode_wrapped(const tok *t, const char *text, int add_eos, int *n) {
    int *ids, m;
    char err[256];
    if (tok_encode(t, text, &ids, &m, err, sizeof err)) {
        printf("  encode failed: %s\n", err);
        *n = 0;
        return NULL;
    }
    int *out = malloc(((size_t)m + 2) * sizeof *out);
    out[0] = tok_bos(t);
    memcpy(out + 1, ids, (size_t)m * sizeof *ids);
    if (add_eos) out[m + 1] = tok_eos(t);
    *n = m + 1 + (add_eos ? 1 : 0);
    free(ids);
    return out;
}

static void print_ids(const char *what, const int *ids, int n) {
    printf("  %s (%d):", what, n);
    for (int i = 0; i < n; i++) printf(" %d", ids[i]);
    printf("\n");
}

static int ids_equal(const int *a, const int *b, int n) {
    for (int i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

/* Loads a JSON text written to `name` in the temp dir and builds the dataset. */
static int build_from_json(const char *name, const char *json, int max_seq_len, alpaca_set *s,
                           dataset *d) {
    char p[512], err[512];
    path_in(p, sizeof p, name);
    write_text(p, json);
    if (alpaca_load(p, s, err, sizeof err)) {
        printf("  alpaca_load: %s\n", err);
        return -1;
    }
    if (dataset_build(d, s, g_tok, max_seq_len, err, sizeof err)) {
        printf("  dataset_build: %s\n", err);
        alpaca_free(s);
        return -1;
    }
    return 0;
}


/* Runs `BIN inspect ARGS`, returns the exit status; stderr (malloc'ed) in *err_text. */
static int run_inspect(const char *args, char **err_text) {
    char full[4096];
    snprintf(full, sizeof full, "inspect %s", args);
    return test_run_bin(g_dir, full, NULL, err_text);
}


/* ---------------------------------------------------------------- templates */

static const char HAND_NO_INPUT[] =
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\nName three colors.\n\n### Response:";
static const char HAND_INPUT[] =
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
    "Translate the word to French.\n\n### Input:\ncat\n\n### Response:";

static void test_alpaca_prompt_templates_are_byte_exact(void) {
    char *a = alpaca_prompt("Name three colors.", "");
    char *b = alpaca_prompt("Name three colors.", NULL);
    char *c = alpaca_prompt("Translate the word to French.", "cat");
    CHECK(a && !strcmp(a, HAND_NO_INPUT), "no-input template: got [%s]", a ? a : "(null)");
    CHECK(b && !strcmp(b, HAND_NO_INPUT), "NULL input must give the no-input template");
    CHECK(c && !strcmp(c, HAND_INPUT), "input template: got [%s]", c ? c : "(null)");
    free(a);
    free(b);
    free(c);
}

/* ---------------------------------------------------------------- tokenizer */

static const char *CORPUS[] = {
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "Below is an instruction that describes a task, paired with an input that provides further context.",
    "### Instruction:",
    "### Input:",
    "### Response:",
    "Name three colors. Red, green and blue are colors.",
    "Translate the word to French. The cat is le chat.",
    "Give three tips for staying healthy: eat well, sleep well, move every day.",
    "What is the capital of France? The capital of France is Paris.",
    "Write a short poem about the sea and the sky.",
    "Summarize the text in one sentence.",
    "List five fruits: apple, banana, cherry, grape, orange.",
    "Count from 1 to 10: 1 2 3 4 5 6 7 8 9 10.",
};

static int train_small_model(const char *prefix_name, char *model_path, size_t n, char *err,
                             size_t errlen) {
    char corpus[512], prefix[400];
    path_in(corpus, sizeof corpus, "corpus.txt");
    FILE *f = fopen(corpus, "w");
    if (!f) return -1;
    for (int rep = 0; rep < 20; rep++)
        for (size_t i = 0; i < sizeof CORPUS / sizeof *CORPUS; i++) fprintf(f, "%s\n", CORPUS[i]);
    fclose(f);
    path_in(prefix, sizeof prefix, prefix_name);
    if (tok_train(corpus, prefix, 384, "bpe", err, errlen)) return -1;
    snprintf(model_path, n, "%s.model", prefix);
    return 0;
}

static void test_tok_train_is_deterministic_and_loads(void) {
    char err[512];
    /* the model file records its prefix and input path: train twice into the same prefix */
    CHECK(train_small_model("spm", g_model, sizeof g_model, err, sizeof err) == 0, "tok_train: %s", err);
    size_t n1 = 0, n2 = 0;
    char *b1 = test_read_file(g_model, &n1);
    CHECK(train_small_model("spm", g_model, sizeof g_model, err, sizeof err) == 0, "tok_train (2): %s", err);
    char *b2 = test_read_file(g_model, &n2);
    CHECK(b1 && b2 && n1 == n2 && n1 > 0 && !memcmp(b1, b2, n1),
          "two trainings on the same corpus give different model files (%zu vs %zu bytes)", n1, n2);
    free(b1);
    free(b2);
    g_tok = tok_load(g_model, err, sizeof err);
    CHECK(g_tok != NULL, "tok_load: %s", err);
    if (!g_tok) return;
    tok *t2 = tok_load(g_model, err, sizeof err);
    CHECK(t2 && tok_fingerprint(t2) == tok_fingerprint(g_tok), "same bytes, different fingerprint");
    tok_free(t2);
    printf("  trained model: vocab %d, fingerprint %016llx\n", tok_vocab_size(g_tok),
           (unsigned long long)tok_fingerprint(g_tok));
    CHECK(tok_bos(g_tok) == BOS && tok_eos(g_tok) == EOS, "bos %d eos %d, want 1 2", tok_bos(g_tok),
          tok_eos(g_tok));
    CHECK(tok_vocab_size(g_tok) > 259 && tok_vocab_size(g_tok) <= 384, "vocab %d",
          tok_vocab_size(g_tok));
    /* byte fallback: newlines and characters never seen in training round-trip */
    const char *text = "### Response:\nCafé — ünïcödé 😀 zq\n\nend";
    int *ids, n;
    CHECK(tok_encode(g_tok, text, &ids, &n, err, sizeof err) == 0, "encode: %s", err);
    char *back = tok_decode(g_tok, ids, n);
    CHECK(back && !strcmp(back, text), "decode(encode(x)) != x: [%s]", back ? back : "(null)");
    for (int i = 0; i < n; i++) CHECK(ids[i] != 0, "unk id at %d despite byte fallback", i);
    free(back);
    free(ids);
    /* another model (unigram on the same corpus) has another fingerprint */
    char corpus[512], prefix[512], other[600];
    path_in(corpus, sizeof corpus, "corpus.txt");
    path_in(prefix, sizeof prefix, "spm_uni");
    CHECK(tok_train(corpus, prefix, 320, "unigram", err, sizeof err) == 0, "unigram: %s", err);
    snprintf(other, sizeof other, "%s.model", prefix);
    tok *t3 = tok_load(other, err, sizeof err);
    CHECK(t3 && tok_fingerprint(t3) != tok_fingerprint(g_tok), "different models, same fingerprint");
    tok_free(t3);
    CHECK(tok_train(corpus, prefix, 320, "word", err, sizeof err) == -1 && strstr(err, "unigram"),
          "unknown model type accepted: %s", err);
}

/* ---------------------------------------------------------------- ids and labels (small model) */

static void test_dataset_ids_and_labels_match_hand_built_template(void) {
    if (!g_tok) SKIP("no trained tokenizer (tok_train failed above)");
    const char *json =
        "[{\"instruction\": \"Name three colors.\", \"input\": \"\", \"output\": \"Red, green and blue.\"},\n"
        " {\"instruction\": \"Translate the word to French.\", \"input\": \"cat\", \"output\": \"le chat\"},\n"
        " {\"instruction\": \"Name three colors.\", \"output\": \"Red, green and blue.\"}]";
    alpaca_set s;
    dataset d;
    if (build_from_json("ok.json", json, 512, &s, &d)) {
        CHECK(0, "building the small dataset failed");
        return;
    }
    CHECK(s.n == 3 && d.n == 3, "n %d %d", s.n, d.n);
    CHECK(!strcmp(s.ex[2].input, ""), "absent input must be \"\"");
    CHECK(d.n_with_input == 1, "with input %d, want 1", d.n_with_input);

    char full0[1024], full1[1024];
    snprintf(full0, sizeof full0, "%s%s", HAND_NO_INPUT, "Red, green and blue.");
    snprintf(full1, sizeof full1, "%s%s", HAND_INPUT, "le chat");
    const char *prompts[3] = {HAND_NO_INPUT, HAND_INPUT, HAND_NO_INPUT};
    const char *fulls[3] = {full0, full1, full0};
    int64_t loss = 0;
    for (int i = 0; i < 3; i++) {
        int np, nf;
        int *p = encode_wrapped(g_tok, prompts[i], 0, &np);
        int *f = encode_wrapped(g_tok, fulls[i], 1, &nf);
        int L = (int)(d.off[i + 1] - d.off[i]);
        const int *ids = d.ids + d.off[i], *lab = d.labels + d.off[i];
        if (i < 2) {
            print_ids(i ? "prompt_ids (input)" : "prompt_ids (no input)", p, np);
            print_ids(i ? "example_ids (input)" : "example_ids (no input)", ids, L);
        }
        CHECK(L == nf, "example %d: %d ids, independent route %d", i, L, nf);
        CHECK(L == nf && ids_equal(ids, f, nf), "example %d ids differ from [bos]+encode(full)+[eos]", i);
        CHECK(ids[0] == BOS && ids[L - 1] == EOS, "example %d: bos/eos %d %d", i, ids[0], ids[L - 1]);
        for (int k = 0; k < L; k++) {
            int want = k < np ? 0 : f[k];
            CHECK(lab[k] == want, "example %d label %d: %d, want %d", i, k, lab[k], want);
            loss += k >= 1 && want != 0;
        }
        CHECK(np < nf && nf - np >= 2, "example %d: output must add tokens (%d vs %d)", i, np, nf);
        free(p);
        free(f);
    }
    CHECK(d.n_loss_tokens == loss, "n_loss_tokens %lld want %lld", (long long)d.n_loss_tokens,
          (long long)loss);
    CHECK(d.n_truncated == 0 && d.n_no_loss == 0, "truncated %d no_loss %d", d.n_truncated,
          d.n_no_loss);
    dataset_free(&d);
    alpaca_free(&s);
}

/* Truncation at a boundary inside the prompt, inside the output, and around the eos. */
static void test_truncation_inside_prompt_and_inside_output(void) {
    if (!g_tok) SKIP("no trained tokenizer");
    const char *json =
        "[{\"instruction\": \"Name three colors.\", \"input\": \"\", \"output\": \"Red, green and blue.\"}]";
    char full[1024];
    snprintf(full, sizeof full, "%s%s", HAND_NO_INPUT, "Red, green and blue.");
    int np, nf;
    int *p = encode_wrapped(g_tok, HAND_NO_INPUT, 0, &np);
    int *f = encode_wrapped(g_tok, full, 1, &nf);
    struct { const char *what; int max; int truncated; int loss; } cases[] = {
        {"inside the prompt", np - 3, 1, 0},
        {"at the prompt end", np, 1, 0},
        {"inside the output", np + 2, 1, 2},
        {"just before eos", nf - 1, 1, nf - 1 - np},
        {"exactly the full length", nf, 0, nf - np},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        alpaca_set s;
        dataset d;
        if (build_from_json("trunc.json", json, cases[c].max, &s, &d)) {
            CHECK(0, "%s: build failed", cases[c].what);
            continue;
        }
        int L = (int)(d.off[1] - d.off[0]);
        int want_len = nf < cases[c].max ? nf : cases[c].max;
        CHECK(L == want_len, "%s: length %d want %d", cases[c].what, L, want_len);
        CHECK(L == want_len && ids_equal(d.ids, f, L), "%s: ids are not a prefix of the full ids",
              cases[c].what);
        for (int k = 0; k < L; k++)
            CHECK(d.labels[k] == (k < np ? 0 : f[k]), "%s: label %d = %d", cases[c].what, k,
                  d.labels[k]);
        CHECK(d.n_truncated == cases[c].truncated, "%s: truncated %d", cases[c].what, d.n_truncated);
        CHECK(d.n_loss_tokens == cases[c].loss, "%s: loss tokens %lld want %d", cases[c].what,
              (long long)d.n_loss_tokens, cases[c].loss);
        CHECK(d.n_no_loss == (cases[c].loss == 0), "%s: no-loss %d", cases[c].what, d.n_no_loss);
        CHECK((d.ids[L - 1] == EOS) == !cases[c].truncated, "%s: last id %d", cases[c].what,
              d.ids[L - 1]);
        dataset_free(&d);
        alpaca_free(&s);
    }
    /* max_seq_len below 2 is refused */
    alpaca_set s;
    dataset d;
    char pth[512], err[512];
    path_in(pth, sizeof pth, "trunc.json");
    CHECK(alpaca_load(pth, &s, err, sizeof err) == 0, "%s", err);
    CHECK(dataset_build(&d, &s, g_tok, 1, err, sizeof err) == -1 && strstr(err, "max_seq_len 1"),
          "max_seq_len 1: %s", err);
    alpaca_free(&s);
    free(p);
    free(f);
}

/* dataset_write_json: every example's ids, and labels as the ids after n_prompt zeros. */
static void test_dataset_json_dump_round_trips(void) {
    if (!g_tok) SKIP("no trained tokenizer");
    const char *json = "[{\"instruction\": \"Name three colors.\", \"input\": \"x\", \"output\": \"Red.\"},\n"
                       " {\"instruction\": \"Count.\", \"output\": \"1 2 3\"}]";
    alpaca_set s;
    dataset d;
    if (build_from_json("dump.json", json, 512, &s, &d)) {
        CHECK(0, "build failed");
        return;
    }
    char p[512], err[256];
    path_in(p, sizeof p, "tokens.json");
    CHECK(dataset_write_json(&d, g_tok, "tok.model", p, err, sizeof err) == 0, "%s", err);
    char *txt = test_read_file(p, NULL);
    cJSON *root = txt ? cJSON_Parse(txt) : NULL, *ex = cJSON_GetObjectItem(root, "examples");
    CHECK(root && cJSON_GetObjectItem(root, "n")->valueint == 2 && cJSON_GetArraySize(ex) == 2, "header and count");
    for (int i = 0; root && i < 2; i++) {
        cJSON *e = cJSON_GetArrayItem(ex, i);
        int np = cJSON_GetArrayItem(e, 0)->valueint, L = cJSON_GetArraySize(e) - 1;
        CHECK(L == (int)(d.off[i + 1] - d.off[i]), "example %d length", i);
        for (int k = 0; k < L && k < 600; k++) {
            int id = cJSON_GetArrayItem(e, k + 1)->valueint;
            CHECK(id == d.ids[d.off[i] + k], "example %d id %d", i, k);
            CHECK((k < np ? 0 : id) == d.labels[d.off[i] + k], "example %d label %d", i, k);
        }
    }
    CHECK(dataset_write_json(&d, g_tok, "t", "/nonexistent-dir/x.json", err, sizeof err) == -1 && strstr(err, "nonexistent-dir"),
          "unwritable path: %s", err);
    cJSON_Delete(root);
    free(txt);
    dataset_free(&d);
    alpaca_free(&s);
}

static void test_dataset_split_moves_first_examples(void) {
    if (!g_tok) SKIP("no trained tokenizer");
    const char *json =
        "[{\"instruction\": \"Name three colors.\", \"input\": \"x\", \"output\": \"Red.\"},\n"
        " {\"instruction\": \"Count from 1 to 10.\", \"output\": \"1 2 3\"},\n"
        " {\"instruction\": \"List five fruits.\", \"output\": \"apple\"},\n"
        " {\"instruction\": \"Write a short poem.\", \"input\": \"sea\", \"output\": \"The sea.\"}]";
    alpaca_set s;
    dataset d, v;
    if (build_from_json("split.json", json, 512, &s, &d)) {
        CHECK(0, "build failed");
        return;
    }
    int L1 = (int)(d.off[2] - d.off[1]);
    int *ex1 = malloc((size_t)L1 * sizeof *ex1);
    memcpy(ex1, d.ids + d.off[1], (size_t)L1 * sizeof *ex1);
    int64_t loss = d.n_loss_tokens;
    char err[256];
    CHECK(dataset_split(&d, &v, 1, err, sizeof err) == 0, "split: %s", err);
    CHECK(v.n == 1 && d.n == 3, "sizes %d %d", v.n, d.n);
    CHECK(v.n_with_input == 1 && d.n_with_input == 1, "with input %d %d", v.n_with_input, d.n_with_input);
    CHECK(v.n_loss_tokens + d.n_loss_tokens == loss, "loss tokens not conserved");
    CHECK(d.off[0] == 0 && d.off[1] == L1 && ids_equal(d.ids, ex1, L1), "example 1 is not first now");
    dataset_free(&v);
    CHECK(dataset_split(&d, &v, 3, err, sizeof err) == -1 && strstr(err, "expected"),
          "split of everything must fail: %s", err);
    free(ex1);
    dataset_free(&v);
    dataset_free(&d);
    alpaca_free(&s);
}

/* ---------------------------------------------------------------- LLaMA-2 tokenizer, shared data */

/* ids and labels of example 0 of alpaca_small.json, produced by the reference Python code
 * (PROMPT_DICT.format_map, sentencepiece encode, [bos] + ... + [eos], labels[:len(prompt)] = 0)
 * with llama2.model. */
static const int GOLD0_IDS[] = {
    1, 13866, 338, 385, 15278, 393, 16612, 263, 3414, 29892, 3300, 2859, 411, 385, 1881, 393,
    8128, 4340, 3030, 29889, 14350, 263, 2933, 393, 7128, 2486, 1614, 2167, 278, 2009, 29889, 13,
    13, 2277, 29937, 2799, 4080, 29901, 13, 5596, 565, 278, 1494, 13327, 1400, 338, 8210, 13, 13,
    2277, 29937, 10567, 29901, 13, 29902, 1348, 590, 289, 2209, 338, 278, 2099, 342, 2022, 3926,
    29889, 13, 13, 2277, 29937, 13291, 29901, 1217, 2};
#define GOLD0_PROMPT 72 /* 74 ids; labels 0 at positions [0, 72), then 1217 ("no"), 2 */

static void test_llama2_tokenizer_known_ids(void) {
    char mp[512], err[512];
    if (!test_shared("tokenizers/llama2.model", mp, sizeof mp))
        SKIP("%s not present", mp);
    tok *t = tok_load(mp, err, sizeof err);
    CHECK(t != NULL, "tok_load: %s", err);
    if (!t) return;
    CHECK(tok_vocab_size(t) == 32000 && tok_bos(t) == 1 && tok_eos(t) == 2, "vocab %d bos %d eos %d",
          tok_vocab_size(t), tok_bos(t), tok_eos(t));
    struct { const char *text; int n; int id[2]; } known[] = {
        {"Below", 1, {13866}}, {"Hello", 1, {15043}}, {"\n", 2, {29871, 13}},
    };
    for (size_t i = 0; i < sizeof known / sizeof *known; i++) {
        int *ids, n;
        CHECK(tok_encode(t, known[i].text, &ids, &n, err, sizeof err) == 0, "%s", err);
        printf("  llama2 encode(\"%s\") =", i == 2 ? "\\n" : known[i].text);
        for (int k = 0; k < n; k++) printf(" %d", ids[k]);
        printf("\n");
        CHECK(n == known[i].n && ids_equal(ids, known[i].id, n), "encode(%s) unexpected", known[i].text);
        free(ids);
    }
    printf("  llama2 fingerprint %016llx\n", (unsigned long long)tok_fingerprint(t));
    tok_free(t);
}

static void test_llama2_alpaca_small_ids_and_summary(void) {
    char mp[512], dp[512], err[512];
    if (!test_shared("tokenizers/llama2.model", mp, sizeof mp))
        SKIP("%s not present", mp);
    if (!test_shared("data/alpaca_small.json", dp, sizeof dp))
        SKIP("%s not present", dp);
    double t0 = now_s();
    alpaca_set s;
    CHECK(alpaca_load(dp, &s, err, sizeof err) == 0, "alpaca_load: %s", err);
    if (s.n == 0) return;
    tok *t = tok_load(mp, err, sizeof err);
    CHECK(t != NULL, "tok_load: %s", err);
    if (!t) { alpaca_free(&s); return; }
    dataset d;
    int rc = dataset_build(&d, &s, t, 512, err, sizeof err);
    double dt = now_s() - t0;
    CHECK(rc == 0, "dataset_build: %s", err);
    if (rc) { tok_free(t); alpaca_free(&s); return; }
    printf("  load + tokenize of %d examples: %.3f s\n", d.n, dt);

    /* example 0 against the reference golden ids */
    int L0 = (int)(d.off[1] - d.off[0]);
    int ng = (int)(sizeof GOLD0_IDS / sizeof *GOLD0_IDS);
    CHECK(L0 == ng && ids_equal(d.ids, GOLD0_IDS, ng), "example 0 ids differ from the reference");
    for (int k = 0; k < L0 && k < ng; k++)
        CHECK(d.labels[k] == (k < GOLD0_PROMPT ? 0 : GOLD0_IDS[k]), "example 0 label %d", k);

    /* first 3 examples: the full template string built here, encoded whole */
    for (int i = 0; i < 3; i++) {
        const alpaca_example *x = &s.ex[i];
        size_t cap = strlen(x->instruction) + strlen(x->input) + strlen(x->output) + 512;
        char *prompt = malloc(cap), *full = malloc(cap);
        if (x->input[0])
            snprintf(prompt, cap,
                     "Below is an instruction that describes a task, paired with an input that "
                     "provides further context. Write a response that appropriately completes the "
                     "request.\n\n### Instruction:\n%s\n\n### Input:\n%s\n\n### Response:",
                     x->instruction, x->input);
        else
            snprintf(prompt, cap,
                     "Below is an instruction that describes a task. Write a response that "
                     "appropriately completes the request.\n\n### Instruction:\n%s\n\n### Response:",
                     x->instruction);
        snprintf(full, cap, "%s%s", prompt, x->output);
        int np, nf;
        int *p = encode_wrapped(t, prompt, 0, &np), *f = encode_wrapped(t, full, 1, &nf);
        int L = (int)(d.off[i + 1] - d.off[i]);
        if (nf > 512) nf = 512;
        CHECK(L == nf && ids_equal(d.ids + d.off[i], f, nf), "example %d ids differ (%d vs %d)", i, L, nf);
        for (int k = 0; k < L && k < nf; k++)
            CHECK(d.labels[d.off[i] + k] == (k < np ? 0 : f[k]), "example %d label %d", i, k);
        free(p);
        free(f);
        free(prompt);
        free(full);
    }

    /* the summary: counts cross-checked with the reference Python pipeline */
    CHECK(d.n == 2000, "n %d", d.n);
    CHECK(d.n_with_input == 753, "with input %d, want 753", d.n_with_input);
    int with = 0;
    for (int i = 0; i < s.n; i++) with += s.ex[i].input[0] != 0;
    CHECK(with == d.n_with_input, "with input %d vs %d", with, d.n_with_input);
    CHECK(d.off[d.n] == 255036, "total tokens %lld, want 255036", (long long)d.off[d.n]);
    CHECK(d.n_loss_tokens == 133519, "loss tokens %lld, want 133519", (long long)d.n_loss_tokens);
    CHECK(d.n_truncated == 3 && d.n_no_loss == 0, "truncated %d no-loss %d", d.n_truncated, d.n_no_loss);
    int mx = 0;
    for (int i = 0; i < d.n; i++)
        if (d.off[i + 1] - d.off[i] > mx) mx = (int)(d.off[i + 1] - d.off[i]);
    CHECK(mx == 512, "max length %d", mx);
    char sp[512];
    path_in(sp, sizeof sp, "summary.txt");
    FILE *f = fopen(sp, "w");
    dataset_summary(&d, "alpaca_small", f);
    fclose(f);
    char *sum = test_read_file(sp, NULL);
    printf("%s", sum ? sum : "");
    CHECK(sum && strstr(sum, "2000 (753 with input, 1247 without)"), "summary examples line");
    CHECK(sum && strstr(sum, "max 512"), "summary max");
    CHECK(sum && strstr(sum, "133519"), "summary loss tokens");
    free(sum);
    dataset_free(&d);
    tok_free(t);
    alpaca_free(&s);
}

/* ---------------------------------------------------------------- loader */

/* n examples; example i has length 1 + i % 5, ids 1000*i + k, the first (i % 3) labels 0. */
static void make_synthetic(dataset *d, int n) {
    memset(d, 0, sizeof *d);
    d->n = n;
    d->off = calloc((size_t)n + 1, sizeof *d->off);
    d->flags = calloc((size_t)n, 1);
    for (int i = 0; i < n; i++) d->off[i + 1] = d->off[i] + 1 + i % 5;
    d->ids = malloc((size_t)d->off[n] * sizeof *d->ids);
    d->labels = malloc((size_t)d->off[n] * sizeof *d->labels);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < (int)(d->off[i + 1] - d->off[i]); k++) {
            d->ids[d->off[i] + k] = 1000 * i + k;
            d->labels[d->off[i] + k] = k < i % 3 ? 0 : 1000 * i + k;
        }
    d->max_seq_len = 512;
}

static void test_loader_file_order_and_drop_last(void) {
    dataset d;
    make_synthetic(&d, 7);
    loader l;
    CHECK(loader_init(&l, &d, 2, 0, 42) == 0, "loader_init");
    CHECK(loader_steps_per_epoch(&l) == 3, "steps %d, want 3 (7 examples, B 2, drop_last)",
          loader_steps_per_epoch(&l));
    for (int e = 0; e < 2; e++)
        for (int i = 0; i < 3; i++) {
            const microbatch *m = loader_get(&l, e, i);
            CHECK(m && m->n_seq == 2 && m->example[0] == 2 * i && m->example[1] == 2 * i + 1,
                  "epoch %d mb %d: examples %d %d", e, i, m ? m->example[0] : -1, m ? m->example[1] : -1);
        }
    CHECK(loader_get(&l, 0, 3) == NULL, "index 3 must not exist (drop_last)");
    CHECK(loader_get(&l, 0, -1) == NULL, "negative index");
    loader_free(&l);
    CHECK(loader_init(&l, &d, 8, 0, 42) == 0 && loader_steps_per_epoch(&l) == 0,
          "B > n: no micro-batch");
    loader_free(&l);
    CHECK(loader_init(&l, &d, 0, 0, 42) == -1, "batch size 0 must be refused");
    dataset_free(&d);
}

static void test_loader_targets_are_next_labels_and_pos(void) {
    dataset d;
    make_synthetic(&d, 7);
    loader l;
    loader_init(&l, &d, 2, 0, 1);
    /* micro-batch 1 = examples 2 (length 3, first 2 labels 0) and 3 (length 4, first label 0) */
    const microbatch *m = loader_get(&l, 0, 1);
    static const int ids[] = {2000, 2001, 2002, 3000, 3001, 3002, 3003};
    static const int tgt[] = {0, 2002, 0, 3001, 3002, 3003, 0};
    static const int pos[] = {0, 1, 2, 0, 1, 2, 3};
    CHECK(m && m->T == 7 && m->seq_off[0] == 0 && m->seq_off[1] == 3 && m->seq_off[2] == 7,
          "T %d", m ? m->T : -1);
    if (m && m->T == 7) {
        CHECK(ids_equal(m->ids, ids, 7), "ids");
        CHECK(ids_equal(m->targets, tgt, 7), "targets %d %d %d %d %d %d %d", m->targets[0],
              m->targets[1], m->targets[2], m->targets[3], m->targets[4], m->targets[5], m->targets[6]);
        CHECK(ids_equal(m->pos, pos, 7), "pos");
        CHECK(m->n_loss == 4, "n_loss %d", m->n_loss);
    }
    /* every pack against the rule, for an arbitrary order */
    int order[] = {6, 0, 4, 5, 1};
    m = loader_pack(&l, order, 5);
    CHECK(m && m->n_seq == 5, "pack");
    int nl = 0;
    for (int s = 0; m && s < 5; s++) {
        int e = order[s], L = (int)(d.off[e + 1] - d.off[e]);
        CHECK(m->seq_off[s + 1] - m->seq_off[s] == L && m->example[s] == e, "seq %d", s);
        for (int k = 0; k < L; k++) {
            int t = m->seq_off[s] + k, want = k + 1 < L ? d.labels[d.off[e] + k + 1] : 0;
            CHECK(m->ids[t] == d.ids[d.off[e] + k] && m->targets[t] == want && m->pos[t] == k,
                  "seq %d pos %d", s, k);
            nl += want != 0;
        }
    }
    CHECK(m && m->n_loss == nl, "n_loss %d want %d", m ? m->n_loss : -1, nl);
    int badidx[] = {7};
    CHECK(loader_pack(&l, badidx, 1) == NULL, "out-of-range example must give NULL");
    loader_free(&l);
    dataset_free(&d);
}

static void collect_epoch(loader *l, int epoch, int *out) {
    int B = l->batch_size, S = loader_steps_per_epoch(l);
    for (int i = 0; i < S; i++) {
        const microbatch *m = loader_get(l, epoch, i);
        for (int s = 0; s < B; s++) out[i * B + s] = m ? m->example[s] : -1;
    }
}

static void test_loader_shuffle_is_seeded_per_epoch(void) {
    enum { N = 50, B = 4, S = N / B };
    dataset d;
    make_synthetic(&d, N);
    loader a, b, c;
    loader_init(&a, &d, B, 1, 1234);
    loader_init(&b, &d, B, 1, 1234);
    loader_init(&c, &d, B, 1, 999);
    int e0[S * B], e1[S * B], b0[S * B], b1[S * B], c0[S * B], ref[N];
    collect_epoch(&a, 0, e0);
    collect_epoch(&a, 1, e1);
    collect_epoch(&b, 1, b1); /* other order of access: epoch 1 first */
    collect_epoch(&b, 0, b0);
    collect_epoch(&c, 0, c0);
    CHECK(ids_equal(e0, b0, S * B) && ids_equal(e1, b1, S * B), "same seed, different order");
    CHECK(!ids_equal(e0, e1, S * B), "epochs 0 and 1 have the same order");
    CHECK(!ids_equal(e0, c0, S * B), "seeds 1234 and 999 give the same order");
    int seen[N] = {0}, dup = 0, ident = 1;
    for (int i = 0; i < S * B; i++) {
        dup += e0[i] < 0 || e0[i] >= N || seen[e0[i]]++;
        ident &= e0[i] == i;
    }
    CHECK(dup == 0 && !ident, "epoch 0 is not a shuffled subset of a permutation");
    /* the contract: Fisher-Yates with ag_rng seeded from (seed, epoch) alone */
    for (int i = 0; i < N; i++) ref[i] = i;
    ag_rng r;
    ag_rng_seed(&r, 1234 ^ (0x9e3779b97f4a7c15ull * 2));
    for (int i = N - 1; i > 0; i--) {
        int j = (int)ag_rng_below(&r, (uint64_t)i + 1), t = ref[i];
        ref[i] = ref[j];
        ref[j] = t;
    }
    CHECK(ids_equal(e1, ref, S * B), "epoch 1 order differs from Fisher-Yates(seed ^ k*(epoch+1))");
    /* a fresh loader resumed at (epoch 1, index 5) gives the same micro-batch */
    loader r2;
    loader_init(&r2, &d, B, 1, 1234);
    const microbatch *m = loader_get(&r2, 1, 5);
    CHECK(m && ids_equal(m->example, e1 + 5 * B, B), "resume at (1, 5) differs");
    loader_free(&r2);
    loader_free(&a);
    loader_free(&b);
    loader_free(&c);
    dataset_free(&d);
}

/* ---------------------------------------------------------------- bad input */

typedef struct bad_case {
    const char *name;   /* file name in the temp dir */
    const char *bytes;  /* contents */
    size_t len;         /* 0: strlen */
    const char *want;   /* substring of the error */
    const char *want2;  /* a second substring, or NULL */
} bad_case;

#define NUL_JSON "[{\"instruction\": \"a\", \"out\0put\": \"b\"}]" /* NUL at byte 26 */
static const bad_case BAD[] = {
    {"bad_json.json", "[\n  {\"instruction\": \"a\",\n   \"output\": \"b\" oops}\n]", 0,
     "line 3, column 18 (byte offset 42): not valid JSON", "oops"},
    {"truncated.json", "[{\"instruction\": \"a\", \"output\": \"b\"}", 0, "not valid JSON", "line 1"},
    {"trailing.json", "[{\"instruction\": \"a\", \"output\": \"b\"}] x", 0, "byte offset 38", "not valid JSON"},
    {"not_array.json", "{\"instruction\": \"a\", \"output\": \"b\"}", 0, "top level is an object",
     "expected a JSON array"},
    {"elem_not_object.json", "[{\"instruction\": \"a\", \"output\": \"b\"}, 5]", 0,
     "example 1 is a number", "expected an object"},
    {"missing_output.json", "[{\"instruction\": \"a\", \"output\": \"b\"}, {\"instruction\": \"a\"}]", 0,
     "example 1: field \"output\" is missing", "expected a string"},
    {"missing_instr.json", "[{\"input\": \"x\", \"output\": \"b\"}]", 0,
     "example 0: field \"instruction\" is missing", NULL},
    {"nonstring_input.json", "[{\"instruction\": \"a\", \"input\": 3, \"output\": \"b\"}]", 0,
     "example 0: field \"input\" is a number: expected a string", NULL},
    {"null_output.json", "[{\"instruction\": \"a\", \"output\": null}]", 0,
     "field \"output\" is null: expected a string", NULL},
    {"utf8_overlong.json", "[{\"instruction\": \"a\xc0\xaf\", \"output\": \"b\"}]", 0,
     "invalid UTF-8 in example 0, field \"instruction\", at byte 1", NULL},
    {"utf8_surrogate.json", "[{\"instruction\": \"a\", \"output\": \"b\"}, {\"instruction\": \"a\", \"output\": \"xy\xed\xa0\x80\"}]",
     0, "invalid UTF-8 in example 1, field \"output\", at byte 2", NULL},
    {"utf8_truncated.json", "[{\"instruction\": \"a\", \"input\": \"\xe2\x82\", \"output\": \"b\"}]", 0,
     "invalid UTF-8 in example 0, field \"input\", at byte 0", NULL},
    {"utf8_above.json", "[{\"instruction\": \"\xf4\x90\x80\x80\", \"output\": \"b\"}]", 0,
     "invalid UTF-8 in example 0", NULL},
    {"utf8_overlong3.json", "[{\"instruction\": \"\xe0\x80\xaf\", \"output\": \"b\"}]", 0,
     "invalid UTF-8 in example 0", NULL},
    {"utf8_lone_cont.json", "[{\"instruction\": \"ok\x80\", \"output\": \"b\"}]", 0,
     "invalid UTF-8 in example 0, field \"instruction\", at byte 2", NULL},
    {"empty.json", "", 0, "empty file", NULL},
    {"blank.json", "  \n\t\n", 0, "empty file", NULL},
    {"empty_array.json", "[]", 0, "no examples", NULL},
    {"nul_byte.json", NUL_JSON, sizeof NUL_JSON - 1, "byte offset 26", "not valid JSON"},
};

static void test_bad_json_inputs_are_named(void) {
    for (size_t i = 0; i < sizeof BAD / sizeof *BAD; i++) {
        char p[512], err[512] = "";
        path_in(p, sizeof p, BAD[i].name);
        write_bytes(p, BAD[i].bytes, BAD[i].len ? BAD[i].len : strlen(BAD[i].bytes));
        alpaca_set s;
        int rc = alpaca_load(p, &s, err, sizeof err);
        CHECK(rc == -1, "%s: loaded", BAD[i].name);
        CHECK(strstr(err, p) == err, "%s: message must start with the file: [%s]", BAD[i].name, err);
        CHECK(strstr(err, BAD[i].want), "%s: [%s] lacks [%s]", BAD[i].name, err, BAD[i].want);
        CHECK(!BAD[i].want2 || strstr(err, BAD[i].want2), "%s: [%s] lacks [%s]", BAD[i].name, err,
              BAD[i].want2);
        CHECK(!strchr(err, '\n'), "%s: message has a newline", BAD[i].name);
        if (i < 3) printf("  %s\n", err);
        if (rc == 0) alpaca_free(&s);
    }
    char err[512];
    alpaca_set s;
    CHECK(alpaca_load("/nonexistent/x.json", &s, err, sizeof err) == -1 && strstr(err, "cannot open"),
          "missing file: %s", err);
    /* valid multi-byte UTF-8 is accepted; extra keys are ignored */
    char p[512];
    path_in(p, sizeof p, "utf8_ok.json");
    write_text(p, "[{\"instruction\": \"Caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \\u00e9\", \"output\": \"\", \"id\": 7}]");
    CHECK(alpaca_load(p, &s, err, sizeof err) == 0, "valid UTF-8 refused: %s", err);
    if (s.n == 1) {
        CHECK(!strcmp(s.ex[0].instruction, "Caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xc3\xa9"), "text");
        CHECK(!strcmp(s.ex[0].output, "") && !strcmp(s.ex[0].input, ""), "empty output allowed");
        alpaca_free(&s);
    }
}

static void test_bad_tokenizer_file_is_named(void) {
    char p[512], err[512];
    path_in(p, sizeof p, "not_a_model.model");
    write_text(p, "this is a text file, not a SentencePiece model\n");
    tok *t = tok_load(p, err, sizeof err);
    CHECK(t == NULL, "text file loaded as a tokenizer");
    CHECK(strstr(err, p) == err && strstr(err, "not a SentencePiece model"), "message [%s]", err);
    printf("  %s\n", err);
    tok_free(t);
    path_in(p, sizeof p, "empty.model");
    write_text(p, "");
    t = tok_load(p, err, sizeof err);
    CHECK(t == NULL && strstr(err, "not a SentencePiece model"), "empty model: [%s]", err);
    tok_free(t);
    t = tok_load("/nonexistent/t.model", err, sizeof err);
    CHECK(t == NULL && strstr(err, "cannot open"), "missing model: [%s]", err);
    tok_free(t);
}

/* The binary: exit status 1 and exactly one line on stderr for each bad input. */
static void test_cli_inspect_bad_input_exit_status(void) {
    if (!g_tok) SKIP("no trained tokenizer");
    if (!test_bin()) return;
    char args[2048], p[512], *e = NULL;
    for (size_t i = 0; i < sizeof BAD / sizeof *BAD; i++) {
        path_in(p, sizeof p, BAD[i].name);
        snprintf(args, sizeof args, "%s --tokenizer %s", p, g_model);
        int st = run_inspect(args, &e);
        CHECK(st == 1, "%s: exit status %d, want 1", BAD[i].name, st);
        CHECK(e && test_count_lines(e) == 1, "%s: stderr has %d lines: [%s]", BAD[i].name, test_count_lines(e), e ? e : "");
        CHECK(e && strstr(e, BAD[i].want), "%s: stderr [%s] lacks [%s]", BAD[i].name, e ? e : "", BAD[i].want);
        free(e);
    }
    /* a good data file with a tokenizer that is not a SentencePiece model */
    char good[512], badm[512];
    path_in(good, sizeof good, "cli_good.json");
    write_text(good, "[{\"instruction\": \"Name three colors.\", \"output\": \"Red.\"}]");
    path_in(badm, sizeof badm, "not_a_model.model");
    snprintf(args, sizeof args, "%s --tokenizer %s", good, badm);
    int st = run_inspect(args, &e);
    CHECK(st == 1 && e && test_count_lines(e) == 1 && strstr(e, "not a SentencePiece model"),
          "bad tokenizer: status %d stderr [%s]", st, e ? e : "");
    free(e);
    /* success: status 0, nothing on stderr */
    snprintf(args, sizeof args, "%s --tokenizer %s --max-seq-len 64", good, g_model);
    st = run_inspect(args, &e);
    CHECK(st == 0 && e && e[0] == '\0', "good input: status %d stderr [%s]", st, e ? e : "");
    free(e);
    /* usage errors: status 2; --help: status 0 */
    snprintf(args, sizeof args, "%s", good);
    st = run_inspect(args, &e);
    CHECK(st == 2 && e && test_count_lines(e) == 1 && strstr(e, "--tokenizer"), "missing --tokenizer: %d [%s]",
          st, e ? e : "");
    free(e);
    snprintf(args, sizeof args, "%s --help", good);
    st = run_inspect(args, &e);
    CHECK(st == 0, "--help: status %d", st);
    free(e);
}

/* ---------------------------------------------------------------- main */


int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/test_data_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_alpaca_prompt_templates_are_byte_exact);
    RUN(test_tok_train_is_deterministic_and_loads);
    RUN(test_dataset_ids_and_labels_match_hand_built_template);
    RUN(test_truncation_inside_prompt_and_inside_output);
    RUN(test_dataset_split_moves_first_examples);
    RUN(test_dataset_json_dump_round_trips);
    RUN(test_llama2_tokenizer_known_ids);
    RUN(test_llama2_alpaca_small_ids_and_summary);
    RUN(test_loader_file_order_and_drop_last);
    RUN(test_loader_targets_are_next_labels_and_pos);
    RUN(test_loader_shuffle_is_seeded_per_epoch);
    RUN(test_bad_json_inputs_are_named);
    RUN(test_bad_tokenizer_file_is_named);
    RUN(test_cli_inspect_bad_input_exit_status);
    tok_free(g_tok);
    test_rmtree(g_dir);
    return TEST_MAIN_END("test_data");
}
