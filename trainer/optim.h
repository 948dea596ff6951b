/* AdamW exactly as PyTorch's torch.optim.AdamW (DESIGN.md §3) over a flat block, and the
 * per-iteration warm-up + half-cycle cosine schedule of the reference (util/lr_sched.py).
 *   p *= 1 - lr*wd;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
 *   p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
 * Ownership: adamw_init allocates m and v; adamw_free releases them. */
#ifndef TRAINER_OPTIM_H
#define TRAINER_OPTIM_H
#include <stddef.h>
#include <stdint.h>

typedef struct adamw {
    size_t n;
    float *m, *v;           /* [n] moments */
    int64_t t;              /* steps taken */
    double beta1, beta2, eps, weight_decay; /* as given (Python floats in PyTorch) */
    /* ranges of the block that take no weight decay (norm weights in full fine-tuning) */
    size_t (*no_decay)[2];  /* [n_no_decay] {offset, count} */
    int n_no_decay;
} adamw;

int adamw_init(adamw *o, size_t n, double beta1, double beta2, double eps, double weight_decay);
void adamw_free(adamw *o);
/* One step at learning rate lr over p with gradient g. */
void adamw_step(adamw *o, float *p, const float *g, double lr);

/* lr at fractional epoch e: lr*e/warmup while e < warmup, then
 * min_lr + (lr - min_lr) * 0.5 * (1 + cos(pi * (e - warmup) / (epochs - warmup))). */
double sched_lr(double e, double lr, double min_lr, double warmup_epochs, double epochs);
#endif
