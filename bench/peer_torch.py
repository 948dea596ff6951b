#!/usr/bin/env python3
"""The PyTorch peer of `make bench` and of tests/test_torch_reference.c.

A plain PyTorch implementation of LLaMA-Adapter (DESIGN.md section 1), written here from the
paper's training code semantics: LLaMA decoder in Meta's layout (RoPE on interleaved pairs via a
complex multiply), adaption prompts projected by the frozen wk/wv, a separate softmax over the
prompts scaled by tanh(gate), the classifier and cross-entropy (ignore label 0), AdamW
(PyTorch's own, betas 0.9/0.95, weight decay on every adapter tensor) and the per-iteration
warm-up + cosine schedule of DESIGN.md section 3.

It reads the same Hugging Face safetensors directory as the C trainer (a tiny reader below:
json + struct + torch.frombuffer; wq/wk un-permuted from HF's rotate-half rows back to Meta
pairs) and the same tokenized examples (JSON written by `bench_tool tokens` or by the test), so
both sides see identical token ids. 16-bit weights are converted to f32 on load (kept in bf16 with
--precision bf16).

Two implementations of the same step:
  ref  the reference's way: examples padded (to the longest in the micro-batch, or to
       max_seq_len with --pad max as the original finetuning code), full autograd through every
       layer with requires_grad only on the adapter, logits at every position.
  opt  an optimised PyTorch: sequences packed without padding (attention per sequence), the
       frozen layers under torch.no_grad(), the prompt keys/values once per layer, logits only at
       positions that carry a label.

Precision (--precision, train and eval):
  f32       every tensor f32 (the exact path; what check and the reference comparisons use)
  bf16      the model in bf16, as model.to(torch.bfloat16) / HF torch_dtype=bfloat16: bf16 weights
            and activations (residual stream included), GEMMs and bmm on oneDNN's bf16 kernels
            (AVX512-BF16 or AMX where the CPU has them); RMSNorm, softmax and the loss computed in
            f32 and cast back as HF's Llama does; the adapter parameters and AdamW stay f32 (cast
            to bf16 where they enter a GEMM)
  autocast  f32 weights, torch.autocast("cpu", dtype=torch.bfloat16) around the forward: GEMMs
            in bf16 (the frozen weights cast every call), residual stream f32
Every record carries peak_rss_mb (getrusage of this process: the load included).

Subcommands (each prints one JSON object on stdout):
  train   time W warm-up + N steps (--style ref|opt, --method adapter|full)
  eval    forward-only loss and time over the first E examples (base model)
  gen     greedy decode with a KV cache, batch 1
  matmul  torch.matmul GFLOP/s on square f32 and bf16 matrices (the peer's own GEMM rates)
  check   the independent reference check: a few optimiser steps from a given adapter, ref and
          opt styles compared with each other, step losses, lrs and the final adapter returned

What it deliberately does not do: fp16, data parallelism, shuffling (the C side runs with
--no-shuffle so micro-batch i is examples [i*B, (i+1)*B) on both sides).
"""
import argparse
import json
import math
import os
import resource
import struct
import sys
import time

import torch
import torch.nn.functional as F


# ---- files ---------------------------------------------------------------------------------

def read_safetensors(path, keep_bf16=False):
    """name -> f32 tensor (F32, F16, BF16; BF16 stays bf16 with keep_bf16), and the __metadata__
    dict. Read one tensor at a time, so the peak memory is the result plus one tensor's bytes."""
    dts = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    out = {}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            s, e = info["data_offsets"]
            dt = dts[info["dtype"]]
            if e == s:
                out[name] = torch.zeros(info["shape"], dtype=torch.float32)
                continue
            buf = bytearray(e - s)
            f.seek(base + s)
            f.readinto(buf)
            t = torch.frombuffer(buf, dtype=dt)  # shares buf (keeps it alive)
            if dt != torch.float32 and not (keep_bf16 and dt == torch.bfloat16):
                t = t.float()  # exact: every f16/bf16 value is an f32 value
            out[name] = t.reshape(info["shape"])
    return out, header.get("__metadata__", {})


def unpermute(w, n_heads):
    """HF rotate-half rows -> Meta interleaved pairs (the inverse of HF's conversion permute)."""
    d1, d2 = w.shape
    return w.view(n_heads, 2, d1 // n_heads // 2, d2).transpose(1, 2).reshape(d1, d2).contiguous()


class Cfg:
    pass


def load_hf(model_dir, dtype=torch.float32):
    """The config and the weights in dtype (f32, or bf16: a bf16 file is kept as it is)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    cfg = Cfg()
    cfg.dim = c["hidden_size"]
    cfg.n_layers = c["num_hidden_layers"]
    cfg.n_heads = c["num_attention_heads"]
    cfg.n_kv_heads = c.get("num_key_value_heads", cfg.n_heads)
    cfg.hidden = c["intermediate_size"]
    cfg.vocab = c["vocab_size"]
    cfg.eps = c.get("rms_norm_eps", 1e-6)
    cfg.theta = c.get("rope_theta", 10000.0)
    cfg.tied = bool(c.get("tie_word_embeddings", False))
    cfg.max_seq_len = c.get("max_position_embeddings", 2048)
    cfg.hd = cfg.dim // cfg.n_heads
    tensors = {}
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    for fn in files:
        t, _ = read_safetensors(os.path.join(model_dir, fn), keep_bf16=dtype == torch.bfloat16)
        tensors.update({k: v.to(dtype) for k, v in t.items()})
        del t
    w = {"tok_emb": tensors["model.embed_tokens.weight"], "norm": tensors["model.norm.weight"]}
    w["cls"] = w["tok_emb"] if cfg.tied else tensors["lm_head.weight"]
    w["layers"] = []
    for i in range(cfg.n_layers):
        p = "model.layers.%d." % i
        w["layers"].append({
            "attn_norm": tensors[p + "input_layernorm.weight"],
            "wq": unpermute(tensors[p + "self_attn.q_proj.weight"], cfg.n_heads),
            "wk": unpermute(tensors[p + "self_attn.k_proj.weight"], cfg.n_kv_heads),
            "wv": tensors[p + "self_attn.v_proj.weight"],
            "wo": tensors[p + "self_attn.o_proj.weight"],
            "ffn_norm": tensors[p + "post_attention_layernorm.weight"],
            "w1": tensors[p + "mlp.gate_proj.weight"],
            "w2": tensors[p + "mlp.down_proj.weight"],
            "w3": tensors[p + "mlp.up_proj.weight"],
        })
    return cfg, w


def load_tokens(path):
    """[(ids, n_prompt)] as written by `bench_tool tokens`: each example [n_prompt, id0, id1, ...]."""
    with open(path) as f:
        j = json.load(f)
    return j, [(e[1:], e[0]) for e in j["examples"]]


def load_adapter(path, cfg):
    t, meta = read_safetensors(path)
    q = t["adapter_query.weight"].clone()
    K = int(meta.get("adapter_len", 10))
    L = int(meta.get("adapter_layer", q.shape[0] // K))
    first = cfg.n_layers - L
    gates = torch.stack([t["layers.%d.attention.gate" % (first + j)].reshape(-1) for j in range(L)]).clone()
    return q, gates, K, L


# ---- model ---------------------------------------------------------------------------------

def rope_table(hd, n, theta):
    """complex64 [n, hd/2]: exp(i * pos * theta^(-2i/hd)); angles in double, as the C side computes
    them, so comparisons measure the model's float rounding and not the angle table's."""
    freqs = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64)[: hd // 2] / hd))
    ang = torch.outer(torch.arange(n, dtype=torch.float64), freqs)
    return torch.polar(torch.ones_like(ang), ang).to(torch.complex64)


def apply_rope(x, fc):
    """x [..., S, H, hd] real; fc [S, hd/2] complex: pairs (2i, 2i+1) rotated (Meta's layout)."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    fc = fc.view(fc.shape[0], 1, fc.shape[1])
    return torch.view_as_real(xc * fc).flatten(-2).type_as(x)


def rmsnorm(x, w, eps):
    """In f32 and cast back, as HF's LlamaRMSNorm (no-ops for f32 x)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * w


def repeat_kv(x, rep, dim):
    return x if rep == 1 else torch.repeat_interleave(x, rep, dim=dim)


class Model:
    def __init__(self, cfg, w, gate_act="tanh"):
        self.cfg, self.w = cfg, w
        self.fc = rope_table(cfg.hd, max(cfg.max_seq_len, 2048), cfg.theta)
        self.gate_act = gate_act
        self.query = None  # [L*K, dim]
        self.gates = None  # [L, H]
        self.K = self.L = 0

    def set_adapter(self, query, gates, K, L):
        self.query, self.gates, self.K, self.L = query, gates, K, L

    def g(self, j, dt):
        """Layer j's gates (f32 parameters) in the activations' dtype dt."""
        return (torch.tanh(self.gates[j]) if self.gate_act == "tanh" else self.gates[j]).to(dt)

    def prompts(self, j, dt):
        """Layer j's adaption prompts (f32 parameters) in dtype dt (a no-op for f32)."""
        return self.query[j * self.K:(j + 1) * self.K].to(dt)

    # -- the reference's way: padded [B, S] ------------------------------------------------
    def layer_ref(self, h, lw, fc, mask, j):
        c = self.cfg
        B, S, _ = h.shape
        x = rmsnorm(h, lw["attn_norm"], c.eps)
        xq = (x @ lw["wq"].t()).view(B, S, c.n_heads, c.hd)
        xk = (x @ lw["wk"].t()).view(B, S, c.n_kv_heads, c.hd)
        xv = (x @ lw["wv"].t()).view(B, S, c.n_kv_heads, c.hd)
        xq, xk = apply_rope(xq, fc), apply_rope(xk, fc)
        rep = c.n_heads // c.n_kv_heads
        keys = repeat_kv(xk, rep, 2).transpose(1, 2)
        values = repeat_kv(xv, rep, 2).transpose(1, 2)
        xq = xq.transpose(1, 2)  # [B, H, S, hd]
        scores = torch.matmul(xq, keys.transpose(2, 3)) / math.sqrt(c.hd) + mask
        scores = F.softmax(scores.float(), dim=-1).type_as(xq)
        out = torch.matmul(scores, values)
        if j is not None:
            A = self.prompts(j, h.dtype)
            ak = (A @ lw["wk"].t()).view(1, self.K, c.n_kv_heads, c.hd).repeat(B, 1, 1, 1)
            av = (A @ lw["wv"].t()).view(1, self.K, c.n_kv_heads, c.hd).repeat(B, 1, 1, 1)
            ak = repeat_kv(ak, rep, 2).transpose(1, 2)
            av = repeat_kv(av, rep, 2).transpose(1, 2)
            a_scores = torch.matmul(xq, ak.transpose(2, 3)) / math.sqrt(c.hd)
            a_scores = self.g(j, xq.dtype).view(1, -1, 1, 1) * F.softmax(a_scores.float(), dim=-1).type_as(xq)
            out = out + torch.matmul(a_scores, av)
        out = out.transpose(1, 2).contiguous().view(B, S, -1)
        h = h + out @ lw["wo"].t()
        x = rmsnorm(h, lw["ffn_norm"], c.eps)
        return h + (F.silu(x @ lw["w1"].t()) * (x @ lw["w3"].t())) @ lw["w2"].t()

    def loss_ref(self, ids, labels):
        """ids, labels [B, S] (0-padded). The token-mean cross-entropy and its token count."""
        c = self.cfg
        B, S = ids.shape
        h = self.w["tok_emb"][ids]
        mask = torch.triu(torch.full((1, 1, S, S), float("-inf"), dtype=h.dtype), diagonal=1)
        fc = self.fc[:S]
        first = c.n_layers - self.L
        for l in range(c.n_layers):
            h = self.layer_ref(h, self.w["layers"][l], fc, mask, l - first if self.L and l >= first else None)
        h = rmsnorm(h, self.w["norm"], c.eps)
        logits = h @ self.w["cls"].t()
        tg = labels[:, 1:].reshape(-1)
        n = int((tg != 0).sum())
        if n == 0:
            return None, 0
        return F.cross_entropy(logits[:, :-1, :].reshape(-1, c.vocab).float(), tg, ignore_index=0), n

    # -- optimised: packed [T] -------------------------------------------------------------
    def layer_opt(self, h, lw, fcs, seqs, j):
        c = self.cfg
        T = h.shape[0]
        x = rmsnorm(h, lw["attn_norm"], c.eps)
        xq = apply_rope((x @ lw["wq"].t()).view(T, c.n_heads, c.hd), fcs)
        xk = apply_rope((x @ lw["wk"].t()).view(T, c.n_kv_heads, c.hd), fcs)
        xv = (x @ lw["wv"].t()).view(T, c.n_kv_heads, c.hd)
        rep = c.n_heads // c.n_kv_heads
        scale = 1.0 / math.sqrt(c.hd)
        if j is not None:
            A = self.prompts(j, h.dtype)
            ak = repeat_kv((A @ lw["wk"].t()).view(self.K, c.n_kv_heads, c.hd), rep, 1).transpose(0, 1)
            av = repeat_kv((A @ lw["wv"].t()).view(self.K, c.n_kv_heads, c.hd), rep, 1).transpose(0, 1)
            gate = self.g(j, xq.dtype).view(-1, 1, 1)
        outs = []
        for (a, b) in seqs:
            n = b - a
            q = xq[a:b].transpose(0, 1)  # [H, n, hd]
            k = repeat_kv(xk[a:b], rep, 1).transpose(0, 1)
            v = repeat_kv(xv[a:b], rep, 1).transpose(0, 1)
            s = torch.matmul(q, k.transpose(1, 2)) * scale
            s = s.masked_fill(self.causal[:n, :n], float("-inf"))
            o = torch.matmul(F.softmax(s.float(), dim=-1).type_as(q), v)
            if j is not None:
                sa = torch.matmul(q, ak.transpose(1, 2)) * scale
                o = o + torch.matmul(gate * F.softmax(sa.float(), dim=-1).type_as(q), av)
            outs.append(o.transpose(0, 1).reshape(n, c.dim))
        out = torch.cat(outs, 0)
        h = h + out @ lw["wo"].t()
        x = rmsnorm(h, lw["ffn_norm"], c.eps)
        return h + (F.silu(x @ lw["w1"].t()) * (x @ lw["w3"].t())) @ lw["w2"].t()

    def loss_opt(self, ids, pos, targets, seqs, frozen_below=None):
        """Packed ids/pos/targets [T] (targets = next label within the sequence, 0 = none)."""
        c = self.cfg
        T = ids.shape[0]
        if not hasattr(self, "causal") or self.causal.shape[0] < T:
            self.causal = torch.triu(torch.ones(max(T, 1024), max(T, 1024), dtype=torch.bool), diagonal=1)
        fcs = self.fc[pos]
        first = c.n_layers - self.L
        nograd = first if frozen_below is None else frozen_below
        h = self.w["tok_emb"][ids]  # trains in full fine-tuning (nograd == 0)
        with torch.no_grad():
            for l in range(nograd):
                h = self.layer_opt(h, self.w["layers"][l], fcs, seqs, l - first if self.L and l >= first else None)
        for l in range(nograd, c.n_layers):
            h = self.layer_opt(h, self.w["layers"][l], fcs, seqs, l - first if self.L and l >= first else None)
        rows = (targets != 0).nonzero().view(-1)
        n = rows.numel()
        if n == 0:
            return None, 0
        hs = rmsnorm(h[rows], self.w["norm"], c.eps)
        return F.cross_entropy((hs @ self.w["cls"].t()).float(), targets[rows]), n


# ---- batches ---------------------------------------------------------------------------------

def batch_padded(examples, pad_to=None):
    S = max(len(ids) for ids, _ in examples)
    if pad_to:
        S = max(S, pad_to)
    ids = torch.zeros(len(examples), S, dtype=torch.long)
    labels = torch.zeros(len(examples), S, dtype=torch.long)
    for i, (e, npr) in enumerate(examples):
        ids[i, :len(e)] = torch.tensor(e)
        labels[i, npr:len(e)] = torch.tensor(e[npr:], dtype=torch.long)
    return ids, labels


def batch_packed(examples):
    ids, pos, tg, seqs = [], [], [], []
    for e, npr in examples:
        a = len(ids)
        lab = [0] * min(npr, len(e)) + e[npr:]
        ids += e
        pos += list(range(len(e)))
        tg += lab[1:] + [0]
        seqs.append((a, len(ids)))
    return (torch.tensor(ids, dtype=torch.long), torch.tensor(pos, dtype=torch.long),
            torch.tensor(tg, dtype=torch.long), seqs)


def micro_batch(exs, B, i):
    return exs[i * B:(i + 1) * B]


def sched_lr(e, lr, min_lr, warmup, epochs):
    if e < warmup:
        return lr * e / warmup
    if epochs <= warmup:
        return lr
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (e - warmup) / (epochs - warmup)))


# ---- training --------------------------------------------------------------------------------

class Trainer:
    """The optimiser loop of DESIGN.md section 3 over micro-batches in file order."""

    def __init__(self, model, exs, args, method="adapter"):
        self.m, self.exs, self.a, self.method = model, exs, args, method
        B, acc = args.batch_size, args.accum_iter
        self.mpe = len(exs) // B  # micro-batches per epoch (drop_last)
        self.spe = self.mpe // acc
        self.lr = args.lr if args.lr > 0 else args.blr * B * acc / 256
        if method == "full":
            decay, no_decay = [], []
            w = model.w
            for t in [w["tok_emb"], w["norm"]] + ([] if model.cfg.tied else [w["cls"]]):
                t.requires_grad_(True)
            for lw in w["layers"]:
                for t in lw.values():
                    t.requires_grad_(True)
            seen = set()
            for t in [w["tok_emb"], w["cls"], w["norm"]] + [t for lw in w["layers"] for t in lw.values()]:
                if id(t) in seen:
                    continue
                seen.add(id(t))
                (no_decay if t.dim() == 1 or t.shape[0] == 1 else decay).append(t)
            groups = [{"params": decay, "weight_decay": args.weight_decay},
                      {"params": no_decay, "weight_decay": 0.0}]
        else:
            model.query.requires_grad_(True)
            model.gates.requires_grad_(True)
            groups = [{"params": [model.query, model.gates], "weight_decay": args.weight_decay}]
        self.opt = torch.optim.AdamW(groups, lr=self.lr, betas=(args.beta1, args.beta2), eps=args.eps)
        self.epoch, self.micro = 0, 0

    def micro_loss(self, mb, style):
        with autocast(self.a):
            return self.micro_loss_(mb, style)

    def micro_loss_(self, mb, style):
        if style == "opt":
            ids, pos, tg, seqs = batch_packed(mb)
            return self.m.loss_opt(ids, pos, tg, seqs, frozen_below=0 if self.method == "full" else None)
        ids, labels = batch_padded(mb, self.a.max_seq_len if style == "ref512" else None)
        return self.m.loss_ref(ids, labels)

    def step(self, style):
        a = self.a
        if self.micro + a.accum_iter > self.spe * a.accum_iter:
            self.epoch += 1
            self.micro = 0
        e = self.micro / self.mpe + self.epoch
        lr = sched_lr(e, self.lr, a.min_lr, a.warmup_epochs, a.epochs)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.zero_grad(set_to_none=False)
        total = 0.0
        for k in range(a.accum_iter):
            mb = micro_batch(self.exs, a.batch_size, self.micro + k)
            loss, n = self.micro_loss(mb, style)
            if loss is not None:
                (loss / a.accum_iter).backward()
                total += float(loss)
        self.opt.step()
        self.micro += a.accum_iter
        return total / a.accum_iter, lr, e


def autocast(args):
    """torch.autocast on the CPU in bf16 with --precision autocast, otherwise a no-op context."""
    on = getattr(args, "precision", "f32") == "autocast"
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=on)


def peak_rss_mb():
    """This process's peak resident set size so far, MB (10^6 bytes; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def setup(args):
    torch.set_num_threads(args.threads)
    cfg, w = load_hf(args.model, torch.bfloat16 if getattr(args, "precision", "f32") == "bf16" else torch.float32)
    model = Model(cfg, w, args.gate_act)
    tj, exs = load_tokens(args.tokens)
    return cfg, model, exs


def init_adapter(model, args, cfg):
    if getattr(args, "init_adapter", None):
        q, gates, K, L = load_adapter(args.init_adapter, cfg)
    else:
        K, L = args.adapter_len, min(args.adapter_layer, cfg.n_layers)
        gen = torch.Generator().manual_seed(args.seed)
        q = torch.randn(L * K, cfg.dim, generator=gen)
        gates = torch.zeros(L, cfg.n_heads)
    model.set_adapter(q, gates, K, L)


def cmd_train(args):
    cfg, model, exs = setup(args)
    if args.method == "adapter":
        init_adapter(model, args, cfg)
    tr = Trainer(model, exs, args, args.method)
    losses, times, padded = [], [], 0
    prof = None
    for s in range(args.first + args.steps):
        if s >= args.first:
            mb = micro_batch(exs, args.batch_size, tr.micro)
            S = max(len(e) for e, _ in mb)
            padded += len(mb) * (args.max_seq_len if args.style == "ref512" else S) if args.style != "opt" else 0
            if args.profile and prof is None:
                prof = torch.autograd.profiler.profile()
                prof.__enter__()
        t0 = time.perf_counter()
        loss, lr, e = tr.step(args.style)
        times.append(time.perf_counter() - t0)
        losses.append(loss)
    if prof is not None:
        prof.__exit__(None, None, None)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile), file=sys.stderr)
    rec = {"kind": "train", "impl": "torch-" + args.style, "precision": args.precision, "method": args.method,
           "batch": args.batch_size, "first": args.first, "steps": args.steps, "seconds": sum(times[args.first:]),
           "losses": losses, "step_seconds": times, "threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb()}
    if args.style != "opt":
        rec["padded_tokens"] = padded
    emit(rec, args)


def cmd_eval(args):
    cfg, model, exs = setup(args)
    exs = exs[:args.examples]
    B = args.batch_size
    tot, n_tok, secs = 0.0, 0, 0.0
    with torch.no_grad(), autocast(args):
        for rep in range(args.passes):  # the last pass is timed; 1 = one cold pass, as `llama-adapter eval`
            tot, n_tok = 0.0, 0
            t0 = time.perf_counter()
            for i in range(0, len(exs), B):
                mb = exs[i:i + B]
                if args.style == "opt":
                    ids, pos, tg, seqs = batch_packed(mb)
                    loss, n = model.loss_opt(ids, pos, tg, seqs)
                else:
                    ids, labels = batch_padded(mb)
                    loss, n = model.loss_ref(ids, labels)
                if loss is not None:
                    tot += float(loss) * n
                    n_tok += n
            secs = time.perf_counter() - t0
    emit({"kind": "eval", "impl": "torch-" + args.style, "precision": args.precision, "examples": len(exs), "batch": B,
          "seconds": secs, "loss": tot / max(n_tok, 1), "loss_tokens": n_tok, "peak_rss_mb": peak_rss_mb()}, args)


def cmd_gen(args):
    """Greedy decode, batch 1, KV cache [max_len, Hkv, hd] per layer (base model)."""
    torch.set_num_threads(args.threads)
    cfg, w = load_hf(args.model)
    m = Model(cfg, w)
    prompt = [int(x) for x in args.prompt_ids.split(",") if x != ""]
    if not prompt or prompt[0] != args.bos:
        prompt = [args.bos] + prompt
    max_len = len(prompt) + args.new
    ck = [torch.zeros(max_len, cfg.n_kv_heads, cfg.hd) for _ in range(cfg.n_layers)]
    cv = [torch.zeros(max_len, cfg.n_kv_heads, cfg.hd) for _ in range(cfg.n_layers)]
    rep = cfg.n_heads // cfg.n_kv_heads
    scale = 1.0 / math.sqrt(cfg.hd)

    def forward(toks, p0):
        n = len(toks)
        h = w["tok_emb"][torch.tensor(toks)]
        fcs = m.fc[p0:p0 + n]
        for l, lw in enumerate(w["layers"]):
            x = rmsnorm(h, lw["attn_norm"], cfg.eps)
            q = apply_rope((x @ lw["wq"].t()).view(n, cfg.n_heads, cfg.hd), fcs)
            ck[l][p0:p0 + n] = apply_rope((x @ lw["wk"].t()).view(n, cfg.n_kv_heads, cfg.hd), fcs)
            cv[l][p0:p0 + n] = (x @ lw["wv"].t()).view(n, cfg.n_kv_heads, cfg.hd)
            k = repeat_kv(ck[l][:p0 + n], rep, 1).transpose(0, 1)
            v = repeat_kv(cv[l][:p0 + n], rep, 1).transpose(0, 1)
            s = torch.matmul(q.transpose(0, 1), k.transpose(1, 2)) * scale
            if n > 1:
                s = s + torch.triu(torch.full((n, p0 + n), float("-inf")), diagonal=p0 + 1)
            o = torch.matmul(F.softmax(s, dim=-1), v).transpose(0, 1).reshape(n, cfg.dim)
            h = h + o @ lw["wo"].t()
            x = rmsnorm(h, lw["ffn_norm"], cfg.eps)
            h = h + (F.silu(x @ lw["w1"].t()) * (x @ lw["w3"].t())) @ lw["w2"].t()
        return rmsnorm(h[-1:], w["norm"], cfg.eps) @ w["cls"].t()

    with torch.no_grad():
        forward(prompt, 0)  # warm-up run, then the timed one from a fresh cache
        t0 = time.perf_counter()
        logits = forward(prompt, 0)
        t_prompt = time.perf_counter() - t0
        out = [int(torch.argmax(logits[0]))]
        t0 = time.perf_counter()
        pos = len(prompt)
        while len(out) < args.new:
            logits = forward([out[-1]], pos)
            pos += 1
            out.append(int(torch.argmax(logits[0])))
        t_dec = time.perf_counter() - t0
    emit({"kind": "gen", "impl": "torch-opt", "prompt": len(prompt), "new": len(out), "decode_steps": len(out) - 1,
          "seconds": t_dec, "prompt_seconds": t_prompt, "ids": out}, args)


def cmd_matmul(args):
    torch.set_num_threads(args.threads)
    n = args.n
    rec = {"kind": "torch_peak", "n": n, "threads": torch.get_num_threads()}
    for key, dt in (("gflops", torch.float32), ("gflops_bf16", torch.bfloat16)):
        a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
        torch.matmul(a, b)
        best = 1e30
        for _ in range(3):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - t0)
        rec[key] = 2.0 * n ** 3 / best / 1e9
    emit(rec, args)


def check_tokenization(args, tj, exs):
    """Re-encodes the Alpaca data with Python sentencepiece (when installed) and compares the ids."""
    if not args.data:
        return "not checked (no --data)"
    try:
        import sentencepiece as spm
    except ImportError:
        return "not checked (python3-sentencepiece absent)"
    sp = spm.SentencePieceProcessor(model_file=tj["tokenizer"])
    with open(args.data) as f:
        data = json.load(f)
    P_IN = ("Below is an instruction that describes a task, paired with an input that provides further context. "
            "Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
    P_NO = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\n{instruction}\n\n### Response:")
    for i, ex in enumerate(data):
        inp = ex.get("input", "")
        prompt = (P_IN if inp else P_NO).format(instruction=ex["instruction"], input=inp)
        full = [sp.bos_id()] + sp.encode(prompt + ex["output"]) + [sp.eos_id()]
        full = full[:tj["max_seq_len"]]
        npr = min(1 + len(sp.encode(prompt)), len(full))
        if full != exs[i][0] or npr != exs[i][1]:
            return "MISMATCH at example %d" % i
    return "identical (%d examples re-encoded with Python sentencepiece)" % len(data)


def cmd_check(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg, w = load_hf(args.model)
    tj, exs = load_tokens(args.tokens)
    res = {"tokenization": check_tokenization(args, tj, exs)}
    model = Model(cfg, w, args.gate_act)
    if args.method == "adapter":
        init_adapter(model, args, cfg)
    # the two styles must agree on the loss of the first micro-batch
    mb = micro_batch(exs, args.batch_size, 0)
    with torch.no_grad():
        l_ref, _ = model.loss_ref(*batch_padded(mb))
        ids, pos, tg, seqs = batch_packed(mb)
        l_opt, _ = model.loss_opt(ids, pos, tg, seqs)
    res["ref_vs_opt_rel"] = abs(float(l_ref) - float(l_opt)) / abs(float(l_ref))
    # the reference-style training run whose numbers the C trainer is compared with
    tr = Trainer(model, exs, args, args.method)
    steps = []
    for s in range(args.steps):
        loss, lr, e = tr.step("ref")
        steps.append({"loss": loss, "lr": lr, "epoch": e})
    res["steps"] = steps
    if args.method == "adapter":
        res["adapter_query"] = model.query.detach().reshape(-1).tolist()
        res["gates"] = model.gates.detach().reshape(-1).tolist()
        res["K"], res["L"] = model.K, model.L
    if args.compare_model:  # the C trainer's result (full fine-tuning): every weight compared here
        _, wc = load_hf(args.compare_model)
        worst, where = 0.0, ""
        pairs = [("tok_emb", w["tok_emb"], wc["tok_emb"]), ("norm", w["norm"], wc["norm"]), ("cls", w["cls"], wc["cls"])]
        for i, (lw, lc) in enumerate(zip(w["layers"], wc["layers"])):
            pairs += [("layers.%d.%s" % (i, k), lw[k], lc[k]) for k in lw]
        for name, a, b in pairs:
            d = float((a.detach().reshape(-1) - b.reshape(-1)).abs().max())
            if d > worst:
                worst, where = d, name
        res["weights_max_abs_diff"] = worst
        res["weights_worst_tensor"] = where
        res["weights_tensors"] = len(pairs)
    # eval loss of the trained model over every example, batches of --eval-batch
    tot, n_tok = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(exs), args.eval_batch):
            loss, n = model.loss_ref(*batch_padded(exs[i:i + args.eval_batch]))
            if loss is not None:
                tot += float(loss) * n
                n_tok += n
    res["eval_loss"] = tot / max(n_tok, 1)
    res["eval_tokens"] = n_tok
    emit(res, args)


def emit(rec, args):
    for kv in getattr(args, "tag", None) or []:
        k, _, v = kv.partition("=")
        try:
            rec[k] = json.loads(v)
        except ValueError:
            rec[k] = v
    line = json.dumps(rec)
    if getattr(args, "out", None):
        with open(args.out, "w") as f:
            f.write(line + "\n")
    else:
        print(line)
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--model", required=True)
        p.add_argument("--tokens")
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--batch-size", type=int, default=4)
        p.add_argument("--max-seq-len", type=int, default=512)
        p.add_argument("--gate-act", default="tanh")
        p.add_argument("--precision", default="f32", choices=["f32", "bf16", "autocast"],
                       help="f32 | bf16 (bf16 weights and activations) | autocast (f32 weights, bf16 GEMMs)")
        p.add_argument("--tag", action="append", help="KEY=VALUE added to the output record")
        p.add_argument("--out", help="write the JSON record here instead of stdout")

    def optim(p):
        p.add_argument("--method", default="adapter", choices=["adapter", "full"])
        p.add_argument("--adapter-len", type=int, default=10)
        p.add_argument("--adapter-layer", type=int, default=30)
        p.add_argument("--init-adapter")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--accum-iter", type=int, default=1)
        p.add_argument("--epochs", type=float, default=5)
        p.add_argument("--warmup-epochs", type=float, default=2)
        p.add_argument("--blr", type=float, default=9e-3)
        p.add_argument("--lr", type=float, default=0)
        p.add_argument("--min-lr", type=float, default=0)
        p.add_argument("--weight-decay", type=float, default=0.02)
        p.add_argument("--beta1", type=float, default=0.9)
        p.add_argument("--beta2", type=float, default=0.95)
        p.add_argument("--eps", type=float, default=1e-8)

    p = sub.add_parser("train")
    common(p)
    optim(p)
    p.add_argument("--style", default="opt", choices=["ref", "ref512", "opt"])
    p.add_argument("--first", type=int, default=2, help="warm-up steps (not timed)")
    p.add_argument("--steps", type=int, default=4, help="timed steps")
    p.add_argument("--profile", type=int, default=0, help="print the N most expensive ops (torch profiler) to stderr")
    p = sub.add_parser("eval")
    common(p)
    p.add_argument("--style", default="opt", choices=["ref", "opt"])
    p.add_argument("--examples", type=int, default=32)
    p.add_argument("--passes", type=int, default=1, help="passes over the examples; the last one is timed")
    p = sub.add_parser("gen")
    common(p)
    p.add_argument("--prompt-ids", default="")
    p.add_argument("--bos", type=int, default=1)
    p.add_argument("--new", type=int, default=64)
    p = sub.add_parser("matmul")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--tag", action="append")
    p.add_argument("--out")
    p = sub.add_parser("check")
    common(p)
    optim(p)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--data", help="the Alpaca JSON, to re-check the tokenization with Python sentencepiece")
    p.add_argument("--eval-batch", type=int, default=4)
    p.add_argument("--compare-model", help="full fine-tuning: the C trainer's output model to compare weights with")
    args = ap.parse_args()
    {"train": cmd_train, "eval": cmd_eval, "gen": cmd_gen, "matmul": cmd_matmul, "check": cmd_check}[args.cmd](args)


if __name__ == "__main__":
    main()
