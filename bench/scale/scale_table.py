#!/usr/bin/env python3
"""The scale table of docs/PERFORMANCE.md: dreamlora and diffusers' own DreamBooth LoRA scripts, side by side
in one run, on the same random-weight pipelines, on this machine's CPU (fp32, batch 1).

  bench/scale/setup-peer.sh                    # once: diffusers' scripts + the Python that runs them
  bench/scale/scale_table.py --work /tmp/scale [--configs tiny,sd15-256,sd15-512,sdxl-512] [--ranks 4,32]

Per configuration and trainer: load (process start to the end of the model load: dreamlora's log line,
diffusers' last from_pretrained), start to the end of the first optimizer step, the median step after it,
peak RSS of the process (wait4), the checkpoint's bytes on disk and its stall of the step loop (dreamlora:
its background writer's stall; diffusers: accelerate's synchronous save_state). Each run makes STEPS steps
with one checkpoint after step STEPS (diffusers runs one step more, so that its checkpoint is timed: the
run exits at the end of that step). Writes scale.json and prints a Markdown table.
Pipelines: `dreamlora make-model --preset ... --dtype fp16` (diffusers layout, fp16 files as downloads are)
and the fixtures' tiny-sd; instance images from `dreamlora make-demo-data`.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

CONFIGS = {  # name: (model, resolution)
    "tiny": ("fixtures-tiny-sd", 64),
    "sd15-256": ("sd15", 256),
    "sd15-512": ("sd15", 512),
    "sdxl-512": ("sdxl", 512),
    "sdxl-1024": ("sdxl", 1024),
}
PROMPT = "a photo of sks toy"


def log(msg):
    print("[scale] %s" % msg, flush=True)


def run(args, log_path, env=None):
    """Runs args with stdout/stderr to log_path; returns (exit status, start unix time, wall s, peak RSS MiB)."""
    t0 = time.time()
    with open(log_path, "w") as f:
        p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, ru = os.wait4(p.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return code, t0, time.time() - t0, ru.ru_maxrss / 1024.0


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def make_inputs(a):
    models, images = {}, {}
    fixtures = os.path.join(ROOT, "..", "shared", "fixtures")
    for name in sorted({CONFIGS[c][0] for c in a.configs}):
        if name == "fixtures-tiny-sd":
            models[name] = {"path": os.path.join(fixtures, "tiny-sd"), "sdxl": False}
            continue
        out = os.path.join(a.work, "models", name)
        if not os.path.exists(os.path.join(out, "model_index.json")):
            log("make-model %s" % name)
            shutil.rmtree(out, ignore_errors=True)
            code, _, secs, rss = run([a.dreamlora, "make-model", "--preset", name, "--dtype", "fp16", "--tokenizer",
                                      os.path.join(fixtures, "tiny-sd", "tokenizer"), "--seed", "0", out],
                                     os.path.join(a.work, "make-model-%s.log" % name))
            if code != 0:
                sys.exit("make-model %s failed: see %s" % (name, a.work))
            log("  %.1f s, peak RSS %.0f MiB" % (secs, rss))
        models[name] = {"path": out, "sdxl": name.startswith("sdxl")}
    for res in sorted({CONFIGS[c][1] for c in a.configs}):
        out = os.path.join(a.work, "images-%d" % res)
        if not os.path.isdir(out):
            subprocess.check_call([a.dreamlora, "make-demo-data", "--count", "4", "--size", str(res), out],
                                  stdout=subprocess.DEVNULL)
        images[res] = out
    return models, images


def steps_after_first(ends, count):
    """Median interval between consecutive step ends 1..count (the first step warms up)."""
    gaps = [b - a for a, b in zip(ends[:count - 1], ends[1:count])]
    return statistics.median(gaps) if gaps else None


def run_dreamlora(a, model, images, res, rank, out):
    args = [a.dreamlora, "--threads", str(a.threads), "train", "--model", model["path"], "--image-path", images,
            "--prompt", PROMPT, "--resolution", str(res), "--batch-size", "1", "--rank", str(rank),
            "--lr", "1e-4", "--num-steps", str(a.steps), "--checkpointing-steps", str(a.steps),
            "--seed", "0", "--output-dir", out]
    if res >= 1024:
        args.append("--gradient-checkpointing")
    code, t0, wall, rss = run(args, out + ".log")
    r = {"rc": code, "wall_s": wall, "peak_rss_mib": rss}
    if code != 0:
        return r
    steps, stalls = [], []
    for line in open(os.path.join(out, "metrics.jsonl")):
        j = json.loads(line)
        if "checkpoint_stall_s" in j:
            stalls.append(j["checkpoint_stall_s"])
        elif "loss" in j:
            steps.append(j["time"])
    m = re.search(r"model loaded from .* in ([0-9.e+-]+) s", open(out + ".log").read())
    r.update({"first_step_s": steps[0] - t0, "step_s": steps_after_first(steps, a.steps),
              "checkpoint_stall_s": stalls[-1] if stalls else None,
              "checkpoint_bytes": dir_bytes(os.path.join(out, "checkpoint-%d" % a.steps)),
              "load_s": float(m.group(1)) if m else None})
    return r


def run_diffusers(a, model, images, res, rank, out):
    script = os.path.join(a.examples, "train_dreambooth_lora_sdxl.py" if model["sdxl"] else "train_dreambooth_lora.py")
    result = out + "-timing.json"
    args = [a.peer_python, os.path.join(ROOT, "bench", "gpu", "run_diffusers.py"), "--script", script, "--result",
            result, "--steps", str(a.steps + 1), "--transforms-shim",
            os.path.join(ROOT, "tests", "interop", "shim"), "--", "--pretrained_model_name_or_path", model["path"],
            "--instance_data_dir", images, "--instance_prompt", PROMPT, "--resolution", str(res),
            "--train_batch_size", "1", "--rank", str(rank), "--learning_rate", "1e-4",
            "--max_train_steps", str(a.steps + 1), "--checkpointing_steps", str(a.steps), "--output_dir", out,
            "--seed", "0", "--dataloader_num_workers", "0", "--mixed_precision", "no", "--report_to", "tensorboard"]
    if res >= 1024:
        args.append("--gradient_checkpointing")
    env = dict(os.environ, GPU_CHECK_T0=repr(time.time()), OMP_NUM_THREADS=str(a.threads))
    code, t0, wall, rss = run(args, out + ".log", env=env)
    r = {"rc": code, "wall_s": wall, "peak_rss_mib": rss}
    if code != 0 or not os.path.exists(result):
        r["rc"] = code or -1
        return r
    timing = json.load(open(result))
    ends = timing["step_end_times"]
    loads = [t for t in timing.get("model_loaded_times", []) if not ends or t < ends[0]]
    ckpt = os.path.join(out, "checkpoint-%d" % a.steps)
    r.update({"first_step_s": ends[0] - t0, "step_s": steps_after_first(ends, a.steps),
              "checkpoint_stall_s": timing["save_state_s"][-1] if timing["save_state_s"] else None,
              "checkpoint_bytes": dir_bytes(ckpt) if os.path.isdir(ckpt) else None,
              "load_s": (max(loads) - t0) if loads else None, "versions": timing.get("versions")})
    return r


def fmt(v, spec):
    return "—" if v is None else spec % v


def table(results):
    rows = ["| config | rank | trainer | load (s) | start → first step (s) | step (s) | peak RSS (MiB) | "
            "checkpoint (bytes) | checkpoint stall (ms) |", "|---|---|---|---|---|---|---|---|---|"]
    for key, r in results.items():
        config, rank, trainer = key.split("/")
        if r["rc"] != 0:
            rows.append("| %s | %s | %s | failed (exit %s) |" % (config, rank, trainer, r["rc"]))
            continue
        stall = r["checkpoint_stall_s"]
        rows.append("| %s | %s | %s | %s | %s | %s | %.0f | %s | %s |" % (
            config, rank, trainer, fmt(r["load_s"], "%.1f"), fmt(r["first_step_s"], "%.1f"),
            fmt(r["step_s"], "%.2f"), r["peak_rss_mib"], fmt(r["checkpoint_bytes"], "%d"), fmt(None if stall is None else stall * 1000, "%.1f")))
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="scratch folder (models are kept there between runs)")
    ap.add_argument("--dreamlora", default=os.path.join(ROOT, "build", "dreamlora"))
    ap.add_argument("--peer-python", default=os.path.join(ROOT, "build", "pyenv-interop", "bin", "python"))
    ap.add_argument("--examples", default=os.path.join(ROOT, "build", "bench-peer", "examples"))
    ap.add_argument("--configs", default="tiny,sd15-256,sd15-512,sdxl-512")
    ap.add_argument("--ranks", default="4,32")
    ap.add_argument("--trainers", default="dreamlora,diffusers")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default="scale.json")
    a = ap.parse_args()
    a.configs = a.configs.split(",")
    for c in a.configs:
        if c not in CONFIGS:
            sys.exit("unknown config %s (known: %s)" % (c, ", ".join(CONFIGS)))
    os.makedirs(a.work, exist_ok=True)
    models, images = make_inputs(a)
    results = {}
    for config in a.configs:
        name, res = CONFIGS[config]
        for rank in [int(x) for x in a.ranks.split(",")]:
            for trainer in a.trainers.split(","):
                key = "%s/%d/%s" % (config, rank, trainer)
                out = os.path.join(a.work, "runs", key.replace("/", "-"))
                shutil.rmtree(out, ignore_errors=True)
                os.makedirs(os.path.dirname(out), exist_ok=True)
                load_before = os.getloadavg()[0]
                log("%s (load average %.1f)" % (key, load_before))
                fn = run_dreamlora if trainer == "dreamlora" else run_diffusers
                results[key] = fn(a, models[name], images[res], res, rank, out)
                results[key]["load_average_before"] = load_before
                log("  %s" % json.dumps({k: v for k, v in results[key].items() if k != "versions"}))
                shutil.rmtree(out, ignore_errors=True)  # checkpoints of the big models are large
                with open(a.out, "w") as f:
                    json.dump({"machine": os.uname().nodename, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "threads": a.threads, "steps": a.steps, "results": results}, f, indent=1)
    print(table(results))


if __name__ == "__main__":
    main()
