/* `llama-adapter generate`: text from an instruction (Alpaca template), a raw prompt, a file of
 * instructions or a list of token ids, with the base model or model + adapter (DESIGN.md §5).
 * Text streams to stdout as it is produced; speeds go to stderr. Exit status: 0 on success,
 * 1 on bad input (one line on stderr naming the file or value), 2 on a usage error.
 * --data FILE --out answers.jsonl hands over to the answer sheets of trainer/answers.h.
 * Deliberately not here: chat loops, batching several prompts in one forward, stop strings. */
#include <errno.h>
#include <limits.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/adapter_file.h"
#include "checkpoints/model_file.h"
#include "data/alpaca.h"
#include "data/tok.h"
#include "trainer/answers.h"
#include "trainer/args.h"
#include "trainer/cli.h"
#include "trainer/generate.h"
#include "trainer/precision.h"
#include "trainer/params.h"

#define CMD "generate"
static const char USAGE_LINE[] =
    "--model M [--tokenizer T] [--adapter A] (--instruction S [--input S] | --prompt S | --prompt-file F |\n"
    "       --prompt-ids 5,6,7) [--temperature X] [--top-p X] [--seed N] [--max-new-tokens N] [--print-ids]\n"
    "\n"
    "Generates a continuation with the KV cache. --instruction/--input and each line of --prompt-file\n"
    "are wrapped in the Alpaca template; --prompt is raw text; --prompt-ids are token ids ('' = bos\n"
    "alone). bos is prepended to every prompt. Generation stops at eos, --max-new-tokens or the\n"
    "model's max_seq_len. --tokenizer is needed except with --prompt-ids and --print-ids (then bos 1,\n"
    "eos 2 as llama2.c). --adapter takes an exported adapter (safetensors, .pth, HDF5), a training\n"
    "checkpoint or a run directory (its latest checkpoint). --print-ids prints the generated ids\n"
    "(the final eos included) instead of text.\n"
    "\n"
    "Answer sheets: --data FILE.json --out answers.jsonl [--adapter A --adapter B ...] [--no-base]\n"
    "[--score exact|contains] answers every instruction of an Alpaca file with the base model and each\n"
    "adapter (greedy unless --temperature is given; example i samples with --seed + i), one JSON line\n"
    "per example {index, instruction, input, reference, base, adapters: {A: ...}} plus answers.md\n"
    "beside it; --score prints each column's accuracy against the reference outputs (normalised as\n"
    "the demo scores them). With --data, --max-new-tokens 16 --precision f32 answers as `make demo`.";

/* One prompt to run: its ids (bos included) and a label for the header. */
typedef struct prompt_item {
    int *ids;
    int n;
    char *label;
} prompt_item;

typedef struct stream_ctx {
    const tok *tk;
    int print_ids;
    int *buf;        /* ids decodable by the tokenizer, in generation order */
    int m;           /* ids in buf */
    int seen;        /* generated ids looked at (ids outside the vocabulary are skipped) */
    int prefix_off, read_off; /* buf[prefix_off, read_off): the context window already printed */
} stream_ctx;

static void stream_reset(stream_ctx *sc) { sc->m = sc->seen = sc->prefix_off = sc->read_off = 0; }

static int fail(const char *msg) {
    fprintf(stderr, "llama-adapter " CMD ": %s\n", msg);
    return 1;
}

static int usage(const char *msg) {
    fprintf(stderr, "llama-adapter " CMD ": %s (see llama-adapter " CMD " --help)\n", msg);
    return 2;
}

/* "5,6,7" -> ids; "" -> none. 0, or -1 with err. */
static int parse_ids(const char *s, int **ids, int *n, char *err, size_t errlen) {
    *ids = NULL;
    *n = 0;
    size_t cap = 1;
    for (const char *c = s; *c; c++) cap += *c == ',';
    int *v = malloc(cap * sizeof(int));
    if (!v) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int k = 0;
    const char *c = s;
    while (*c == ' ') c++;
    if (*c) {
        for (;;) {
            char *end;
            errno = 0;
            long x = strtol(c, &end, 10);
            while (end != c && *end == ' ') end++;
            if (end == c || errno || x < 0 || x > INT_MAX || (*end && *end != ',')) {
                snprintf(err, errlen, "--prompt-ids: item %d of '%s': expected a non-negative integer (ids like 1,5,6)",
                         k, s);
                free(v);
                return -1;
            }
            v[k++] = (int)x;
            if (!*end) break;
            c = end + 1;
        }
    }
    *ids = v;
    *n = k;
    return 0;
}

/* [bos] + encode(text) */
static int encode_prompt(const tok *tk, int bos, const char *text, prompt_item *it, char *err, size_t errlen) {
    int *ids = NULL, n = 0;
    if (tok_encode(tk, text, &ids, &n, err, errlen)) return -1;
    it->ids = malloc((size_t)(n + 1) * sizeof(int));
    if (!it->ids) {
        free(ids);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    it->n = 0;
    if (bos >= 0) it->ids[it->n++] = bos;
    if (n) memcpy(it->ids + it->n, ids, (size_t)n * sizeof(int));
    it->n += n;
    free(ids);
    return 0;
}

/* Reads one instruction per non-empty line of path into *lines (each malloc'ed). */
static int read_lines(const char *path, char ***lines, int *n, char *err, size_t errlen) {
    *lines = NULL;
    *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int cap_lines = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (len == 0) continue;
        if (*n == cap_lines) {
            cap_lines = cap_lines ? 2 * cap_lines : 16;
            char **l = realloc(*lines, (size_t)cap_lines * sizeof(char *));
            if (!l) break;
            *lines = l;
        }
        (*lines)[(*n)++] = strdup(line);
    }
    int bad = ferror(f);
    free(line);
    fclose(f);
    if (bad) {
        snprintf(err, errlen, "%s: read error", path);
        return -1;
    }
    if (*n == 0) {
        snprintf(err, errlen, "%s: no instruction: expected one instruction per line", path);
        return -1;
    }
    return 0;
}

/* Prints the text of the new pieces only. The window buf[prefix_off, m) is decoded and the
 * decoding of its already printed part buf[prefix_off, read_off) is cut off the front: the
 * piece before the new ones gives them their context (a leading space is only dropped at the
 * very start; byte pieces join into one multi-byte character), so the output is byte for byte
 * the decoding of the whole list, at the cost of a few pieces per token instead of all of them.
 * An incomplete character at the end (decoded as U+FFFD) is held back until the next token
 * completes it, or until `final`. */
static void stream_text(stream_ctx *sc, const int *ids, int n, int final) {
    int V = tok_vocab_size(sc->tk);
    for (; sc->seen < n; sc->seen++)
        if (ids[sc->seen] >= 0 && ids[sc->seen] < V) sc->buf[sc->m++] = ids[sc->seen];
    char *pre = tok_decode(sc->tk, sc->buf + sc->prefix_off, sc->read_off - sc->prefix_off);
    char *s = tok_decode(sc->tk, sc->buf + sc->prefix_off, sc->m - sc->prefix_off);
    if (pre && s) {
        size_t lp = strlen(pre), len = strlen(s);
        int held = len >= 3 && !memcmp(s + len - 3, "\xEF\xBF\xBD", 3);
        if (len > lp && (final || !held)) {
            fwrite(s + lp, 1, len - lp, stdout);
            fflush(stdout);
            sc->prefix_off = sc->read_off;
            sc->read_off = sc->m;
        }
    }
    free(pre);
    free(s);
}

static int on_token(void *ctx, const int *ids, int n) {
    stream_ctx *sc = ctx;
    if (sc->print_ids) {
        printf(n > 1 ? " %d" : "%d", ids[n - 1]);
        fflush(stdout);
    } else {
        stream_text(sc, ids, n, 0);
    }
    return 0;
}

int cmd_generate(int argc, char **argv) {
    const char *model_path = NULL, *tok_path = NULL, *adapter_path = NULL, *instruction = NULL, *input = NULL,
               *prompt = NULL, *prompt_file = NULL, *prompt_ids = NULL;
    float temperature = 0.1f, top_p = 0.75f;
    long long seed = 0;
    int max_new = 256, print_ids = 0, adapter_len = 10, threads = 0, bf16 = 0;
    const char *precision = "auto";
    /* answer sheets (trainer/answers.h) */
    const char *data_path = NULL, *out_path = NULL, *score = NULL;
    int no_base = 0, parallel = 0, progress_every = 25;
    arg_spec specs[] = {
        {"model", ARG_STR, &model_path, "model: HF directory or llama2.c .bin (required)", 0},
        {"tokenizer", ARG_STR, &tok_path, "SentencePiece .model (not needed with --prompt-ids --print-ids)", 0},
        {"adapter", ARG_STR, &adapter_path, "adapter export, training checkpoint or run directory (with --data: repeat, one column each)", 0},
        {"instruction", ARG_STR, &instruction, "instruction, wrapped in the Alpaca template", 0},
        {"input", ARG_STR, &input, "input of the instruction (optional)", 0},
        {"prompt", ARG_STR, &prompt, "raw prompt text (no template)", 0},
        {"prompt-file", ARG_STR, &prompt_file, "file with one instruction per line, each generated in turn", 0},
        {"prompt-ids", ARG_STR, &prompt_ids, "comma-separated prompt token ids ('' = bos alone)", 0},
        {"temperature", ARG_FLOAT, &temperature, "sampling temperature, 0 = greedy (with --data: 0 unless given)", 0},
        {"top-p", ARG_FLOAT, &top_p, "nucleus sampling mass in (0, 1]", 0},
        {"seed", ARG_I64, &seed, "sampling seed", 0},
        {"max-new-tokens", ARG_INT, &max_new, "most tokens generated per prompt", 0},
        {"print-ids", ARG_FLAG, &print_ids, "print generated token ids instead of text", 0},
        {"adapter-len", ARG_INT, &adapter_len, "adapter_len of an adapter file without metadata", 0},
        {"threads", ARG_INT, &threads, "OpenMP threads (0 = all)", 0},
        {"precision", ARG_STR, &precision, "auto | f32 | bf16: GEMMs of prompt forwards (auto: bf16 where the CPU has AVX512-BF16)", 0},
        {"data", ARG_STR, &data_path, "answer sheet: every instruction of this Alpaca JSON file (needs --out)", 0},
        {"out", ARG_STR, &out_path, "answer sheet: answers.jsonl to write (answers.md beside it)", 0},
        {"score", ARG_STR, &score, "answer sheet: exact | contains: accuracy of each column against the reference", 0},
        {"no-base", ARG_FLAG, &no_base, "answer sheet: no base-model column (adapters only)", 0},
        {"parallel", ARG_INT, &parallel, "answer sheet: examples answered at once (0 = auto: all threads for models up to 64 MB)", 0},
        {"progress-every", ARG_INT, &progress_every, "answer sheet: a progress line every N answers when stderr is not a terminal", 0},
    };
    int n_specs = (int)(sizeof specs / sizeof specs[0]);
    int rc = args_parse(CMD, USAGE_LINE, argc, argv, specs, n_specs, NULL, 0, NULL);
    if (rc) return rc > 0 ? 0 : 2;
    /* --adapter may repeat with --data (one column each); args_parse kept the last */
    const char *adapters[64];
    int n_adapters = 0;
    for (int i = 1; i < argc; i++) {
        const char *v = !strcmp(argv[i], "--adapter") && i + 1 < argc ? argv[++i]
                        : !strncmp(argv[i], "--adapter=", 10)         ? argv[i] + 10
                                                                      : NULL;
        if (v && n_adapters == 64) return usage("more than 64 --adapter columns");
        if (v) adapters[n_adapters++] = v;
    }
    if (data_path) {
        if (instruction || input || prompt || prompt_file || prompt_ids || print_ids)
            return usage("--data answers a whole file: not with --instruction, --input, --prompt, --prompt-file, "
                         "--prompt-ids or --print-ids");
        answers_cli a = {model_path, tok_path, data_path, out_path, score, precision, adapters, n_adapters, no_base,
                         max_new, adapter_len, threads, parallel, progress_every,
                         args_find(specs, n_specs, "temperature")->seen ? temperature : 0.0f, top_p, seed};
        return answers_cmd(&a);
    }
    if (n_adapters > 1) return usage("--adapter is given more than once: several adapters go with --data FILE");
    if (out_path || score || no_base)
        return usage("--out, --score and --no-base go with --data FILE (answer sheets)");

    /* ---- flag checks (usage errors, exit 2) ---- */
    if (!model_path) return usage("missing --model M");
    int n_src = !!instruction + !!prompt + !!prompt_file + !!prompt_ids;
    if (n_src != 1)
        return usage(n_src ? "give only one of --instruction, --prompt, --prompt-file, --prompt-ids"
                           : "missing the prompt: --instruction S, --prompt S, --prompt-file F or --prompt-ids 1,2,3");
    if (input && !instruction) return usage("--input goes with --instruction");
    if (!tok_path && !(prompt_ids && print_ids))
        return usage("missing --tokenizer T (only --prompt-ids with --print-ids can do without)");
    if (!(temperature >= 0.0f) || temperature > 1e6f) return usage("--temperature: expected a number >= 0");
    if (!(top_p > 0.0f && top_p <= 1.0f)) return usage("--top-p: expected a number in (0, 1]");
    if (max_new < 0) return usage("--max-new-tokens: expected an integer >= 0");
    if (adapter_len < 1) return usage("--adapter-len: expected an integer >= 1");
    if (threads < 0) return usage("--threads: expected an integer >= 0");
    char err[1024], msg[6144];
    int *pid = NULL, n_pid = 0;
    if (prompt_ids && parse_ids(prompt_ids, &pid, &n_pid, err, sizeof err)) return usage(err);
    if (threads > 0) omp_set_num_threads(threads);
    char pdesc[200], perr[300];
    if (precision_resolve(precision, &bf16, pdesc, sizeof pdesc, perr, sizeof perr)) return usage(perr);

    /* ---- inputs (bad input, exit 1) ---- */
    int status = 1, n_items = 0;
    prompt_item *items = NULL;
    char **lines = NULL;
    int n_lines = 0;
    tok *tk = NULL;
    trainable ad;
    int have_ad = 0;
    gen_engine *eng = NULL;
    gen_sampler smp = {0};
    int *out = NULL;
    stream_ctx sc = {0};
    model_weights w;
    memset(&w, 0, sizeof w);
    if (model_load(model_path, &w, err, sizeof err)) {
        free(pid);
        return fail(err);
    }
    const llama_config *c = &w.cfg;
    int bos = 1, eos = 2;
    if (tok_path) {
        tk = tok_load(tok_path, err, sizeof err);
        if (!tk) {
            fail(err);
            goto done;
        }
        bos = tok_bos(tk);
        eos = tok_eos(tk);
    }
    if (adapter_path) {
        char resolved[4096];
        adapter_data a;
        if (ckpt_resolve(adapter_path, resolved, sizeof resolved, err, sizeof err) ||
            adapter_import(resolved, adapter_len, c->n_layers, c->n_heads, c->dim, &a, err, sizeof err)) {
            fail(err);
            goto done;
        }
        rc = trainable_adapter_from(&ad, c, &a, err, sizeof err);
        adapter_data_free(&a);
        if (rc) {
            snprintf(msg, sizeof msg, "%s: %s", resolved, err);
            fail(msg);
            goto done;
        }
        have_ad = 1;
    }

    /* prompts -> ids */
    if (prompt_file && read_lines(prompt_file, &lines, &n_lines, err, sizeof err)) {
        fail(err);
        goto done;
    }
    n_items = prompt_file ? n_lines : 1;
    items = calloc((size_t)n_items, sizeof *items);
    if (!items) {
        fail("out of memory");
        goto done;
    }
    if (prompt_ids) {
        items[0].ids = malloc((size_t)(n_pid + 1) * sizeof(int));
        if (!items[0].ids) {
            fail("out of memory");
            goto done;
        }
        if (bos >= 0) items[0].ids[items[0].n++] = bos;
        memcpy(items[0].ids + items[0].n, pid, (size_t)n_pid * sizeof(int));
        items[0].n += n_pid;
        items[0].label = strdup(prompt_ids);
    } else {
        for (int i = 0; i < n_items; i++) {
            const char *instr = prompt_file ? lines[i] : instruction;
            char *text = prompt ? strdup(prompt) : alpaca_prompt(instr, input ? input : "");
            if (!text) {
                fail("out of memory");
                goto done;
            }
            int r = encode_prompt(tk, bos, text, &items[i], err, sizeof err);
            free(text);
            if (r) {
                if (prompt_file) snprintf(msg, sizeof msg, "%s: line %d: %s", prompt_file, i + 1, err);
                else snprintf(msg, sizeof msg, "%s", err);
                fail(msg);
                goto done;
            }
            items[i].label = strdup(prompt ? prompt : instr);
        }
    }
    int max_prompt = 0;
    for (int i = 0; i < n_items; i++) {
        prompt_item *it = &items[i];
        if (it->n == 0) {
            fail("empty prompt: the tokenizer has no bos and the prompt no tokens");
            goto done;
        }
        for (int j = 0; j < it->n; j++)
            if (it->ids[j] < 0 || it->ids[j] >= c->vocab_size) {
                snprintf(msg, sizeof msg, "%s: prompt %d, token %d is id %d: outside the model's vocabulary [0, %d)",
                         model_path, i, j, it->ids[j], c->vocab_size);
                fail(msg);
                goto done;
            }
        if (c->max_seq_len > 0 && it->n >= c->max_seq_len) {
            snprintf(msg, sizeof msg, "%s: prompt %d has %d tokens: the model's max_seq_len %d leaves no room to generate",
                     model_path, i, it->n, c->max_seq_len);
            fail(msg);
            goto done;
        }
        if (it->n > max_prompt) max_prompt = it->n;
    }
    long long want = (long long)max_prompt + max_new;
    int max_len = (int)(want > INT_MAX ? INT_MAX : want);
    if (c->max_seq_len > 0 && max_len > c->max_seq_len) max_len = c->max_seq_len;
    eng = gen_engine_new(&w, have_ad ? &ad : NULL, max_len, err, sizeof err);
    if (eng) gen_engine_set_bf16(eng, bf16);
    if (!eng) {
        fail(err);
        goto done;
    }
    if (gen_sampler_init(&smp, c->vocab_size, temperature, top_p, (uint64_t)seed) ||
        !(out = malloc((size_t)(max_new ? max_new : 1) * sizeof(int))) ||
        !(sc.buf = malloc((size_t)(max_new ? max_new : 1) * sizeof(int)))) {
        fail("out of memory");
        goto done;
    }
    sc.tk = tk;
    sc.print_ids = print_ids;

    fprintf(stderr, "generate: %s (%s, dim %d, %d layers, %d/%d heads, vocab %d, max_seq_len %d)%s%s\n", model_path,
            w.format, c->dim, c->n_layers, c->n_heads, c->n_kv_heads, c->vocab_size, c->max_seq_len,
            have_ad ? ", adapter " : "", have_ad ? adapter_path : "");
    if (have_ad)
        fprintf(stderr, "generate: adapter_len %d, adapter_layer %d, gate %s\n", ad.K, ad.L,
                ad.gate_act == GATE_TANH ? "tanh" : "identity");
    fprintf(stderr, "generate: %s\n", pdesc);
    fprintf(stderr, "generate: temperature %g, top_p %g, seed %lld, max_new_tokens %d, threads %d\n",
            (double)temperature, (double)top_p, seed, max_new, omp_get_max_threads());

    for (int i = 0; i < n_items; i++) {
        if (n_items > 1) {
            printf("%s=== [%d/%d] %s\n", i ? "\n" : "", i + 1, n_items, items[i].label);
            fflush(stdout);
        }
        stream_reset(&sc);
        gen_stats st;
        int n = gen_generate(eng, items[i].ids, items[i].n, max_new, eos, &smp, out, on_token, &sc, &st, err,
                             sizeof err);
        if (n < 0) {
            printf("\n");
            fail(err);
            goto done;
        }
        if (!print_ids && n > 0) stream_text(&sc, out, n, 1);
        printf("\n");
        fflush(stdout);
        fprintf(stderr, "generate: prompt %d tokens in %.3f s (%.1f tok/s); generated %d tokens%s, %d decode steps "
                "in %.3f s (%.1f tok/s)\n",
                st.n_prompt, st.prompt_s, st.prompt_s > 0 ? st.n_prompt / st.prompt_s : 0.0, st.n_gen,
                st.hit_eos ? " (stopped at eos)" : "", st.n_decode, st.decode_s,
                st.decode_s > 0 ? st.n_decode / st.decode_s : 0.0);
    }
    status = 0;

done:
    free(sc.buf);
    free(out);
    gen_sampler_free(&smp);
    gen_engine_free(eng);
    for (int i = 0; i < n_items && items; i++) {
        free(items[i].ids);
        free(items[i].label);
    }
    free(items);
    for (int i = 0; i < n_lines; i++) free(lines[i]);
    free(lines);
    if (have_ad) trainable_free(&ad);
    tok_free(tk);
    model_free(&w);
    free(pid);
    return status;
}
