#!/usr/bin/env python3
"""Mutation fuzzing of every file llama-adapter reads (issue 15), under AddressSanitizer.

    make BUILD=build/asan MODE=asan tests-build      # the ASan binary and its test fixture
    python3 scripts/fuzz.py [--build build/asan] [--runs 600] [--jobs 2] [--seed 1] [--out fuzz_out]

Valid seeds are made fresh (nothing committed): the fixture of tests/robust_fixture.h (a
SentencePiece tokenizer, a tiny HF Llama directory, Alpaca JSON), a short training run (an HDF5
checkpoint), its adapter exported as .pth, safetensors and HDF5, and a train config. Each target
is mutated --runs times (bit flips, interesting integers written over 1/2/4/8 bytes, truncation,
deletion, duplication and insertion of chunks; numbers, keys and brackets for the JSON texts) and
the binary reads the mutant:

    pth, safetensors, hdf5 (adapter exports), ckpt (training checkpoint)   inspect FILE
    ckpt-export                                                             export --adapter FILE
    model (config.json or model.safetensors of a HF directory)              inspect DIR
    config (train --config)                  train --config FILE ... (stops at the missing model)
    alpaca (Alpaca JSON)                                    inspect FILE --tokenizer T

A crash is a signal, a sanitizer report (AddressSanitizer, LeakSanitizer, UBSan "runtime error")
or a sanitizer exit code; a hang is a run over 10 s, twice in a row (the second run rules out a
moment of load on a shared machine). Either is saved under --out with the command
that reproduces it. The last line is "N runs: C crashes, H hangs (M multi-line errors)"; the exit
status is 1 when C + H > 0. Multi-line errors (a failure that prints more than one stderr line)
are counted, not failed. Not run by make test (minutes); deliberately no coverage guidance.
"""
import argparse
import concurrent.futures as cf
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

TIMEOUT = 10.0
SAN_ENV = {
    "ASAN_OPTIONS": "exitcode=86:abort_on_error=0:detect_leaks=1",
    "LSAN_OPTIONS": "exitcode=87",
    "UBSAN_OPTIONS": "halt_on_error=1:exitcode=88:print_stacktrace=1",
    "OMP_NUM_THREADS": "1",
}
SAN_MARKS = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "UndefinedBehaviorSanitizer")
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
               1 << 31, 1 << 32, (1 << 62), (1 << 63) - 1, 1 << 63, (1 << 64) - 1, (1 << 64) - 56, 46, 22]
JSON_NUMBERS = ["0", "-1", "1e308", "1e999", "-1e999", "NaN", "1e300", "9223372036854775807",
                "18446744073709551616", "2147483648", "0.5", "-0", "1e-320", "100000", "3.4e38"]


def run(cmd, cwd=None, timeout=TIMEOUT):
    env = dict(os.environ)
    env.update(SAN_ENV)
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           timeout=timeout)
        return p.returncode, p.stderr.decode("utf-8", "replace"), time.time() - t0
    except subprocess.TimeoutExpired as e:
        return None, (e.stderr or b"").decode("utf-8", "replace"), time.time() - t0


def must(cmd, what):
    code, err, _ = run(cmd, timeout=600)
    if code != 0:
        sys.exit("fuzz: making the seeds failed (%s): %s" % (what, err.strip()[-400:]))


# ------------------------------------------------------------------ mutators

def mutate_bytes(data, rng):
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
        op = rng.randrange(8)
        n = len(b)
        if n == 0:
            b += bytes([rng.randrange(256)])
            continue
        i = rng.randrange(n)
        if op == 0:                                     # bit flip
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:                                   # an interesting byte
            b[i] = rng.choice([0, 1, 0x7F, 0x80, 0xFF])
        elif op in (2, 3):                              # an interesting 1/2/4/8-byte integer
            w = rng.choice([1, 2, 4, 8])
            if rng.random() < 0.3:                      # nudge the integer that is there
                v = (int.from_bytes(bytes(b[i:i + w]).ljust(w, b"\0"), "little") + rng.choice([-1, 1, 2, -2, 64])) % (1 << (8 * w))
            else:
                v = rng.choice(INTERESTING) & ((1 << (8 * w)) - 1)
            b[i:i + w] = v.to_bytes(w, "little")[: n - i]
        elif op == 4:                                   # truncation
            del b[rng.randrange(n):]
        elif op == 5:                                   # delete a chunk
            del b[i:i + rng.randrange(1, 64)]
        elif op == 6:                                   # duplicate a chunk
            j = rng.randrange(n)
            b[j:j] = b[i:i + rng.randrange(1, 256)]
        else:                                           # insert random bytes
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
    return bytes(b)


def mutate_json_text(text, rng):
    s = text
    for _ in range(rng.choice([1, 1, 2, 3])):
        op = rng.randrange(7)
        if op == 0:                                     # a number replaced by an extreme one
            idx = [k for k, c in enumerate(s) if c.isdigit()]
            if idx:
                k = rng.choice(idx)
                a = k
                while a > 0 and (s[a - 1].isdigit() or s[a - 1] in ".-+eE"):
                    a -= 1
                e = k
                while e < len(s) and (s[e].isdigit() or s[e] in ".-+eE"):
                    e += 1
                s = s[:a] + rng.choice(JSON_NUMBERS) + s[e:]
        elif op == 1:                                   # a value replaced by another type
            vals = ['"x"', "null", "true", "[]", "{}", '""', '"\\u0000"', '"\\ud800"', "[[[[[[[[[[1]]]]]]]]]]"]
            k = s.find(":", rng.randrange(max(1, len(s))))
            if k >= 0:
                e = k + 1
                while e < len(s) and s[e] not in ",}]":
                    e += 1
                s = s[:k + 1] + rng.choice(vals) + s[e:]
        elif op == 2:                                   # a key duplicated
            k = s.find('"', rng.randrange(max(1, len(s))))
            e = s.find(",", k + 1)
            if k >= 0 and e > k:
                s = s[:e + 1] + s[k:e] + "," + s[e + 1:]
        elif op == 3:                                   # deep nesting
            d = rng.choice([10, 1000, 100000])
            k = rng.randrange(max(1, len(s)))
            s = s[:k] + "[" * d + "]" * d + s[k:]
        elif op == 4:                                   # a long string
            k = s.find('"', rng.randrange(max(1, len(s))))
            if k >= 0:
                s = s[:k + 1] + "A" * rng.choice([1000, 70000, 300000]) + s[k + 1:]
        else:                                           # bytes
            return mutate_bytes(s.encode("utf-8", "surrogatepass"), rng)
    return s.encode("utf-8", "surrogatepass")


# ------------------------------------------------------------------ seeds and targets

def make_seeds(build, work):
    build = os.path.abspath(build)
    bin_ = os.path.join(build, "llama-adapter")
    fix = os.path.join(work, "fixture")
    must([os.path.join(build, "tests", "test_robust_run"), "--fixture", fix], "fixture")
    run_dir = os.path.join(work, "run")
    must([bin_, "train", "--model", fix + "/model", "--tokenizer", fix + "/tok.model", "--data", fix + "/data.json",
          "--batch-size", "4", "--max-seq-len", "256", "--adapter-len", "2", "--adapter-layer", "2", "--max-steps", "1",
          "--threads", "1", "--out", run_dir], "train")
    ckpt = os.path.join(run_dir, "ckpt-00000001.h5")
    seeds = {"ckpt": ckpt}
    for fmt, ext in (("pth", "pth"), ("safetensors", "safetensors"), ("hdf5", "h5")):
        p = os.path.join(work, "adapter." + ext)
        must([bin_, "export", "--adapter", ckpt, "--out", p], "export " + fmt)
        seeds[fmt] = p
    cfg = os.path.join(work, "config.json")
    with open(cfg, "w") as f:
        json.dump({"adapter_len": 2, "adapter_layer": 2, "max_seq_len": 256, "batch_size": 4, "epochs": 2,
                   "warmup_epochs": 1, "blr": 0.009, "weight_decay": 0.02, "seed": 3, "world_size": 1,
                   "method": "adapter", "gate_act": "tanh", "out": "x", "keep": 2, "no_shuffle": False}, f)
    seeds["config"] = cfg
    seeds["alpaca"] = fix + "/data.json"
    seeds["model"] = fix + "/model"
    return bin_, fix, seeds


def one_case(args):
    target, i, seed, bin_, fix, seeds, work = args
    rng = random.Random(seed * 1000003 + i)
    case = os.path.join(work, "case-%s-%d" % (target, i))
    os.makedirs(case, exist_ok=True)
    try:
        if target == "model":
            d = os.path.join(case, "model")
            shutil.copytree(seeds["model"], d)
            name = rng.choice(["config.json", "model.safetensors", "model.safetensors"])
            p = os.path.join(d, name)
            data = open(p, "rb").read()
            data = mutate_json_text(data.decode(), rng) if name.endswith(".json") else mutate_bytes(data, rng)
            open(p, "wb").write(data)
            cmd = [bin_, "inspect", d]
            kept = p
        else:
            src = seeds["ckpt" if target == "ckpt-export" else target]
            data = open(src, "rb").read()
            data = mutate_json_text(data.decode(), rng) if target in ("config", "alpaca") else mutate_bytes(data, rng)
            ext = os.path.splitext(src)[1]
            p = os.path.join(case, "input" + ext)
            open(p, "wb").write(data)
            kept = p
            if target == "config":
                cmd = [bin_, "train", "--config", p, "--model", case + "/no-model", "--tokenizer", fix + "/tok.model",
                       "--data", fix + "/data.json", "--out", case + "/out"]
            elif target == "alpaca":
                cmd = [bin_, "inspect", p, "--tokenizer", fix + "/tok.model", "--max-seq-len", "256"]
            elif target == "ckpt-export":
                cmd = [bin_, "export", "--adapter", p, "--out", case + "/exported.safetensors"]
            else:
                cmd = [bin_, "inspect", p]
        code, err, dt = run(cmd, cwd=case)
        if code is None:  # over 10 s: once more, so that a moment of load on a shared machine is not a hang
            code, err, dt = run(cmd, cwd=case)
        crash = code is not None and (code < 0 or code >= 86 or any(m in err for m in SAN_MARKS))
        hang = code is None
        multi = code not in (None, 0) and not crash and err.count("\n") > 1
        result = (target, crash, hang, multi, code, dt, None)
        if crash or hang:
            result = result[:6] + ((cmd, err[-3000:], open(kept, "rb").read()),)
        return result
    finally:
        shutil.rmtree(case, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build/asan")
    ap.add_argument("--runs", type=int, default=600, help="mutants per target")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="fuzz_out", help="where crashing and hanging inputs are saved")
    ap.add_argument("--targets", default="pth,safetensors,hdf5,ckpt,ckpt-export,model,config,alpaca")
    a = ap.parse_args()
    if not os.access(os.path.join(a.build, "llama-adapter"), os.X_OK):
        sys.exit("fuzz: %s/llama-adapter is missing: make BUILD=%s MODE=asan tests-build" % (a.build, a.build))
    work = tempfile.mkdtemp(prefix="llama_adapter_fuzz_")
    try:
        bin_, fix, seeds = make_seeds(a.build, work)
        targets = a.targets.split(",")
        jobs = [(t, i, a.seed, bin_, fix, seeds, work) for i in range(a.runs) for t in targets]
        stats = {t: [0, 0, 0, 0, 0.0] for t in targets}  # runs, crashes, hangs, multi-line, slowest
        t0 = time.time()
        done = 0
        with cf.ThreadPoolExecutor(max_workers=a.jobs) as ex:
            for target, crash, hang, multi, code, dt, saved in ex.map(one_case, jobs):
                s = stats[target]
                s[0] += 1
                s[1] += crash
                s[2] += hang
                s[3] += multi
                s[4] = max(s[4], dt)
                done += 1
                if saved:
                    os.makedirs(a.out, exist_ok=True)
                    stem = os.path.join(a.out, "%s-%d" % (target, done))
                    open(stem + ".input", "wb").write(saved[2])
                    open(stem + ".txt", "w").write("exit %s\n%s\n\n%s" % (code, " ".join(saved[0]), saved[1]))
                    print("fuzz: %s %s (exit %s): %s.input" % (target, "hang" if hang else "crash", code, stem), flush=True)
                if done % 200 == 0:
                    print("fuzz: %d/%d runs, %.0f s" % (done, len(jobs), time.time() - t0), flush=True)
        total = [sum(s[k] for s in stats.values()) for k in range(4)]
        for t in targets:
            s = stats[t]
            print("  %-12s %5d runs  %d crashes  %d hangs  %3d multi-line errors  slowest %.1f s" % (t, s[0], s[1], s[2], s[3], s[4]))
        print("%d runs: %d crashes, %d hangs (%d multi-line errors) in %.0f s" %
              (total[0], total[1], total[2], total[3], time.time() - t0))
        return 1 if total[1] + total[2] else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
