/* Run directories (`train --out DIR`): one writer at a time, and no mixing of two runs' files.
 *
 * run_dir_claim() creates DIR, takes its lock and checks what DIR already holds:
 *   - the lock is DIR/llama-adapter.lock, held with flock() and holding the owner's pid: a second
 *     trainer on the same DIR is refused with that pid; a lock file left by a process that died
 *     (flock is released by the kernel at exit) is detected as stale and taken over;
 *   - a new run refuses a DIR holding another run's files (ckpt-*.h5, metrics.jsonl, a full
 *     fine-tune's model/) unless told to overwrite, so a stale checkpoint of another run is never
 *     pruned in, resumed or exported by mistake; other files (a train.log the caller redirects
 *     into DIR, notes) are neither refused nor touched; overwrite deletes the run files
 *     (ckpt-*.h5, metrics.jsonl and their .tmp; model/ is left to be rewritten);
 *   - a resumed run owns the files of its own history: checkpoints of later steps than the one it
 *     resumes from belong to another continuation and are refused (deleted with overwrite).
 * Deliberately not: locking across machines (flock on NFS is advisory at best), cleaning other
 * files. Ownership: run_dir_release() unlocks and removes the lock file (and DIR itself when
 * this process created it and it is empty). */
#ifndef CKPT_RUN_DIR_H
#define CKPT_RUN_DIR_H
#include <stddef.h>
#include <stdint.h>

#define RUN_DIR_LOCK_NAME "llama-adapter.lock"

typedef struct run_dir {
    int fd;             /* the locked lock file, -1 when not held */
    int created;        /* this process created the directory */
    char dir[4096];
    char lock[4200];
} run_dir;

/* own_step < 0: a new run (DIR must hold no run files); own_step >= 0: DIR is the
 * run being resumed at that step. overwrite: replace instead of refusing. note receives lines
 * to print (stale lock taken over, files replaced), possibly empty. 0, or -1 with one line in
 * err (nothing was changed in DIR then). */
int run_dir_claim(run_dir *rd, const char *dir, int64_t own_step, int overwrite, char *note, size_t notelen,
                  char *err, size_t errlen);
void run_dir_release(run_dir *rd);
#endif
