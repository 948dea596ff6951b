/* Atomic file replacement (see atomic.h). POSIX: fsync + rename + directory fsync. */
#include "checkpoints/atomic.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <string.h>
#include <unistd.h>

static void fsync_dir_of(const char *path) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    int fd = open(dirname(buf), O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

int atomic_open(atomic_file *a, const char *path, char *err, size_t errlen) {
    if (snprintf(a->path, sizeof a->path, "%s", path) >= (int)sizeof a->path ||
        snprintf(a->tmp, sizeof a->tmp, "%s.tmp", path) >= (int)sizeof a->tmp) {
        snprintf(err, errlen, "%s: path too long", path);
        return -1;
    }
    a->f = fopen(a->tmp, "wb");
    if (!a->f) {
        snprintf(err, errlen, "%s: cannot create: %s", a->tmp, strerror(errno));
        return -1;
    }
    return 0;
}

int atomic_rename(const char *tmp, const char *path, char *err, size_t errlen) {
    int fd = open(tmp, O_RDONLY);
    if (fd < 0 || fsync(fd) != 0) {
        snprintf(err, errlen, "%s: cannot sync: %s", tmp, strerror(errno));
        if (fd >= 0) close(fd);
        unlink(tmp);
        return -1;
    }
    close(fd);
    if (rename(tmp, path) != 0) {
        snprintf(err, errlen, "%s: cannot rename into place: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    fsync_dir_of(path);
    return 0;
}

int atomic_commit(atomic_file *a, char *err, size_t errlen) {
    int bad = ferror(a->f) || fflush(a->f) != 0;
    if (fclose(a->f) != 0) bad = 1;
    a->f = NULL;
    if (bad) {
        snprintf(err, errlen, "%s: write failed: %s", a->tmp, strerror(errno));
        unlink(a->tmp);
        return -1;
    }
    return atomic_rename(a->tmp, a->path, err, errlen);
}

void atomic_abort(atomic_file *a) {
    if (a->f) fclose(a->f);
    a->f = NULL;
    unlink(a->tmp);
}
