"""Self-edit evaluations (absorb + score) per minute: the reference procedure vs ours, same model, same run.

    python benchmarks/inner_loop.py                          # embedded SmolLM2-135M, demo inner-loop settings
    python benchmarks/inner_loop.py --model tiny --n 8       # a tiny model built from config
    python benchmarks/inner_loop.py --device cuda            # on a GPU
    python benchmarks/inner_loop.py --ref-length 256,2048 --n-ref 1   # (a) at both paddings, one run

Three ways to evaluate the same N self-edits, each in its own subprocess (so peak memory is its own):
  a  the reference procedure of the paper's code: a fresh peft model and HF `Trainer` per self-edit,
     batch size 1, every sequence padded to a fixed length (`--ref-length`; the paper uses 2048), the
     no-update baseline re-measured on every call, one self-edit at a time;
  b  our inner loop restricted to one adapter at a time (dynamic padding, cached baseline, the recipe's
     batch size, no Trainer);
  c  ours at full speed: K adapters trained and scored in one pass (K from `--k`, else the recipe's
     `inner.parallel_adapters`, else chosen from free memory);
  c0 (c) as before issue 18's adapter changes: the adapters' delta as its own bmm, bmm, scale and add (four
     kernels per targeted layer, instead of bmm + baddbmm; fp32 models only, a bf16 model keeps the old
     path) and every pass in rows padded to the longest adapter's batch (never one packed row): the
     scoring and training phases before and after in the same run (`--methods a,b,c0,c`). Its adapters,
     and hence its answers, may differ from (c)'s in the last bits.
Each self-edit is a fixed restatement of a built-in passage (its sentences as items), so the figures
measure the inner loop alone; `--self-edits FILE` times the self-edits the paper's models wrote instead
(an official *_val.json, its passages from 100 on), e.g. with the paper's inner loop:
    python benchmarks/inner_loop.py --methods c0,c --recipe recipes/knowledge/smollm2-135m-calibration.yaml \
        --self-edits $SEAL/knowledge-incorporation/data/synthetic_data/eval/base_val.json
Achieved FLOP/s counts 4·params·(real tokens) per training step
(forward + activation gradients; the base is frozen) against a measured fp32 matmul peak; (b) and (c) also
report the share of their training tokens that is row padding (an adapter's batch is one packed row, and
the K rows of a pass are padded to the longest unless the pass runs as one row of all of them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak_gflops(device: str, threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    n = 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    reps = 10 if device == "cpu" else 100
    if device != "cpu":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device != "cpu":
        torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9


def workload(args):
    """The model, student config, domain and N (passage, plan) pairs plus one warm-up pair."""
    import torch

    from seal.shared.config import ModelConfig
    from seal.shared.config_parser import parse_config
    from seal.shared.domain import SelfEdit
    from seal.shared.knowledge import KnowledgeDomain
    from seal.shared.models import load_model

    torch.set_num_threads(args.threads)
    cfg = parse_config(["--config", args.recipe])
    name = args.model
    if name == "tiny":
        sys.path.insert(0, str(REPO))
        from tests.conftest import make_model_dir

        name = str(make_model_dir(Path(tempfile.mkdtemp(prefix="seal-bench-"))))
    model, tok = load_model(ModelConfig(name=name, device=args.device,
                                        dtype="bfloat16" if args.device != "cpu" else "float32"))
    domain = KnowledgeDomain(KnowledgeDomain.Options(**{k: v for k, v in cfg.domain.items() if k != "name"}))
    pairs = []
    if args.self_edits:  # real passages and the self-edits a model wrote for them (their first completion)
        from seal.teacher.evaluation import published_self_edits

        passages = domain.load(args.self_edits, f"all[100:{101 + args.n}]")
        edits = published_self_edits(args.self_edits, domain, passages, 1)
        return cfg, model, tok, domain, [(p, domain.plan(p, domain.parse(p, edits[(domain.instance_id(p), 0)])))
                                         for p in passages]
    for p in domain.load("builtin", "train")[: args.n + 1]:
        items = [s for s in re.split(r"(?<=\.)\s+", p.context) if s]
        pairs.append((p, domain.plan(p, SelfEdit(text=p.context, items=items))))
    return cfg, model, tok, domain, pairs


def params_for_flops(model) -> int:
    emb = model.get_input_embeddings().weight.numel()
    return sum(p.numel() for p in model.parameters()) - emb + model.get_output_embeddings().weight.numel()


def run_reference(args) -> dict:
    """(a) One self-edit at a time, as the paper's code does it."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from seal.shared.models import format_prompt

    cfg, model, tok, domain, pairs = workload(args)
    inner, length = cfg.inner, int(args.ref_length)
    targets = "all-linear" if inner.target_modules == ["all-linear"] else inner.target_modules

    def answer(m, passage):
        q = domain.queries(passage)
        texts = [format_prompt(tok, x, True) for x in q.prompts]
        tok.padding_side = "left"
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(m.device)
        with torch.no_grad():
            out = m.generate(**enc, max_new_tokens=q.max_new_tokens, do_sample=False, top_p=None, top_k=None,
                             temperature=None, pad_token_id=tok.pad_token_id, stop_strings=q.stop, tokenizer=tok)
        return domain.grade(passage, tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))

    def one(passage, plan, out_dir):
        answer(model, passage)  # the baseline, re-measured on every call
        texts = [ex.completion + tok.eos_token for ex in plan.examples]
        tok.padding_side = "right"
        enc = tok(texts, padding="max_length", truncation=True, max_length=length)
        labels = [[t if m else -100 for t, m in zip(ids, mask)] for ids, mask in zip(enc["input_ids"],
                                                                                      enc["attention_mask"])]
        ds = Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                                "labels": labels})
        peft_model = get_peft_model(model, LoraConfig(r=inner.lora_r, lora_alpha=inner.lora_alpha,
                                                      lora_dropout=inner.lora_dropout, target_modules=targets,
                                                      task_type="CAUSAL_LM"))
        targs = TrainingArguments(output_dir=out_dir, per_device_train_batch_size=1, num_train_epochs=inner.epochs,
                                  learning_rate=inner.lr, save_strategy="no", report_to=[], logging_strategy="no",
                                  disable_tqdm=True, use_cpu=args.device == "cpu", bf16=args.device != "cpu",
                                  seed=0, dataloader_num_workers=0)
        Trainer(model=peft_model, args=targs, train_dataset=ds).train()
        peft_model.eval()
        answer(peft_model, passage)
        peft_model.unload()  # back to the plain base for the next self-edit
        return sum(sum(m) for m in enc["attention_mask"]) * inner.epochs

    with tempfile.TemporaryDirectory() as tmp:
        # warm-up (first-call costs: kernels, Trainer set-up) at a short padding: at 2048 one self-edit
        # takes minutes on a CPU; the first timed one still pays the longer shapes' first allocations,
        # small beside those minutes
        length, timed_length = min(length, 256), length
        one(*pairs[0], tmp)
        length = timed_length
        start = time.perf_counter()
        real_tokens = sum(one(p, plan, tmp) for p, plan in pairs[1:])
        wall = time.perf_counter() - start
    return {"seconds": wall, "evals": len(pairs) - 1, "real_tokens": real_tokens,
            "flop_params": params_for_flops(model), "peak_rss_mib": peak_rss_mib(), **_gpu_peak()}


def previous_adapter_forward(self, x):
    """MultiLoRALinear.forward before issue 18: the adapters' delta as its own tensor, scaled, cast and
    added to the base output (for c0, the before of the scoring comparison)."""
    import torch

    y = self.base(x)
    bank = self.bank
    if bank.route is None:
        return y
    a_t, b_t = bank.views[self.index]
    xa = x.reshape(a_t.shape[0], -1, x.shape[-1]).to(a_t.dtype)
    if bank.dropout and self.training:
        xa = torch.nn.functional.dropout(xa, bank.dropout)
    delta = torch.bmm(torch.bmm(xa, a_t), b_t) * bank.scaling
    return y + delta.reshape(y.shape).to(y.dtype)


def run_ours(args, slots: int, previous: bool = False) -> dict:
    """(b) slots=1, (c) slots=K: our Student.run over the same jobs, baselines cached first. `previous`:
    c0, the adapter forward and padded rows of before issue 18."""
    from dataclasses import replace

    from seal.student import Job, Student
    from seal.student.multi_lora import MultiLoRALinear

    if previous:
        MultiLoRALinear.forward = previous_adapter_forward
        Student._packs = lambda self, lengths: False
    cfg, model, tok, domain, pairs = workload(args)
    inner = replace(cfg.inner, parallel_adapters=slots)
    student = Student(model, tok, inner, domain, chat=tok.chat_template is not None)
    for p, _ in pairs:
        student.baseline(p)  # cached once per student in a run; not part of a self-edit evaluation
    student.run([Job(p, plan, 0) for p, plan in pairs[:1]])  # warm-up
    phases = _time_phases(student, args.device)
    jobs = [Job(p, plan, 0) for p, plan in pairs[1:]]
    start = time.perf_counter()
    results = student.run(jobs)
    wall = time.perf_counter() - start
    assert all(r.error is None for r in results), [r.error for r in results]
    absorb = sum(r.stats.seconds for r in results)
    return {"seconds": wall, "evals": len(jobs), "real_tokens": sum(r.stats.tokens for r in results),
            "absorb_seconds": absorb, "score_seconds": sum(r.score_seconds for r in results), "slots": slots,
            "phases": _phase_split(phases, wall), "row_tokens": phases["row_tokens"],
            "flop_params": params_for_flops(model), "peak_rss_mib": peak_rss_mib(), **_gpu_peak()}


def _time_phases(student, device: str) -> dict[str, float]:
    """Wall time per phase of the timed run, from wrappers around the student's own steps (on a GPU each
    boundary synchronises, which the untimed path does not): tokenise/pack (encode, the packed rows),
    forward (training passes), the rest of a training pass (loss and backward), the optimizer step, and
    scoring (generation and grading)."""
    import torch

    from seal.student import multi_lora

    spent = {"encode": 0.0, "rows": 0.0, "forward": 0.0, "pass": 0.0, "optimizer": 0.0, "scoring": 0.0,
             "row_tokens": 0}
    scoring = [False]

    def sync():
        if device != "cpu":
            torch.cuda.synchronize()

    def wrap(owner, name, phase, skip_while_scoring=False):
        inner = getattr(owner, name)

        def timed(*a, **kw):
            if skip_while_scoring and scoring[0]:
                return inner(*a, **kw)
            sync()
            t = time.perf_counter()
            scoring[0] = scoring[0] or phase == "scoring"
            try:
                return inner(*a, **kw)
            finally:
                sync()
                if phase == "scoring":
                    scoring[0] = False
                spent[phase] += time.perf_counter() - t
        setattr(owner, name, timed)

    wrap(student, "encode", "encode")
    rows = student._rows

    def counted(groups):  # the tokens a training pass computes, row padding included
        out = rows(groups)
        spent["row_tokens"] += out["input_ids"].numel()
        return out
    student._rows = counted
    wrap(student, "_rows", "rows")  # inside a training pass
    wrap(student.model, "forward", "forward", skip_while_scoring=True)
    wrap(student, "_backward", "pass")
    wrap(multi_lora.SlotAdamW, "step", "optimizer")
    wrap(student, "score_many", "scoring")
    return spent


def _phase_split(spent: dict[str, float], wall: float) -> dict[str, float]:
    """Seconds per phase; `backward` is a training pass less its packed rows and forward (the loss and the
    backward pass); `other` the rest (adapter init, schedules, bookkeeping)."""
    out = {"pack": spent["encode"] + spent["rows"], "forward": spent["forward"],
           "backward": max(0.0, spent["pass"] - spent["forward"] - spent["rows"]), "optimizer": spent["optimizer"],
           "scoring": spent["scoring"]}
    out["other"] = max(0.0, wall - sum(out.values()))
    return out


def _gpu_peak() -> dict:
    import torch

    if torch.cuda.is_available():
        return {"peak_gpu_mib": torch.cuda.max_memory_allocated() / 2 ** 20}
    return {}


def child(args) -> None:
    if args.method == "a":
        out = run_reference(args)
    elif args.method == "b":
        out = run_ours(args, 1)
    else:
        from seal.shared.config_parser import parse_config

        k = args.k or parse_config(["--config", args.recipe]).inner.parallel_adapters or args.n
        out = run_ours(args, min(k, args.n), previous=args.method == "c0")
    print("RESULT " + json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded", help="embedded | tiny | a path or hub name")
    ap.add_argument("--recipe", default=str(REPO / "recipes/knowledge/smollm2-135m.yaml"))
    ap.add_argument("--n", type=int, default=8, help="self-edits timed for (b) and (c), after one warm-up")
    ap.add_argument("--n-ref", type=int, default=2, help="self-edits timed for (a), the slow reference")
    ap.add_argument("--k", type=int, default=None, help="adapters per pass for (c)")
    ap.add_argument("--ref-length", default="256",
                    help="fixed padded length(s) for (a), comma-separated: one (a) row each (the paper pads to 2048)")
    ap.add_argument("--self-edits", help="an official self-edits file (knowledge-incorporation/data/synthetic_data/"
                    "eval/*_val.json): its passages 100.. and their first self-edit instead of the built-in ones")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", default="a,b,c0,c")
    ap.add_argument("--method", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.method:
        return child(args)

    import torch

    peak = matmul_peak_gflops(args.device, args.threads)
    print(f"model={args.model} device={args.device} threads={args.threads} cpus={os.cpu_count()} "
          f"torch={torch.__version__} recipe={Path(args.recipe).name} fp32 matmul peak {peak:.1f} GFLOP/s")
    results = {}
    runs = [(m, length) for m in args.methods.split(",")
            for length in (args.ref_length.split(",") if m == "a" else [args.ref_length.split(",")[0]])]
    for method, length in runs:
        name = f"a@{length}" if method == "a" else method
        n = args.n_ref if method == "a" else args.n
        cmd = [sys.executable, __file__, "--method", method, "--model", args.model, "--recipe", args.recipe,
               "--n", str(n), "--ref-length", length, "--threads", str(args.threads),
               "--device", args.device] + (["--k", str(args.k)] if args.k else []) + \
              (["--self-edits", args.self_edits] if args.self_edits else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"method {name} failed:\n{proc.stderr[-3000:]}")
        r = results[name] = json.loads(line[0][7:])
        per = r["seconds"] / r["evals"]
        flops = 4 * r["flop_params"] * r["real_tokens"] / r["seconds"] / 1e9
        extra = f", K={r['slots']}" if "slots" in r else f", padded to {length}, {n} self-edits"
        mem = f"peak RSS {r['peak_rss_mib']:.0f} MiB" + (f", peak GPU {r['peak_gpu_mib']:.0f} MiB"
                                                        if "peak_gpu_mib" in r else "")
        print(f"({name}) {per:7.2f} s per self-edit evaluation, {60 / per:6.2f} evaluations/min{extra}; "
              f"useful {flops:.1f} GFLOP/s ({100 * flops / peak:.0f}% of peak); {mem}")
        if "phases" in r:
            ph = r["phases"]
            train = sum(ph[k] for k in ("pack", "forward", "backward", "optimizer"))
            split = ", ".join(f"{k} {v / r['evals']:.2f}" for k, v in ph.items())
            train_gflops = 4 * r["flop_params"] * r["real_tokens"] / train / 1e9
            padding = 1 - r["real_tokens"] / max(r["row_tokens"], 1)
            print(f"    per self-edit, s: {split}; training phase {100 * train_gflops / peak:.0f}% of peak; "
                  f"row padding {100 * padding:.0f}% of the tokens trained")
    if "c" in results:
        per_c = results["c"]["seconds"] / results["c"]["evals"]
        for m in [name for name in results if name != "c"]:
            print(f"speed-up (c) over ({m}): x{results[m]['seconds'] / results[m]['evals'] / per_c:.2f}")
        if "c0" in results:
            for phase in ("scoring", "forward", "backward"):
                before, after = results["c0"]["phases"][phase], results["c"]["phases"][phase]
                print(f"{phase} phase, (c0) over (c): x{before / after:.2f}")


if __name__ == "__main__":
    main()
