/* AdamW and the learning-rate schedule (see optim.h). Element math in float, as PyTorch's
 * single-tensor AdamW on f32 tensors; the scalar factors (bias corrections, step size) in
 * double, as PyTorch computes them in Python floats. */
#include "trainer/optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int adamw_init(adamw *o, size_t n, double beta1, double beta2, double eps, double weight_decay) {
    memset(o, 0, sizeof *o);
    o->n = n;
    o->m = calloc(n ? n : 1, sizeof(float));
    o->v = calloc(n ? n : 1, sizeof(float));
    o->beta1 = beta1;
    o->beta2 = beta2;
    o->eps = eps;
    o->weight_decay = weight_decay;
    return o->m && o->v ? 0 : -1;
}

void adamw_free(adamw *o) {
    free(o->m);
    free(o->v);
    free(o->no_decay);
    memset(o, 0, sizeof *o);
}

static void update(adamw *o, float *p, const float *g, size_t lo, size_t hi, float decay, float step_size,
                   float bc2_sqrt) {
    /* each scalar rounded to float once, from its double value, as PyTorch does */
    const float b2 = (float)o->beta2, eps = (float)o->eps, w1 = (float)(1.0 - o->beta1), w2 = (float)(1.0 - o->beta2);
    float *m = o->m, *v = o->v;
    #pragma omp parallel for schedule(static) if (hi - lo > 65536)
    for (size_t i = lo; i < hi; i++) {
        p[i] *= decay;
        m[i] = m[i] + w1 * (g[i] - m[i]);           /* exp_avg.lerp_(grad, 1 - beta1) */
        v[i] = v[i] * b2 + (w2 * g[i]) * g[i];      /* exp_avg_sq.mul_(b2).addcmul_(g, g, 1 - b2) */
        float denom = sqrtf(v[i]) / bc2_sqrt + eps;
        p[i] -= step_size * (m[i] / denom);
    }
}

void adamw_step(adamw *o, float *p, const float *g, double lr) {
    o->t++;
    double bc1 = 1.0 - pow(o->beta1, (double)o->t);
    double bc2 = 1.0 - pow(o->beta2, (double)o->t);
    float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    float decay = (float)(1.0 - lr * o->weight_decay);
    size_t at = 0;
    for (int r = 0; r < o->n_no_decay; r++) { /* ranges are sorted and disjoint */
        size_t off = o->no_decay[r][0], cnt = o->no_decay[r][1];
        update(o, p, g, at, off, decay, step_size, bc2_sqrt);
        update(o, p, g, off, off + cnt, 1.0f, step_size, bc2_sqrt);
        at = off + cnt;
    }
    update(o, p, g, at, o->n, decay, step_size, bc2_sqrt);
}

double sched_lr(double e, double lr, double min_lr, double warmup_epochs, double epochs) {
    if (e < warmup_epochs) return lr * e / warmup_epochs;
    if (epochs <= warmup_epochs) return lr;
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + cos(M_PI * (e - warmup_epochs) / (epochs - warmup_epochs)));
}
