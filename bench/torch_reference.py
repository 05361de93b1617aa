#!/usr/bin/env python3
"""Plain-PyTorch baseline of the Switch benchmark model (configs/bench-switch.yaml).

Builds the same decoder as switchyard's bench-switch config (GQA attention with RoPE, RMSNorm,
a top-1 Switch MoE FFN in every layer) and times full training steps on one GPU: bf16
autocast over fp32 parameters, fused AdamW, gradient clipping. The numbers are the baseline
that bench/compare.sh sets switchyard's speed against.

  python3 bench/torch_reference.py --mode eager
  python3 bench/torch_reference.py --mode compile --steps 30 --json results.jsonl

The last line printed is machine-readable:
  result mode=eager tokens_per_s=... step_ms=... tflops=... mfu=... peak_gib=...
"""
import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# configs/bench-switch.yaml, with switchyard's defaults for what it leaves out.
VOCAB = 32768
D_MODEL = 768
N_LAYERS = 12
N_HEADS = 12
N_KV_HEADS = 4
D_FF = 3072
EXPERTS = 8
TOP_K = 1
CAPACITY_FACTOR = 1.25
ROPE_THETA = 10000.0
NORM_EPS = 1e-5
INIT_STD = 0.02
AUX_LOSS_COEF = 0.01
Z_LOSS_COEF = 0.001
LR = 3e-4
BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.1
MAX_GRAD_NORM = 1.0
MICRO_BATCH = 16
SEQ_LEN = 1024
PEAK_FLOPS = 989e12  # dense bf16 peak of an H100/H200 SXM


def rope_tables(seq_len, head_dim, theta):
    """cos and sin of the rotation angles, [T, 1, head_dim / 2], in fp32."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)


def apply_rope(x, cos, sin):
    """Rotate-half RoPE on x [B, T, H, head_dim]; cos/sin are [T, 1, head_dim / 2]."""
    x1, x2 = x.chunk(2, dim=-1)
    # Cast the tables so that bf16 activations stay bf16 (fp32 tables would promote them).
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Attention(nn.Module):
    """Causal grouped-query self-attention through SDPA: with bf16 inputs and enable_gqa it
    takes a fused kernel (cuDNN or flash on Hopper) that reads the 4 KV heads unexpanded."""

    def __init__(self, d_model, n_heads, n_kv_heads):
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.qkv = nn.Linear(d_model, (n_heads + 2 * n_kv_heads) * self.head_dim, bias=False)
        self.out = nn.Linear(n_heads * self.head_dim, d_model, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, self.n_heads + 2 * self.n_kv_heads, self.head_dim)
        q, k, v = qkv.split([self.n_heads, self.n_kv_heads, self.n_kv_heads], dim=2)
        q = apply_rope(q, cos, sin).transpose(1, 2)  # [B, H, T, hd]
        k = apply_rope(k, cos, sin).transpose(1, 2)  # [B, KV, T, hd]
        v = v.transpose(1, 2)                        # [B, KV, T, hd]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.out(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class MoE(nn.Module):
    """Switch FFN: fp32 top-1 router, fixed expert capacity with position-based dropping,
    experts as batched matmuls over an [E, C, d] dispatch buffer.

    All shapes are fixed by the token count, so torch.compile sees a static graph: a token
    over capacity is written to a spare row C of its expert, which is sliced off before the
    experts run and reads back as zeros at the combine."""

    def __init__(self, d_model, d_ff, experts, capacity_factor, compute_dtype):
        super().__init__()
        self.experts = experts
        self.capacity_factor = capacity_factor
        self.compute_dtype = compute_dtype
        self.router = nn.Linear(d_model, experts, bias=False)
        self.w_in = nn.Parameter(torch.empty(experts, d_model, d_ff))
        self.w_out = nn.Parameter(torch.empty(experts, d_ff, d_model))

    def capacity(self, tokens):
        # Same rounding as switchyard's router_capacity (top-1).
        return int(math.ceil(self.capacity_factor * tokens * TOP_K / self.experts * (1.0 - 1e-9)))

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [N, d]
        N, d = x.shape
        E, C = self.experts, self.capacity(N)

        # The router runs in fp32: bf16 logits would flip close top-1 choices.
        with torch.autocast("cuda", enabled=False):
            logits = F.linear(x.float(), self.router.weight.float())  # [N, E]
        probs = logits.softmax(dim=-1)
        gate, expert = probs.max(dim=-1)  # [N], [N]

        # Position of each token in its expert's queue; earlier tokens win the capacity. The
        # mask is [E, N] so that the scan runs along the contiguous axis (a cumsum down an
        # [N, E] tensor's outer axis takes milliseconds in eager).
        mask = torch.arange(E, device=x.device).unsqueeze(1) == expert.unsqueeze(0)  # [E, N] bool
        position = mask.long().cumsum(dim=1).gather(0, expert.unsqueeze(0)).squeeze(0) - 1  # [N]
        slot = torch.where(position < C, position, torch.full_like(position, C))
        row = expert * (C + 1) + slot  # [N] into the [E * (C + 1)] rows

        # Dispatch: duplicates only ever land on the spare rows, which are dropped.
        xc = x.to(self.compute_dtype)
        buffer = xc.new_zeros(E * (C + 1), d).index_copy(0, row, xc)
        xe = buffer.view(E, C + 1, d)[:, :C]  # [E, C, d]
        h = F.gelu(torch.bmm(xe, self.w_in.to(xc.dtype)), approximate="tanh")  # [E, C, dff]
        ye = torch.bmm(h, self.w_out.to(xc.dtype))  # [E, C, d]

        # Combine: the zero row C gives dropped tokens nothing (the residual carries them).
        ye = F.pad(ye, (0, 0, 0, 1)).reshape(E * (C + 1), d)
        y = ye.index_select(0, row) * gate.unsqueeze(1).to(ye.dtype)  # [N, d]

        # Switch load-balancing loss (fractions counted before dropping) and router z-loss.
        fraction = mask.float().mean(dim=1)  # f_i, no gradient
        mean_prob = probs.mean(dim=0)        # P_i
        aux = AUX_LOSS_COEF * E * (fraction * mean_prob).sum()
        z = Z_LOSS_COEF * torch.logsumexp(logits, dim=-1).square().mean()
        return y.view(shape), aux + z


class Block(nn.Module):
    """Pre-norm decoder block: x + attn(norm(x)), then x + moe(norm(x))."""

    def __init__(self, compute_dtype):
        super().__init__()
        self.attn_norm = nn.RMSNorm(D_MODEL, eps=NORM_EPS)
        self.attn = Attention(D_MODEL, N_HEADS, N_KV_HEADS)
        self.ffn_norm = nn.RMSNorm(D_MODEL, eps=NORM_EPS)
        self.moe = MoE(D_MODEL, D_FF, EXPERTS, CAPACITY_FACTOR, compute_dtype)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        y, router_loss = self.moe(self.ffn_norm(x))
        return x + y, router_loss


class Model(nn.Module):
    """Embedding, N_LAYERS blocks, final RMSNorm and an untied LM head; no biases."""

    def __init__(self, max_seq_len, compute_dtype=torch.bfloat16):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        self.blocks = nn.ModuleList(Block(compute_dtype) for _ in range(N_LAYERS))
        self.final_norm = nn.RMSNorm(D_MODEL, eps=NORM_EPS)
        self.lm_head = nn.Linear(D_MODEL, VOCAB, bias=False)
        cos, sin = rope_tables(max_seq_len, D_MODEL // N_HEADS, ROPE_THETA)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        # Like switchyard: N(0, 0.02), output projections scaled by 1/sqrt(2 * layers), norms 1.
        out_std = INIT_STD / math.sqrt(2 * N_LAYERS)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            elif name.endswith("attn.out.weight") or name.endswith("moe.w_out"):
                p.normal_(0.0, out_std)
            else:
                p.normal_(0.0, INIT_STD)

    def forward(self, tokens, targets):
        T = tokens.shape[1]
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.embed(tokens)
        router_loss = x.new_zeros(())
        for block in self.blocks:
            x, block_loss = block(x, cos, sin)
            router_loss = router_loss + block_loss
        logits = self.lm_head(self.final_norm(x))
        ce = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))
        return ce + router_loss


def flops_per_token(seq_len):
    """6 x active matmul parameters + the attention score/value matmuls, as switchyard counts."""
    head_dim = D_MODEL // N_HEADS
    per_layer = (D_MODEL * (N_HEADS + 2 * N_KV_HEADS) * head_dim  # qkv
                 + N_HEADS * head_dim * D_MODEL                   # attention output
                 + D_MODEL * EXPERTS                              # router
                 + TOP_K * 2 * D_MODEL * D_FF)                    # the chosen expert
    active = VOCAB * D_MODEL + N_LAYERS * per_layer
    return 6 * active + 6 * N_LAYERS * seq_len * D_MODEL, active


def make_optimizer(model):
    # Decay matrices only; norm weights are exempt (as in switchyard).
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=LR, betas=BETAS, fused=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["eager", "compile"], default="eager")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (they absorb compilation)")
    parser.add_argument("--micro-batch", type=int, default=MICRO_BATCH)
    parser.add_argument("--seq-len", type=int, default=SEQ_LEN)
    parser.add_argument("--json", help="append one JSON line with the results to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("torch_reference.py: needs a CUDA GPU")
    if args.steps < 1 or args.warmup < 1:
        sys.exit("torch_reference.py: --steps and --warmup must be at least 1")

    device = torch.device("cuda")
    torch.manual_seed(0)
    tokens_per_step = args.micro_batch * args.seq_len
    fpt, active = flops_per_token(args.seq_len)
    model = Model(args.seq_len).to(device)
    total_params = sum(p.numel() for p in model.parameters())
    optimizer = make_optimizer(model)
    params = list(model.parameters())
    # Compile the model's forward (and with it the backward); the optimizer stays eager.
    forward = torch.compile(model) if args.mode == "compile" else model

    # Synthetic data, made once on the GPU.
    inputs = torch.randint(0, VOCAB, (args.micro_batch, args.seq_len), device=device)
    targets = torch.randint(0, VOCAB, (args.micro_batch, args.seq_len), device=device)

    gpu = torch.cuda.get_device_name(device)
    print(f"torch {torch.__version__} on {gpu}, mode {args.mode}")
    print(f"parameters {total_params / 1e6:.1f}M, active matmul parameters {active / 1e6:.1f}M, "
          f"model FLOPs per token {fpt:.4e}")
    print(f"micro-batch {args.micro_batch} x seq {args.seq_len} = {tokens_per_step} tokens/step, "
          f"expert capacity {model.blocks[0].moe.capacity(tokens_per_step)}")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = forward(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    start = time.perf_counter()
    first_loss = step().item()
    print(f"step 1 loss {first_loss:.4f} ({time.perf_counter() - start:.1f}s with setup/compilation)")
    for _ in range(args.warmup - 1):
        step()
    torch.cuda.synchronize()
    print(f"warm-up of {args.warmup} steps done in {time.perf_counter() - start:.1f}s")

    torch.cuda.reset_peak_memory_stats()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(args.steps)]
    losses = []
    for begin, end in events:
        begin.record()
        losses.append(step())
        end.record()
    torch.cuda.synchronize()

    step_ms = [begin.elapsed_time(end) for begin, end in events]
    median_ms, mean_ms = statistics.median(step_ms), statistics.fmean(step_ms)
    last_loss = losses[-1].item()
    tokens_per_s = tokens_per_step / (median_ms / 1e3)
    tflops = fpt * tokens_per_s / 1e12
    mfu = tflops * 1e12 / PEAK_FLOPS
    peak_gib = torch.cuda.max_memory_allocated() / 2**30
    reserved_gib = torch.cuda.max_memory_reserved() / 2**30
    if not (math.isfinite(first_loss) and math.isfinite(last_loss)):
        sys.exit(f"torch_reference.py: loss is not finite ({first_loss} -> {last_loss})")

    print(f"loss {first_loss:.4f} (step 1) -> {last_loss:.4f} (step {args.warmup + args.steps})")
    print(f"step time over {args.steps} steps: median {median_ms:.2f} ms, mean {mean_ms:.2f} ms, "
          f"min {min(step_ms):.2f} ms, max {max(step_ms):.2f} ms")
    print(f"{tokens_per_s:.0f} tokens/s, {tflops:.1f} model TFLOP/s, MFU {100 * mfu:.1f}% of {PEAK_FLOPS / 1e12:.0f}")
    print(f"peak memory allocated {peak_gib:.2f} GiB, reserved {reserved_gib:.2f} GiB")
    if args.json:
        row = {"mode": args.mode, "torch": torch.__version__, "gpu": gpu, "micro_batch": args.micro_batch,
               "seq_len": args.seq_len, "steps": args.steps, "warmup": args.warmup,
               "tokens_per_s": tokens_per_s, "step_ms_median": median_ms, "step_ms_mean": mean_ms,
               "flops_per_token": fpt, "tflops": tflops, "mfu": mfu, "peak_gib": peak_gib,
               "reserved_gib": reserved_gib, "first_loss": first_loss, "last_loss": last_loss}
        with open(args.json, "a") as f:
            f.write(json.dumps(row) + "\n")
    print(f"result mode={args.mode} tokens_per_s={tokens_per_s:.0f} step_ms={median_ms:.1f} "
          f"tflops={tflops:.1f} mfu={mfu:.3f} peak_gib={peak_gib:.2f}", flush=True)


if __name__ == "__main__":
    main()
