/* CPU feature detection for the kernels: which vector instruction sets this CPU has AND the
 * operating system has enabled (cpuid for the CPU, xgetbv/XCR0 for the register state the OS
 * saves on a context switch), plus the cpuid brand string. Detected once, on first use
 * (pthread_once), then read-only.
 *
 * What it does not do: choose kernels (the callers do, e.g. kn_bf16_gemm_available()), read
 * /proc/cpuinfo, or ask Linux for AMX permission (arch_prctl(ARCH_REQ_XCOMP_PERM)): amx_tile and
 * amx_bf16 say that the CPU has AMX and XCR0 enables the tile state, which is what a caller needs
 * to report it; no kernel here uses AMX. On a non-x86 CPU every flag is 0 and the brand says so. */
#include <pthread.h>
#include <string.h>

#include "autograd/kernels/kernels.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define KN_CPU_X86 1
#endif

static kn_cpu_info cpu_info;
static pthread_once_t cpu_once = PTHREAD_ONCE_INIT;

#ifdef KN_CPU_X86
/* XCR0 (which register states the OS saves); callers check OSXSAVE first. */
static uint64_t read_xcr0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static void detect_x86(kn_cpu_info *ci) {
    unsigned a, b, c, d, max_leaf = __get_cpuid_max(0, NULL);
    if (max_leaf < 1) return;
    __cpuid(1, a, b, c, d);
    int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, f16c = (c >> 29) & 1;
    uint64_t xcr0 = osxsave ? read_xcr0() : 0;
    int os_ymm = (xcr0 & 0x6) == 0x6;                 /* SSE + AVX state */
    int os_zmm = os_ymm && (xcr0 & 0xe0) == 0xe0;     /* opmask, ZMM_Hi256, Hi16_ZMM */
    int os_amx = (xcr0 & 0x60000) == 0x60000;         /* XTILECFG, XTILEDATA */
    unsigned b7 = 0, d7 = 0, a71 = 0;
    if (max_leaf >= 7) {
        __cpuid_count(7, 0, a, b7, c, d7);
        unsigned sub_max = a;
        if (sub_max >= 1) __cpuid_count(7, 1, a71, b, c, d);
    }
    ci->fma = os_ymm && avx && fma;
    ci->f16c = os_ymm && avx && f16c;
    ci->avx2 = os_ymm && avx && ((b7 >> 5) & 1);
    ci->avx512f = os_zmm && ((b7 >> 16) & 1);
    ci->avx512bw = ci->avx512f && ((b7 >> 30) & 1);
    int vl = (b7 >> 31) & 1, dq = (b7 >> 17) & 1;
    /* The BF16 instructions together with the F/BW/VL/DQ subsets the bf16 GEMM is compiled for
     * (every CPU with AVX512-BF16 so far has them all). */
    ci->avx512bf16 = ci->avx512bw && vl && dq && ((a71 >> 5) & 1);
    ci->amx_tile = os_amx && ((d7 >> 24) & 1);
    ci->amx_bf16 = ci->amx_tile && ((d7 >> 22) & 1);

    unsigned words[12];
    if (__get_cpuid_max(0x80000000u, NULL) >= 0x80000004u) {
        for (unsigned i = 0; i < 3; i++)
            __cpuid(0x80000002u + i, words[4 * i], words[4 * i + 1], words[4 * i + 2], words[4 * i + 3]);
        char raw[49];
        memcpy(raw, words, 48);
        raw[48] = '\0';
        const char *s = raw;
        while (*s == ' ') s++;
        size_t n = strlen(s);
        while (n > 0 && s[n - 1] == ' ') n--;
        if (n >= sizeof ci->brand) n = sizeof ci->brand - 1;
        memcpy(ci->brand, s, n);
        ci->brand[n] = '\0';
    }
}
#endif

static void detect(void) {
    memset(&cpu_info, 0, sizeof cpu_info);
#ifdef KN_CPU_X86
    detect_x86(&cpu_info);
    if (!cpu_info.brand[0]) strcpy(cpu_info.brand, "unknown x86 CPU");
#else
    strcpy(cpu_info.brand, "non-x86 CPU");
#endif
}

const kn_cpu_info *kn_cpu(void) {
    pthread_once(&cpu_once, detect);
    return &cpu_info;
}
