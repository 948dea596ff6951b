/* Run directory lock and contents check (see run_dir.h). POSIX: flock(), kill(pid, 0). */
#include "checkpoints/run_dir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static int mkdir_p(const char *path, char *err, size_t errlen) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
        snprintf(err, errlen, "%.200s...: path too long", path);
        return -1;
    }
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || !*p) {
            char keep = *p;
            *p = 0;
            if (mkdir(buf, 0777) != 0 && errno != EEXIST) {
                snprintf(err, errlen, "%s: cannot create directory: %s", buf, strerror(errno));
                return -1;
            }
            *p = keep;
            if (!keep) break;
        }
    }
    return 0;
}

/* "ckpt-<digits>.h5" -> step; "ckpt-<digits>.h5.tmp" -> step with *tmp = 1; else -1. */
static int64_t ckpt_step_of(const char *name, int *tmp) {
    *tmp = 0;
    if (strncmp(name, "ckpt-", 5) != 0) return -1;
    const char *p = name + 5;
    int64_t step = 0;
    int digits = 0;
    while (*p >= '0' && *p <= '9' && digits < 18) {
        step = step * 10 + (*p++ - '0');
        digits++;
    }
    if (!digits) return -1;
    if (!strcmp(p, ".h5")) return step;
    if (!strcmp(p, ".h5.tmp")) {
        *tmp = 1;
        return step;
    }
    return -1;
}

static int is_metrics(const char *name) { return !strcmp(name, "metrics.jsonl") || !strcmp(name, "metrics.jsonl.tmp"); }

static void add_note(char *note, size_t notelen, const char *line) {
    size_t at = strlen(note);
    if (at < notelen) snprintf(note + at, notelen - at, "%s", line);
}

/* Takes the lock of rd->dir (created already). */
static int take_lock(run_dir *rd, char *note, size_t notelen, char *err, size_t errlen) {
    for (int attempt = 0; attempt < 8; attempt++) {
        int fd = open(rd->lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) {
            snprintf(err, errlen, "%s: cannot create the run lock: %s", rd->lock, strerror(errno));
            return -1;
        }
        char old[64] = "";
        ssize_t got = pread(fd, old, sizeof old - 1, 0);
        old[got > 0 ? got : 0] = 0;
        long long pid = atoll(old[0] == 'p' ? old + 4 : old); /* "pid N\n" */
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            int e = errno;
            close(fd);
            if (e == EWOULDBLOCK)
                snprintf(err, errlen, "%s is in use by another training run (pid %lld holds %s): wait for it to finish or "
                         "choose another --out", rd->dir, pid, RUN_DIR_LOCK_NAME);
            else
                snprintf(err, errlen, "%s: cannot lock: %s", rd->lock, strerror(e));
            return -1;
        }
        /* the file may have been removed and recreated by its previous owner in between */
        struct stat a, b;
        if (fstat(fd, &a) != 0 || stat(rd->lock, &b) != 0 || a.st_ino != b.st_ino || a.st_dev != b.st_dev) {
            close(fd);
            continue;
        }
        /* re-read under the lock: the holder we raced with may have written its pid */
        got = pread(fd, old, sizeof old - 1, 0);
        old[got > 0 ? got : 0] = 0;
        pid = atoll(old[0] == 'p' ? old + 4 : old);
        if (pid > 0 && pid != (long long)getpid()) {
            char line[4400];
            snprintf(line, sizeof line,
                     "note: %s was left by pid %lld, which no longer holds it (a crashed or killed run): taking it over\n",
                     rd->lock, pid);
            add_note(note, notelen, line);
        }
        char mine[64];
        int n = snprintf(mine, sizeof mine, "pid %lld\n", (long long)getpid());
        if (ftruncate(fd, 0) != 0 || pwrite(fd, mine, (size_t)n, 0) != n) {
            snprintf(err, errlen, "%s: cannot write the run lock: %s", rd->lock, strerror(errno));
            close(fd);
            return -1;
        }
        rd->fd = fd;
        return 0;
    }
    snprintf(err, errlen, "%s: the run lock keeps being replaced by another process", rd->lock);
    return -1;
}

/* What DIR holds besides the lock: files of another run (refused or replaced). */
static int check_contents(run_dir *rd, int64_t own_step, int overwrite, char *note, size_t notelen, char *err,
                          size_t errlen) {
    for (int pass = 0; pass < 2; pass++) { /* pass 0: decide; pass 1 (overwrite): delete */
        DIR *d = opendir(rd->dir);
        if (!d) {
            snprintf(err, errlen, "%s: cannot read the directory: %s", rd->dir, strerror(errno));
            return -1;
        }
        char first[3][300];
        int n_foreign = 0, n_removed = 0;
        struct dirent *e;
        while ((e = readdir(d))) {
            const char *nm = e->d_name;
            if (!strcmp(nm, ".") || !strcmp(nm, "..") || !strcmp(nm, RUN_DIR_LOCK_NAME)) continue;
            int tmp;
            int64_t step = ckpt_step_of(nm, &tmp);
            int run_file = step >= 0 || is_metrics(nm);
            int foreign;
            if (own_step < 0) foreign = run_file || !strcmp(nm, "model"); /* a new run: another's run files */
            else foreign = step > own_step && !tmp;                        /* a later continuation's checkpoint */
            if (!foreign) continue;
            if (pass == 0) {
                if (n_foreign < 3) snprintf(first[n_foreign], sizeof first[0], "%s", nm);
                n_foreign++;
                continue;
            }
            if (!run_file) continue; /* --overwrite replaces run files only */
            char p[4400];
            snprintf(p, sizeof p, "%s/%s", rd->dir, nm);
            if (unlink(p) == 0) n_removed++;
        }
        closedir(d);
        if (pass == 1) {
            if (n_removed) {
                char line[4400];
                snprintf(line, sizeof line, "note: --overwrite: removed %d checkpoint and metrics files of another run from %s\n",
                         n_removed, rd->dir);
                add_note(note, notelen, line);
            }
            return 0;
        }
        if (n_foreign == 0) return 0;
        if (!overwrite) {
            char list[1000];
            snprintf(list, sizeof list, "%s%s%s%s%s", first[0], n_foreign > 1 ? ", " : "", n_foreign > 1 ? first[1] : "",
                     n_foreign > 2 ? ", " : "", n_foreign > 2 ? first[2] : "");
            char more[48] = "";
            if (n_foreign > 3) snprintf(more, sizeof more, " and %d more", n_foreign - 3);
            if (own_step < 0)
                snprintf(err, errlen, "--out %s holds another run (%s%s): continue it with --resume %s, choose another "
                         "--out, or pass --overwrite to replace its checkpoints and metrics", rd->dir, list, more, rd->dir);
            else
                snprintf(err, errlen, "%s holds checkpoints past step %lld, the one resumed from (%s%s): resume from the "
                         "newest (--resume %s), or pass --overwrite to drop them", rd->dir, (long long)own_step, list, more,
                         rd->dir);
            return -1;
        }
    }
    return 0;
}

int run_dir_claim(run_dir *rd, const char *dir, int64_t own_step, int overwrite, char *note, size_t notelen,
                  char *err, size_t errlen) {
    memset(rd, 0, sizeof *rd);
    rd->fd = -1;
    if (note && notelen) note[0] = 0;
    if (snprintf(rd->dir, sizeof rd->dir, "%s", dir) >= (int)sizeof rd->dir) {
        snprintf(err, errlen, "%.200s...: path too long", dir);
        return -1;
    }
    snprintf(rd->lock, sizeof rd->lock, "%s/%s", dir, RUN_DIR_LOCK_NAME);
    struct stat st;
    int existed = stat(dir, &st) == 0;
    if (existed && !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "--out %s is a file: expected a run directory", dir);
        return -1;
    }
    if (!existed && mkdir_p(dir, err, errlen)) return -1;
    rd->created = !existed;
    if (take_lock(rd, note, notelen, err, errlen) ||
        check_contents(rd, own_step, overwrite, note, notelen, err, errlen)) {
        run_dir_release(rd);
        return -1;
    }
    return 0;
}

void run_dir_release(run_dir *rd) {
    if (rd->fd >= 0) {
        unlink(rd->lock); /* before unlocking: a waiter that opened the old file retries (take_lock) */
        close(rd->fd);
        rd->fd = -1;
    }
    if (rd->created) rmdir(rd->dir); /* only succeeds when empty */
    rd->created = 0;
}
