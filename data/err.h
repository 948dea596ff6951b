/* One-line error messages for the data modules (C and the C++ tokenizer shim): formats into
 * err[errlen] and folds any newline into a space, so a message is always one line. */
#ifndef DATA_ERR_H
#define DATA_ERR_H
#include <stdarg.h>
#include <stdio.h>

static inline void data_set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static inline void data_set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    for (char *p = err; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
}
#endif
