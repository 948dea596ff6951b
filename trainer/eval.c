/* Dataset evaluation (see eval.h) and the `eval` subcommand. */
#include "trainer/eval.h"

#include <math.h>
#include <omp.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoints/adapter_file.h"
#include "trainer/args.h"
#include "trainer/cli.h"
#include "trainer/llama.h"
#include "trainer/memory.h"
#include "trainer/precision.h"

eval_result eval_dataset(ag_tape *t, const model_weights *w, const trainable *ad, const dataset *d, int batch_size) {
    eval_result r = {0, 0, 0, 0};
    double t0 = omp_get_wtime(), sum = 0;
    loader ld;
    if (loader_init(&ld, d, batch_size, 0, 0)) return r;
    int saved = t->no_grad, *idx = malloc(sizeof(int) * (size_t)batch_size);
    t->no_grad = 1;
    for (int i0 = 0; i0 < d->n; i0 += batch_size) {
        int n = d->n - i0 < batch_size ? d->n - i0 : batch_size;
        for (int i = 0; i < n; i++) idx[i] = i0 + i;
        const microbatch *mb = loader_pack(&ld, idx, n);
        ag_tape_reset(t);
        ag_arena_reset(t->arena);
        int n_loss = 0;
        ag_tensor *loss = llama_loss(t, w, ad, mb, &n_loss);
        sum += (double)ag_f32(loss)[0] * n_loss;
        r.tokens += n_loss;
        r.total += mb->T;
    }
    t->no_grad = saved;
    ag_tape_reset(t);
    ag_arena_reset(t->arena);
    free(idx);
    loader_free(&ld);
    r.loss = r.tokens ? sum / (double)r.tokens : 0.0;
    r.seconds = omp_get_wtime() - t0;
    return r;
}

/* Loads an adapter for the model from an export, a checkpoint or a run directory. */
int load_adapter_for(const char *path, const model_weights *w, int default_len, trainable *tr, char *err, size_t errlen) {
    char file[4096];
    if (ckpt_resolve(path, file, sizeof file, err, errlen)) return -1;
    adapter_data a;
    if (adapter_import(file, default_len, w->cfg.n_layers, w->cfg.n_heads, w->cfg.dim, &a, err, errlen)) return -1;
    int r = trainable_adapter_from(tr, &w->cfg, &a, err, errlen);
    adapter_data_free(&a);
    return r;
}

int cmd_eval(int argc, char **argv) {
    const char *model = NULL, *tokp = NULL, *data = NULL, *adapter = NULL, *format = "auto", *budget_s = "auto", *precision = "auto";
    int max_seq_len = 512, batch_size = 4, adapter_len = 10, threads = 0;
    arg_spec specs[] = {
        {"model", ARG_STR, &model, "base model: HF Llama directory or llama2.c .bin", 0},
        {"tokenizer", ARG_STR, &tokp, "SentencePiece .model", 0},
        {"data", ARG_STR, &data, "Alpaca-format JSON (or plain text, see --data-format)", 0},
        {"data-format", ARG_STR, &format, "auto (.txt = text) | alpaca | text (one document per line)", 0},
        {"adapter", ARG_STR, &adapter, "adapter export, checkpoint or run directory (none: the base model)", 0},
        {"adapter-len", ARG_INT, &adapter_len, "K for adapter files without metadata", 0},
        {"max-seq-len", ARG_INT, &max_seq_len, "truncate examples to this many tokens", 0},
        {"batch-size", ARG_INT, &batch_size, "examples per forward pass", 0},
        {"threads", ARG_INT, &threads, "threads (0: all cores)", 0},
        {"precision", ARG_STR, &precision, "auto | f32 | bf16: GEMM precision (auto: bf16 where the CPU has AVX512-BF16)", 0},
        {"memory-budget", ARG_STR, &budget_s, "auto (memory available at start-up minus 5%) or a size such as 20G", 0},
    };
    int r = args_parse("eval", "--model M --tokenizer T --data D [--adapter A] [options]", argc, argv, specs,
                       (int)(sizeof specs / sizeof specs[0]), NULL, 0, NULL);
    if (r) return r > 0 ? 0 : 2;
    if (!model || !tokp || !data) {
        fprintf(stderr, "llama-adapter eval: --model, --tokenizer and --data are required (see --help)\n");
        return 2;
    }
    if (max_seq_len < 2 || batch_size < 1 || threads < 0) {
        fprintf(stderr, "llama-adapter eval: --max-seq-len >= 2, --batch-size >= 1, --threads >= 0 expected\n");
        return 2;
    }
    double budget = 0;
    if (mem_parse_size(budget_s, &budget)) {
        fprintf(stderr, "llama-adapter eval: --memory-budget '%s': expected auto or a size such as 20G, 512M\n", budget_s);
        return 2;
    }
    if (threads > 0) omp_set_num_threads(threads);
    char err[1024], pdesc[200];
    int bf16 = 0;
    if (precision_resolve(precision, &bf16, pdesc, sizeof pdesc, err, sizeof err)) {
        fprintf(stderr, "llama-adapter eval: %s\n", err);
        return 2;
    }
    model_weights w;
    tok *tk = NULL;
    alpaca_set raw = {0};
    dataset d;
    memset(&d, 0, sizeof d);
    trainable tr;
    memset(&tr, 0, sizeof tr);
    int status = 1;
    if (model_load(model, &w, err, sizeof err)) {
        fprintf(stderr, "llama-adapter eval: %s\n", err);
        return 1;
    }
    { /* the memory plan, before the data is read */
        struct stat st;
        mem_plan p = mem_plan_eval(&w, batch_size * max_seq_len, omp_get_max_threads(),
                                   stat(data, &st) == 0 ? (double)st.st_size : 0);
        int from_flag = budget > 0;
        if (!from_flag) budget = mem_default_budget();
        if (budget > 0 && p.total > budget) {
            char need[32], have[32], wb[32];
            mem_human(need, sizeof need, p.total);
            mem_human(have, sizeof have, budget);
            mem_human(wb, sizeof wb, p.weights);
            fprintf(stderr, "llama-adapter eval: this run needs about %s (weights %s) but the memory budget is %s (%s): lower it "
                            "with --batch-size (now %d) or --max-seq-len (now %d)%s\n",
                    need, wb, have, from_flag ? "--memory-budget" : "available memory minus 5%", batch_size, max_seq_len,
                    from_flag ? ", or raise --memory-budget" : "");
            model_free(&w);
            return 1;
        }
    }
    if (!(tk = tok_load(tokp, err, sizeof err)) || data_load(data, format, &raw, err, sizeof err) ||
        dataset_build(&d, &raw, tk, max_seq_len, err, sizeof err) ||
        (adapter && load_adapter_for(adapter, &w, adapter_len, &tr, err, sizeof err))) {
        fprintf(stderr, "llama-adapter eval: %s\n", err);
        goto done;
    }
    if (tok_vocab_size(tk) > w.cfg.vocab_size) {
        fprintf(stderr, "llama-adapter eval: %s: tokenizer has %d pieces, the model only %d\n", tokp,
                tok_vocab_size(tk), w.cfg.vocab_size);
        goto done;
    }
    ag_arena arena;
    ag_arena_init(&arena, 1 << 24);
    ag_tape tape;
    ag_tape_init(&tape, &arena);
    tape.bf16 = bf16;
    fprintf(stderr, "eval: %s\n", pdesc);
    eval_result er = eval_dataset(&tape, &w, adapter ? &tr : NULL, &d, batch_size);
    printf("{\"loss\":%.9g,\"tokens\":%lld,\"ppl\":%.9g}\n", er.loss, (long long)er.tokens, exp(er.loss));
    fprintf(stderr, "eval: %d examples, %lld tokens (%lld with a label) in %.2f s: %.0f tokens/s\n", d.n,
            (long long)er.total, (long long)er.tokens, er.seconds, er.total / (er.seconds > 0 ? er.seconds : 1));
    ag_tape_free(&tape);
    ag_arena_free(&arena);
    status = 0;
done:
    trainable_free(&tr);
    dataset_free(&d);
    alpaca_free(&raw);
    tok_free(tk);
    model_free(&w);
    return status;
}
