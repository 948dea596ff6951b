/* Memory plans and budgets (see memory.h). */
#include "trainer/memory.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "autograd/kernels/kernels.h"

double mem_activation_bytes(const llama_config *c, int T, int n_label, int recorded, int recompute, int K) {
    double D = c->dim, Kv = (double)c->n_kv_heads * (c->dim / c->n_heads), F = c->hidden_dim, H = c->n_heads;
    double V = c->vocab_size, N = n_label, t = T;
    if (recorded > c->n_layers) recorded = c->n_layers;
    int frozen = c->n_layers - recorded;
    /* floats per token: a layer's outputs (norm, q, roped q, attention, wo, residual, norm, w2,
     * residual: 9 of width D; k, roped k, v; w1, w3, swiglu), plus rstd x2 and log-sum-exps */
    double layer = t * (9 * D + 3 * Kv + 3 * F);
    double saved = layer + t * (2 + 2 * H) + 4.0 * K * Kv;
    /* gradients alive at once inside one layer's backward (the pool reuses the rest) */
    double grads = t * (3 * F + 3 * D + 2 * Kv);
    double emb = t * D, carry = frozen > 0 ? t * D : 0;
    double frozen_peak = frozen > 0 ? emb + carry + layer : emb;
    double head_fwd = N * (2 * D + V + 3), head_bwd = N * (V + 2 * D) + t * D;
    double peak;
    if (recorded == 0) {
        peak = frozen_peak > emb + carry + head_fwd ? frozen_peak : emb + carry + head_fwd;
    } else if (recompute) {
        double bwd = emb + carry + recorded * t * D + head_fwd + head_bwd + 2 * t * D + saved + grads;
        peak = frozen_peak > bwd ? frozen_peak : bwd;
    } else {
        double bwd = emb + carry + recorded * saved + head_fwd + head_bwd + grads;
        peak = frozen_peak > bwd ? frozen_peak : bwd;
    }
    return 4.0 * peak;
}

double mem_weight_bytes(const model_weights *w, double *mapped) {
    double total = 0, map = 0;
    const llama_config *c = &w->cfg;
    const ag_tensor *top[3] = {&w->tok_emb, &w->norm, c->tied ? NULL : &w->cls};
    for (int l = -1; l < c->n_layers; l++) {
        const ag_tensor *list[9];
        int n = 0;
        if (l < 0) {
            for (int i = 0; i < 3; i++)
                if (top[i]) list[n++] = top[i];
        } else {
            const llama_layer_weights *y = &w->layers[l];
            const ag_tensor *t[9] = {&y->attn_norm, &y->wq, &y->wk, &y->wv, &y->wo, &y->ffn_norm, &y->w1, &y->w2, &y->w3};
            memcpy(list, t, sizeof t);
            n = 9;
        }
        for (int i = 0; i < n; i++) {
            double b = (double)ag_numel(list[i]) * (double)ag_dtype_size(list[i]->dtype);
            total += b;
            if (model_is_mapped(w, list[i])) map += b;
        }
    }
    if (mapped) *mapped = map;
    return total;
}

/* scratch of the biggest op: a 16-bit weight tile (256 rows of the widest input), the
 * attention backward's per-thread tiles or the bf16 GEMM's packed panels; OpenBLAS's
 * per-thread buffers */
static double workspace_bytes(const model_weights *w, int T, int threads) {
    const llama_config *c = &w->cfg;
    double wide = c->hidden_dim > c->dim ? c->hidden_dim : c->dim;
    double lin = w->dtype == AG_F32 ? 0 : 4.0 * 256 * wide;
    /* attention works in 64 x 64 tiles: under 1 MB per thread whatever the length */
    double attn = (double)threads * (1 << 20);
    double gemm = kn_bf16_gemm_available() ? (double)kn_gemm_bf16_workspace(T, (int)wide, (int)wide) : 0;
    double most = lin > attn ? lin : attn;
    return (most > gemm ? most : gemm) + threads * 32.0 * 1024 * 1024;
}

#define BASE_BYTES (160.0 * 1024 * 1024) /* runtime, MPI, OpenBLAS, tokenizer */

mem_plan mem_plan_train(const model_weights *w, int K, int recorded, int full, int T, int recompute, int threads,
                        double data_file_bytes) {
    mem_plan p = {0};
    const llama_config *c = &w->cfg;
    p.weights = mem_weight_bytes(w, NULL);
    if (full) { /* the f32 flat block replaces the model's tensors; grads and two moments beside it */
        double n = (double)model_param_count(c);
        p.weights = 0;
        p.trainable = 16.0 * n;
        recorded = c->n_layers;
    } else {
        p.trainable = 16.0 * ((double)recorded * K * c->dim + (double)recorded * c->n_heads);
    }
    /* the longest micro-batch: every position labelled is the worst case */
    p.activations = mem_activation_bytes(c, T, T, recorded, recompute, full ? 0 : K);
    p.workspace = workspace_bytes(w, T, threads);
    p.data = 3.0 * data_file_bytes; /* JSON text, parsed strings, token ids */
    p.base = BASE_BYTES;
    p.total = p.weights + p.trainable + p.activations + p.workspace + p.data + p.base;
    return p;
}

mem_plan mem_plan_eval(const model_weights *w, int T, int threads, double data_file_bytes) {
    mem_plan p = {0};
    p.weights = mem_weight_bytes(w, NULL);
    p.activations = mem_activation_bytes(&w->cfg, T, T, 0, 0, 0);
    p.workspace = workspace_bytes(w, T, threads);
    p.data = 3.0 * data_file_bytes;
    p.base = BASE_BYTES;
    p.total = p.weights + p.activations + p.workspace + p.data + p.base;
    return p;
}

double mem_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return -1;
    char line[256];
    double kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lf kB", &kb) == 1) break;
    fclose(f);
    return kb < 0 ? -1 : kb * 1024.0;
}

double mem_default_budget(void) {
    double a = mem_available();
    if (a < 0) return -1;
    double margin = a * 0.05 > 512.0 * 1024 * 1024 ? a * 0.05 : 512.0 * 1024 * 1024;
    return a - margin;
}

int mem_parse_size(const char *s, double *bytes) {
    if (!s) return -1;
    if (!strcasecmp(s, "auto")) {
        *bytes = 0;
        return 0;
    }
    char *end;
    double v = strtod(s, &end);
    if (end == s || !(v > 0) || v > 1e18) return -1;
    double mult = 1;
    switch (toupper((unsigned char)*end)) {
    case 0: break;
    case 'K': mult = 1024.0; end++; break;
    case 'M': mult = 1024.0 * 1024; end++; break;
    case 'G': mult = 1024.0 * 1024 * 1024; end++; break;
    case 'T': mult = 1024.0 * 1024 * 1024 * 1024; end++; break;
    default: return -1;
    }
    if (mult > 1 && (!strcasecmp(end, "iB") || !strcasecmp(end, "B"))) end += strlen(end);
    if (*end) return -1;
    *bytes = v * mult;
    return 0;
}

void mem_human(char *buf, size_t n, double bytes) {
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (bytes >= 1024 && i < 4) {
        bytes /= 1024;
        i++;
    }
    snprintf(buf, n, "%.1f %s", bytes, u[i]);
}
