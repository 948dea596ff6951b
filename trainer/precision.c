/* --precision (see precision.h). */
#include "trainer/precision.h"

#include <stdio.h>
#include <string.h>

#include "autograd/kernels/kernels.h"

int precision_resolve(const char *s, int *bf16, char *desc, size_t descn, char *err, size_t errlen) {
    const kn_cpu_info *cpu = kn_cpu();
    int have = kn_bf16_gemm_available();
    if (!s || (strcmp(s, "auto") && strcmp(s, "f32") && strcmp(s, "bf16"))) {
        snprintf(err, errlen, "--precision '%s': expected auto, f32 or bf16", s ? s : "(null)");
        return -1;
    }
    if (!strcmp(s, "bf16") && !have) {
        snprintf(err, errlen, "--precision bf16: this CPU (%s) has no AVX512-BF16: use --precision f32 (or auto)",
                 cpu->brand[0] ? cpu->brand : "unknown");
        return -1;
    }
    *bf16 = !strcmp(s, "bf16") || (!strcmp(s, "auto") && have);
    const char *why = !strcmp(s, "auto") ? "auto" : "--precision";
    if (*bf16)
        snprintf(desc, descn, "compute: bf16 on AVX512-BF16 (vdpbf16ps, f32 sums; %s%s)", why,
                 cpu->amx_bf16 ? "; AMX tiles present, no AMX kernel yet" : "");
    else
        snprintf(desc, descn, "compute: f32 (OpenBLAS sgemm; %s%s)", why,
                 have ? "" : !strcmp(s, "auto") ? ": this CPU has no AVX512-BF16" : "");
    return 0;
}
