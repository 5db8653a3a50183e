#!/usr/bin/env python3
"""The GPU run of issue #22, step by step (scripts/gpu-check.sh is the entry point; docs/GPU.md explains it).

Steps: env, build, correctness, resume_sigterm, resume_sigkill, nccl, bench. Each is timed, bounded by a
timeout and by the run's overall deadline, and recorded in gpu-check.json whether it passes, fails or is
skipped; a failure never stops the next step. Standard library only: this file also runs where python3 has
no torch (the dry run).
"""
import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.join(REPO, "bench", "gpu")


class Run:
    """Shared state: options, paths, the deadline, and the results being collected."""

    def __init__(self, args):
        self.args = args
        self.t_start = time.time()
        self.deadline = self.t_start + args.budget_s
        self.out = os.path.abspath(args.out)
        self.work = os.path.abspath(args.work)
        self.logs = os.path.join(self.work, "logs")
        self.carry = os.path.abspath(args.carry)
        self.root = os.path.join(self.carry, "root")
        self.build = os.path.join(REPO, args.build_dir)
        self.bin = os.path.join(self.build, "dreamlora")
        self.device = "cpu" if args.dry_run else "cuda"
        self.results = {"dry_run": args.dry_run, "device": self.device, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "budget_s": args.budget_s, "steps": {}}
        self.env = dict(os.environ)
        self.fallback_lib = os.path.join(self.work, "fallback-lib")
        os.makedirs(self.logs, exist_ok=True)
        os.makedirs(self.out, exist_ok=True)

    def remaining(self):
        return self.deadline - time.time()

    def log_path(self, name):
        return os.path.join(self.logs, name)


def sh(run, cmd, log_name, timeout_s, env=None, cwd=None):
    """Runs cmd (a list) with its output in logs/log_name; kills its whole process group on timeout.
    Returns (exit status or 'timeout', seconds, last lines of output)."""
    timeout_s = max(1.0, min(timeout_s * run.args.timeout_scale, run.remaining()))
    log = run.log_path(log_name)
    t0 = time.time()
    with open(log, "ab") as f:
        f.write(("$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env or run.env, cwd=cwd or REPO,
                             start_new_session=True)
        try:
            rc = p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            rc = "timeout"
    return rc, round(time.time() - t0, 2), tail(log)


def tail(path, lines=15):
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# env: what machine, which torch, what the carry holds


def step_env(run):
    info = {"ok": True, "nproc": os.cpu_count(), "python": run.args.python}
    q = subprocess.run([run.args.python, "-c", "import torch, json; print(json.dumps({'torch': torch.__version__, "
                        "'cuda': torch.version.cuda, 'cuda_available': torch.cuda.is_available(), 'gpu': "
                        "torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))"],
                       capture_output=True, text=True, timeout=60)
    info.update(json.loads(q.stdout.strip().splitlines()[-1]) if q.returncode == 0 else {"torch_error": q.stderr[-500:]})
    smi = shutil.which("nvidia-smi")
    if smi:
        r = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = r.stdout.strip()
    info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    manifest = os.path.join(run.carry, "MANIFEST.txt")
    info["carry"] = open(manifest).read().splitlines() if os.path.exists(manifest) else "missing: run scripts/make-gpu-carry.sh"
    if not os.path.exists(manifest):
        info["ok"] = False
    if not run.args.dry_run and not info.get("cuda_available"):
        info["ok"] = False
        info["error"] = "torch sees no CUDA device"
    return info


# ---------------------------------------------------------------------------------------------------------
# build: against the python's libtorch, with the carry's headers and libraries


def carry_build_env(run):
    """pkg-config through the carried pkgconf, reading only the carry's .pc files; a fallback library folder
    holding the carried shared libraries whose soname the machine lacks."""
    usr = os.path.join(run.root, "usr")
    libdir = os.path.join(usr, "lib", "x86_64-linux-gnu")
    wrapper = os.path.join(run.work, "pkg-config")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s \"$@\"\n" % (libdir, os.path.join(usr, "bin", "pkgconf")))
    os.chmod(wrapper, 0o755)
    run.env["PKG_CONFIG_LIBDIR"] = ":".join([os.path.join(libdir, "pkgconfig"), os.path.join(usr, "share", "pkgconfig")])
    run.env["PKG_CONFIG_SYSROOT_DIR"] = run.root
    ldconfig = shutil.which("ldconfig") or next((p for p in ["/sbin/ldconfig", "/usr/sbin/ldconfig"] if os.path.exists(p)), None)
    known = subprocess.run([ldconfig, "-p"], capture_output=True, text=True).stdout if ldconfig else ""
    have = set(re.findall(r"^\s*(\S+) \(", known, re.M))
    os.makedirs(run.fallback_lib, exist_ok=True)
    linked = []
    for name in sorted(os.listdir(libdir)):
        m = re.match(r"^(lib.+\.so\.\d+)$", name)
        if m and name not in have:
            dst = os.path.join(run.fallback_lib, name)
            if not os.path.lexists(dst):
                os.symlink(os.path.join(libdir, name), dst)
            linked.append(name)
    run.env["LD_LIBRARY_PATH"] = ":".join(p for p in [run.fallback_lib, run.env.get("LD_LIBRARY_PATH", "")] if p)
    return wrapper, usr, libdir, linked


def step_build(run):
    info = {"ok": False}
    wrapper, usr, libdir, linked = carry_build_env(run)
    info["fallback_libraries"] = linked
    jobs = run.args.jobs or os.cpu_count()
    configure = ["cmake", "-S", REPO, "-B", run.build, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                 "-DDREAMLORA_BUILD_BENCH=OFF", "-DDREAMLORA_BUILD_TESTS=ON", "-DDREAMLORA_TORCH=python",
                 "-DDREAMLORA_PYTHON=" + run.args.python, "-DCMAKE_PREFIX_PATH=" + usr,
                 "-DPKG_CONFIG_EXECUTABLE=" + wrapper, "-DDREAMLORA_FIXTURES_DIR=" + os.path.join(run.carry, "fixtures"),
                 "-DCMAKE_CXX_FLAGS=-isystem " + os.path.join(usr, "include"),
                 "-DCMAKE_EXE_LINKER_FLAGS=-Wl,-rpath-link," + libdir]
    nice = ["nice"] if run.args.dry_run else []
    # A fresh configure: a cache from another set of options would keep paths found outside the carry.
    if os.path.exists(os.path.join(run.build, "CMakeCache.txt")):
        os.remove(os.path.join(run.build, "CMakeCache.txt"))
    rc, secs, out = sh(run, configure, "build.log", 120)
    info["configure_s"] = secs
    if rc != 0:
        info["error"] = "configure failed (%s)" % rc
        info["tail"] = out
        return info
    cache = open(os.path.join(run.build, "CMakeCache.txt")).read()
    info["libtorch"] = (re.search(r"^Torch_DIR:PATH=(.*)$", cache, re.M) or [None, None])[1]
    # Every dependency must come from the carry (on the GPU machine nothing else exists).
    from_carry = {}
    for var in ["nlohmann_json_DIR", "CLI11_DIR", "GTest_DIR", "STB_LIBRARY", "STB_INCLUDE_DIR", "ZLIB_LIBRARY_RELEASE",
                "CURL_LIBRARY_RELEASE", "pkgcfg_lib_XXHASH_xxhash", "pkgcfg_lib_EXIF_exif", "pkgcfg_lib_TINYXML2_tinyxml2",
                "pkgcfg_lib_UTF8PROC_utf8proc", "pkgcfg_lib_TOMLPP_tomlplusplus"]:
        m = re.search(r"^%s:[A-Z]+=(.*)$" % re.escape(var), cache, re.M)
        from_carry[var] = m.group(1).startswith(run.carry) if m else None  # None: this CMake names it otherwise
    info["resolved_from_carry"] = from_carry
    info["webp"] = "WEBP_FOUND:INTERNAL=1" in cache
    t0 = time.time()
    rc, secs, out = sh(run, nice + ["cmake", "--build", run.build, "-j", str(jobs), "--target", "dreamlora_cli", "test_gpu"],
                       "build.log", run.args.build_timeout_s)
    info["build_s"] = secs
    info["jobs"] = jobs
    if rc != 0:
        info["error"] = "build failed (%s)" % rc
        info["tail"] = out
        return info
    # The peak-memory probe for dreamlora's benchmark runs (bench/gpu/cuda_peak.cpp).
    rc2, secs2, out2 = build_peak_probe(run)
    info["peak_probe"] = {"rc": rc2, "s": secs2} if rc2 == 0 else {"rc": rc2, "tail": out2}
    ldd = subprocess.run(["ldd", run.bin], capture_output=True, text=True, env=run.env).stdout
    open(run.log_path("ldd.txt"), "w").write(ldd)
    info["ldd_torch_cuda"] = "libtorch_cuda.so" in ldd
    info["ldd_c10_cuda"] = "libc10_cuda.so" in ldd
    info["ldd_not_found"] = [l.split()[0] for l in ldd.splitlines() if "not found" in l]
    info["wall_s"] = round(time.time() - t0, 2)
    info["ok"] = info["ldd_torch_cuda"] and info["ldd_c10_cuda"] and not info["ldd_not_found"] and False not in from_carry.values()
    return info


def build_peak_probe(run):
    q = subprocess.run([run.args.python, "-c", "import torch, os; print(os.path.dirname(torch.__file__))"],
                       capture_output=True, text=True)
    torch_dir = q.stdout.strip()
    cuda_inc = [i for i in ["/usr/local/cuda/include"] + sorted(
        __import__("glob").glob(os.path.join(torch_dir, "..", "nvidia", "*", "include"))) if os.path.isdir(i)]
    cmd = ["g++", "-std=c++20", "-O2", "-shared", "-fPIC", "-D_GLIBCXX_USE_CXX11_ABI=1",
           "-I" + os.path.join(torch_dir, "include"), "-I" + os.path.join(torch_dir, "include", "torch", "csrc", "api", "include")]
    cmd += ["-I" + i for i in cuda_inc]
    cmd += [os.path.join(HERE, "cuda_peak.cpp"), "-L" + os.path.join(torch_dir, "lib"), "-lc10_cuda", "-lc10",
            "-Wl,-rpath," + os.path.join(torch_dir, "lib"), "-o", os.path.join(run.build, "libcuda_peak.so")]
    return sh(run, cmd, "build.log", 120)


# ---------------------------------------------------------------------------------------------------------
# correctness: tests/gpu (fp32 within 1e-4 of the fixtures, a LoRA step, bf16 within stated tolerances)


def step_correctness(run):
    exe = os.path.join(run.build, "tests", "test_gpu")
    report = os.path.join(run.work, "test_gpu.json")
    env = dict(run.env, DREAMLORA_FIXTURES=os.path.join(run.carry, "fixtures"), CI="true")
    if run.args.dry_run:
        env["DREAMLORA_GPU_TEST_DEVICE"] = "cpu"  # the same checks on the CPU: proves the test, not CUDA
    rc, secs, out = sh(run, [exe, "--gtest_output=json:" + report], "correctness.log", 180, env=env)
    info = {"ok": rc == 0, "rc": rc, "s": secs, "tests": {}}
    try:
        data = json.load(open(report))
        for suite in data.get("testsuites", []):
            for t in suite.get("testsuite", []):
                name = suite["name"] + "." + t["name"]
                info["tests"][name] = "skipped" if t.get("result") == "SKIPPED" or t.get("status") == "NOTRUN" else \
                    ("failed" if t.get("failures") else "passed")
    except (OSError, ValueError) as e:
        info["report_error"] = str(e)
    # The measured errors the tests print ("[ parity ] name max abs error E" / "... relative error E").
    errors, test = {}, ""
    for line in open(run.log_path("correctness.log"), errors="replace"):
        if line.startswith("[ RUN      ] "):
            test = line.split("] ", 1)[1].strip().split(".")[-1] + ": "
        m = re.match(r"\[ parity \] (.+?) (max abs error|max relative error|relative error) ([-+0-9.eE]+)", line.strip())
        if m:
            errors[test + m.group(1) + " (" + m.group(2) + ")"] = float(m.group(3))
    info["errors"] = errors
    if rc != 0:
        info["tail"] = out
    return info


# ---------------------------------------------------------------------------------------------------------
# resume: SIGTERM at a random step, and SIGKILL during a checkpoint write, against an uninterrupted run


def train_args(run, out_dir, steps, extra=()):
    model = os.path.join(run.carry, "fixtures", "tiny-sd")
    args = [run.bin, "--threads", "2", "train", "--model", model, "--image-path", os.path.join(run.work, "demo-images"),
            "--prompt", "a photo of sks toy", "--resolution", "64", "--num-steps", str(steps), "--checkpointing-steps", "4",
            "--lr", "1e-3", "--random-flip", "--seed", "7", "--log-every", "1", "--device", run.device,
            "--output-dir", out_dir]
    if run.flags.get("deterministic"):
        args.append("--deterministic")
    return args + list(extra)


def probe_flags(run):
    helptext = subprocess.run([run.bin, "train", "--help"], capture_output=True, text=True, env=run.env).stdout
    run.flags = {f: ("--" + f) in helptext for f in ["deterministic", "mixed-precision", "gradient-checkpointing", "device"]}
    return run.flags


def prepare_resume(run):
    images = os.path.join(run.work, "demo-images")
    if not os.path.isdir(images):
        sh(run, [run.bin, "make-demo-data", images, "--count", "4", "--size", "72"], "resume-reference.log", 60)
    ref = os.path.join(run.work, "resume-reference")
    # The reference must come from this very binary: a work folder left by an earlier build is redone.
    stamp = os.path.join(ref, ".binary-sha256")
    binary = sha256(run.bin)
    made_by = open(stamp).read().strip() if os.path.exists(stamp) else None
    if made_by != binary or not os.path.exists(os.path.join(ref, "pytorch_lora_weights.safetensors")):
        shutil.rmtree(ref, ignore_errors=True)
        rc, secs, out = sh(run, train_args(run, ref, run.args.resume_steps), "resume-reference.log", 180)
        if rc != 0:
            raise RuntimeError("uninterrupted reference run failed (%s): %s" % (rc, out[-3:]))
        run.results["resume_reference_s"] = secs
        with open(stamp, "w") as f:
            f.write(binary + "\n")
    return sha256(os.path.join(ref, "pytorch_lora_weights.safetensors"))


def last_step(metrics_path):
    step = 0
    try:
        with open(metrics_path) as f:
            for line in f:
                if '"loss"' in line:
                    step = max(step, json.loads(line)["step"])
    except (OSError, ValueError):
        pass
    return step


def spawn(run, args, log_name, env=None):
    f = open(run.log_path(log_name), "ab")
    f.write(("$ " + " ".join(args) + "\n").encode())
    f.flush()
    return subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env or run.env, start_new_session=True)


def wait_for(p, timeout_s):
    try:
        return p.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        return "timeout"


def step_resume_sigterm(run):
    probe_flags(run)
    ref_sha = prepare_resume(run)
    out = os.path.join(run.work, "resume-sigterm")
    shutil.rmtree(out, ignore_errors=True)
    at = random.Random().randint(3, run.args.resume_steps - 3)
    p = spawn(run, train_args(run, out, run.args.resume_steps), "resume-sigterm.log")
    t_end = time.time() + 120 * run.args.timeout_scale
    while p.poll() is None and last_step(os.path.join(out, "metrics.jsonl")) < at and time.time() < t_end:
        time.sleep(0.002)
    sent_at = last_step(os.path.join(out, "metrics.jsonl"))
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    rc1 = wait_for(p, 60 * run.args.timeout_scale)
    rc2, secs, tail_out = sh(run, train_args(run, out, run.args.resume_steps), "resume-sigterm.log", 180)
    resumed = [l for l in tail(run.log_path("resume-sigterm.log"), 400) if "resumed from" in l]
    got = os.path.join(out, "pytorch_lora_weights.safetensors")
    got_sha = sha256(got) if os.path.exists(got) else None
    return {"ok": rc1 == 75 and rc2 == 0 and got_sha == ref_sha, "deterministic_flag": run.flags.get("deterministic"),
            "sigterm_after_step": sent_at, "first_exit": rc1, "resume_exit": rc2, "resumed_line": resumed[-1:] ,
            "reference_sha256": ref_sha, "resumed_sha256": got_sha, "byte_identical": got_sha == ref_sha}


def checkpoint_steps_valid(out):
    steps = []
    for name in os.listdir(out) if os.path.isdir(out) else []:
        m = re.match(r"^checkpoint-(\d+)$", name)
        if m and os.path.exists(os.path.join(out, name, "MANIFEST.json")):
            steps.append(int(m.group(1)))
    return sorted(steps)


def step_resume_sigkill(run):
    if not hasattr(run, "flags"):
        probe_flags(run)
    ref_sha = prepare_resume(run)
    out = os.path.join(run.work, "resume-sigkill")
    shutil.rmtree(out, ignore_errors=True)
    # a checkpoint step after the first one (so a valid checkpoint exists to resume from)
    target = random.Random().randint(2, max(2, run.args.resume_steps // 4 - 1)) * 4
    p = spawn(run, train_args(run, out, run.args.resume_steps), "resume-sigkill.log")
    caught, t_end = False, time.time() + 120 * run.args.timeout_scale
    tmp_re = re.compile(r"^\.checkpoint-(\d+)\.tmp-\d+$")
    while p.poll() is None and time.time() < t_end:
        try:
            names = os.listdir(out)
        except OSError:
            names = []
        hit = [n for n in names if tmp_re.match(n) and int(tmp_re.match(n).group(1)) >= target]
        if hit:
            os.killpg(p.pid, signal.SIGKILL)
            caught = hit[0]
            break
    rc1 = wait_for(p, 30)
    leftover = [n for n in (os.listdir(out) if os.path.isdir(out) else []) if tmp_re.match(n)]
    method = "SIGKILL while %s existed" % caught if caught else None
    if not caught:
        # The write was never seen in flight: stop cleanly at a checkpoint step (a valid checkpoint), then crash
        # inside the next checkpoint write deterministically with the store's test hook.
        stop_at = max(1, run.args.resume_steps // 8) * 4
        shutil.rmtree(out, ignore_errors=True)
        sh(run, train_args(run, out, run.args.resume_steps), "resume-sigkill.log", 120,
           env=dict(run.env, DREAMLORA_TEST_STOP_AT_STEP=str(stop_at)))
        sh(run, train_args(run, out, run.args.resume_steps), "resume-sigkill.log", 120,
           env=dict(run.env, DREAMLORA_TEST_CRASH_AT="mid_file"))
        method = "DREAMLORA_TEST_CRASH_AT=mid_file (_exit inside the checkpoint after step %d)" % stop_at
        leftover = [n for n in os.listdir(out) if tmp_re.match(n)]
    newest = (checkpoint_steps_valid(out) or [None])[-1]
    before = len(tail(run.log_path("resume-sigkill.log"), 100000))
    rc2, secs, _ = sh(run, train_args(run, out, run.args.resume_steps), "resume-sigkill.log", 180)
    resumed = [l for l in tail(run.log_path("resume-sigkill.log"), 100000)[before:] if "resumed from" in l]
    resumed_step = None
    if resumed:
        m = re.search(r"checkpoint-(\d+)", resumed[-1])
        resumed_step = int(m.group(1)) if m else None
    got = os.path.join(out, "pytorch_lora_weights.safetensors")
    got_sha = sha256(got) if os.path.exists(got) else None
    return {"ok": rc2 == 0 and newest is not None and resumed_step == newest and got_sha == ref_sha,
            "method": method, "killed_exit": rc1, "temporaries_left_by_kill": leftover,
            "newest_valid_checkpoint": newest, "resumed_from_step": resumed_step, "resume_exit": rc2,
            "byte_identical_to_uninterrupted": got_sha == ref_sha}


# ---------------------------------------------------------------------------------------------------------
# nccl: data parallel through `dreamlora launch`


def step_nccl(run):
    if not hasattr(run, "flags"):
        probe_flags(run)
    prepare_resume(run)
    info = {"ok": False, "backend": "gloo (dry run, CPU)" if run.args.dry_run else "nccl"}
    for workers in [2, 1]:
        out = os.path.join(run.work, "dist-%d" % workers)
        shutil.rmtree(out, ignore_errors=True)
        train = train_args(run, out, min(6, run.args.resume_steps))[1:]  # without the binary
        train[train.index("--threads") + 1] = "1"
        rc, secs, lines = sh(run, [run.bin, "launch", "--nproc-per-node", str(workers), "--"] + train,
                             "nccl-%d.log" % workers, 180)
        text = "\n".join(tail(run.log_path("nccl-%d.log" % workers), 200))
        entry = {"rc": rc, "s": secs, "lora_written": os.path.exists(os.path.join(out, "pytorch_lora_weights.safetensors"))}
        refusal = re.search(r".*(Duplicate GPU|ncclInvalidUsage|invalid device ordinal|NCCL error).*", text)
        if refusal:
            entry["refusal"] = refusal.group(0)[-300:]
        if rc != 0:
            entry["tail"] = lines[-6:]
        info["workers_%d" % workers] = entry
        if rc == 0 and entry["lora_written"]:
            info["ok"] = True
            info["ran_with_workers"] = workers
            break
    return info


# ---------------------------------------------------------------------------------------------------------
# bench: dreamlora against diffusers' DreamBooth LoRA scripts on the real configs with random weights


def bench_python_env(run):
    site = os.path.join(run.work, "site")
    if not os.path.isdir(site):
        wheels = sorted(os.path.join(run.carry, "wheels", w) for w in os.listdir(os.path.join(run.carry, "wheels")) if w.endswith(".whl"))
        r = subprocess.run([run.args.bench_python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                            "--no-cache-dir", "--upgrade", "--target", site] + wheels, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("pip install of the carried wheels failed: " + r.stderr[-500:])
    env = dict(run.env, PYTHONPATH=":".join(p for p in [site, run.env.get("PYTHONPATH", "")] if p), PYTHONUNBUFFERED="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DIFFUSERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def dreamlora_result(run, out_dir, t0, warmup, peak_file):
    steps, stalls = {}, []
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        for line in f:
            j = json.loads(line)
            if "loss" in j:
                steps[j["step"]] = j["time"]
            elif "checkpoint_stall_s" in j:
                stalls.append(j["checkpoint_stall_s"])
    ends = [steps[k] for k in sorted(steps)]
    r = summarize_steps(ends, t0, warmup)
    r["checkpoint_stall_s"] = stalls
    try:
        peak = json.load(open(peak_file))
        r["peak_allocated_bytes"] = peak["allocated_peak_bytes"]
        r["peak_reserved_bytes"] = peak["reserved_peak_bytes"]
        r["peak_source"] = "CUDA caching allocator (bench/gpu/cuda_peak.cpp probe)"
    except (OSError, ValueError):
        r["peak_allocated_bytes"] = None
    return r


def summarize_steps(ends, t0, warmup):
    intervals = [b - a for a, b in zip(ends, ends[1:])]
    measured = intervals[warmup:] if len(intervals) > warmup else intervals
    return {"steps": len(ends), "start_to_first_step_s": round(ends[0] - t0, 3) if ends else None,
            "median_step_s": round(statistics.median(measured), 4) if measured else None,
            "step_s": [round(x, 4) for x in intervals]}


def bench_one(run, env, cfg):
    """One training run: cfg = {trainer, model, resolution, gc, rank, steps, ckpt}."""
    name = "%s-%s-gc%s-r%d" % (cfg["trainer"], cfg["model"], "on" if cfg["gc"] else "off", cfg["rank"])
    out = os.path.join(run.work, "bench-out", name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    model = os.path.join(run.work, "models", cfg["model"])
    images = os.path.join(run.work, "models", "images-%d" % cfg["resolution"])
    prompt = "a photo of sks dog"
    warmup = run.args.warmup
    if cfg["trainer"] == "dreamlora":
        peak_file = os.path.join(out, "cuda-peak.json")
        args = [run.bin, "train", "--model", model, "--image-path", images, "--prompt", prompt, "--resolution",
                str(cfg["resolution"]), "--batch-size", "1", "--rank", str(cfg["rank"]), "--lr", "1e-4",
                "--num-steps", str(cfg["steps"]), "--checkpointing-steps", str(cfg["ckpt"]), "--log-every", "1",
                "--device", run.device, "--output-dir", out, "--save-format", "diffusers"]
        if not run.args.dry_run:
            args += ["--mixed-precision", "bf16"]
        if cfg["gc"]:
            args.append("--gradient-checkpointing")
        probe = os.path.join(run.build, "libcuda_peak.so")
        e = dict(env, DREAMLORA_CUDA_PEAK_FILE=peak_file)
        if os.path.exists(probe) and not run.args.dry_run:
            e["LD_PRELOAD"] = probe
        t0 = time.time()
        rc, secs, lines = sh(run, args, name + ".log", run.args.run_timeout_s, env=e)
        r = {"rc": rc, "wall_s": secs, "command": " ".join(args)}
        if rc == 0:
            r.update(dreamlora_result(run, out, t0, warmup, peak_file))
    else:
        script = os.path.join(run.carry, "diffusers-examples",
                              "train_dreambooth_lora_sdxl.py" if "sdxl" in cfg["model"] else "train_dreambooth_lora.py")
        result = os.path.join(out, "diffusers-timing.json")
        args = [run.args.bench_python, os.path.join(HERE, "run_diffusers.py"), "--script", script, "--result", result,
                "--steps", str(cfg["steps"]), "--", "--pretrained_model_name_or_path", model, "--instance_data_dir", images,
                "--instance_prompt", prompt, "--resolution", str(cfg["resolution"]), "--train_batch_size", "1",
                "--rank", str(cfg["rank"]), "--learning_rate", "1e-4", "--max_train_steps", str(cfg["steps"]),
                "--checkpointing_steps", str(cfg["ckpt"] or 1000000), "--output_dir", out, "--seed", "0",
                "--dataloader_num_workers", "0"]
        if not run.args.dry_run:
            args += ["--mixed_precision", "bf16"]
        if cfg["gc"]:
            args.append("--gradient_checkpointing")
        t0 = time.time()
        rc, secs, lines = sh(run, args, name + ".log", run.args.run_timeout_s, env=dict(env, GPU_CHECK_T0=repr(t0)))
        r = {"rc": rc, "wall_s": secs, "command": " ".join(args[4:])}
        if rc == 0:
            timing = json.load(open(result))
            r.update(summarize_steps(timing["step_end_times"], t0, warmup))
            r["checkpoint_stall_s"] = timing["save_state_s"]
            r["peak_allocated_bytes"] = timing.get("max_memory_allocated")
            r["peak_reserved_bytes"] = timing.get("max_memory_reserved")
            r["peak_source"] = "torch.cuda.max_memory_allocated"
    if rc != 0:
        r["tail"] = lines[-8:]
    r.update({k: cfg[k] for k in ["trainer", "model", "resolution", "gc", "rank"]})
    return name, r


def start_make_models(run):
    """Writes the benchmark's random-weight pipelines in the background (GPU and disk), while the build
    keeps the CPUs busy."""
    env = bench_python_env(run)
    which = "tiny" if run.args.dry_run else "real"
    cmd = [run.args.bench_python, os.path.join(HERE, "make_models.py"), "--out", os.path.join(run.work, "models"),
           "--configs", which, "--tokenizer", os.path.join(run.carry, "fixtures", "tiny-sd", "tokenizer"), "--device", run.device]
    run.make_models = (spawn(run, cmd, "make_models.log", env=env), time.time())


def step_bench(run):
    env = bench_python_env(run)
    if getattr(run, "make_models", None) is None:
        start_make_models(run)
    p, t0 = run.make_models
    rc = wait_for(p, max(1, min(240, run.remaining())))
    secs, lines = round(time.time() - t0, 1), tail(run.log_path("make_models.log"))
    info = {"ok": False, "make_models_s": secs, "runs": {}}
    if rc != 0:
        info["error"] = "make_models failed (%s)" % rc
        info["tail"] = lines
        return info
    sd, sdxl = ("sd15", "sdxl") if not run.args.dry_run else ("tiny-sd15", "tiny-sdxl")
    res_sd, res_xl = (512, 1024) if not run.args.dry_run else (64, 64)
    steps = run.args.warmup + run.args.measured + 1
    plan = []
    for gc in [False, True]:
        for model, res in [(sd, res_sd), (sdxl, res_xl)]:
            for trainer in ["dreamlora", "diffusers"]:
                plan.append({"trainer": trainer, "model": model, "resolution": res, "gc": gc, "rank": 4, "steps": steps, "ckpt": 0})
    for trainer in ["dreamlora", "diffusers"]:  # checkpoint stall: rank 32 on SDXL, a save every 2 steps
        plan.append({"trainer": trainer, "model": sdxl, "resolution": res_xl, "gc": False, "rank": 32,
                     "steps": 5 if run.args.dry_run else 7, "ckpt": 2})
    if run.args.dry_run:  # each script and flag once: SD 1.5 without, SDXL with checkpointing, the stall run
        plan = [c for c in plan if (c["model"] == sd) != c["gc"] or c["rank"] == 32]
    all_ok = True
    for cfg in plan:
        if run.remaining() < run.args.min_run_s:
            info["runs"]["%s-%s-gc%s-r%d" % (cfg["trainer"], cfg["model"], "on" if cfg["gc"] else "off", cfg["rank"])] = {
                "skipped": "time budget"}
            all_ok = False
            continue
        name, r = bench_one(run, env, cfg)
        info["runs"][name] = r
        all_ok = all_ok and r["rc"] == 0
        print("  bench %-36s rc=%s wall=%ss median=%s" % (name, r["rc"], r["wall_s"], r.get("median_step_s")), flush=True)
    info["ok"] = all_ok
    return info


# ---------------------------------------------------------------------------------------------------------
# report


def fmt_bytes(b):
    return "-" if b is None else "%.2f GiB" % (b / 2**30)


def table(results):
    lines = ["", "dreamlora GPU check (%s)%s" % (results["device"], " -- DRY RUN" if results["dry_run"] else ""), ""]
    lines.append("%-16s %-8s %8s  %s" % ("step", "result", "seconds", "detail"))
    for name, s in results["steps"].items():
        detail = s.get("error") or s.get("skipped") or ""
        if name == "correctness" and "tests" in s:
            detail = "%d passed, %d failed, %d skipped" % tuple(
                sum(1 for v in s["tests"].values() if v == k) for k in ["passed", "failed", "skipped"])
        if name.startswith("resume"):
            detail = "byte-identical" if s.get("byte_identical") or s.get("byte_identical_to_uninterrupted") else detail
        if name == "build" and "build_s" in s and "error" not in s:
            detail = "build %ss with -j%s; ldd torch_cuda=%s c10_cuda=%s" % (s["build_s"], s.get("jobs"), s.get("ldd_torch_cuda"), s.get("ldd_c10_cuda"))
        lines.append("%-16s %-8s %8s  %s" % (name, s.get("status"), s.get("seconds"), str(detail)[:90]))
    errors = results["steps"].get("correctness", {}).get("errors", {})
    if errors:
        lines += ["", "parity (max error against the fixtures' diffusers/transformers references):"]
        lines += ["  %-70s %.3g" % (k[:70], v) for k, v in errors.items()]
    runs = results["steps"].get("bench", {}).get("runs", {})
    if runs:
        lines += ["", "%-10s %-10s %5s %3s %4s  %10s %12s %12s %14s" % ("trainer", "model", "res", "gc", "rank", "step (s)",
                                                                    "peak mem", "start->1st", "ckpt stall (s)")]
        for name, r in runs.items():
            if "skipped" in r:
                lines.append("%-40s skipped (%s)" % (name, r["skipped"]))
                continue
            stall = r.get("checkpoint_stall_s") or []
            lines.append("%-10s %-10s %5s %3s %4s  %10s %12s %12s %14s" % (
                r["trainer"], r["model"], r["resolution"], "on" if r["gc"] else "off", r["rank"],
                r.get("median_step_s", "FAIL rc=%s" % r["rc"]), fmt_bytes(r.get("peak_allocated_bytes")),
                r.get("start_to_first_step_s", "-"), "%.4f" % statistics.median(stall) if stall else "-"))
    lines.append("")
    lines.append("total %.1f s of a %d s budget; JSON: gpu-check.json" % (results["total_s"], results["budget_s"]))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(REPO, "build-gpu", "out"))
    ap.add_argument("--work", default="/tmp/gpu-check-work")
    ap.add_argument("--carry", default=os.path.join(REPO, ".gpu-carry"))
    ap.add_argument("--python", default="python3", help="the python whose libtorch is built against")
    ap.add_argument("--bench-python", default=None, help="python with torch for the diffusers side (default: --python)")
    ap.add_argument("--build-dir", default="build-gpu")
    ap.add_argument("--jobs", type=int, default=0)
    ap.add_argument("--budget-s", type=int, default=460)
    ap.add_argument("--build-timeout-s", type=int, default=300)
    ap.add_argument("--run-timeout-s", type=int, default=120)
    ap.add_argument("--min-run-s", type=int, default=35, help="no benchmark run starts with less time left")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--measured", type=int, default=5)
    ap.add_argument("--resume-steps", type=int, default=40)
    ap.add_argument("--timeout-scale", type=float, default=1.0, help="multiplies every timeout (slow dry runs)")
    ap.add_argument("--steps", default="env,build,correctness,resume_sigterm,resume_sigkill,nccl,bench")
    args = ap.parse_args()
    args.bench_python = args.bench_python or args.python
    run = Run(args)
    run.make_models = None
    if "bench" in args.steps.split(","):
        try:
            start_make_models(run)
        except Exception as e:  # recorded by the bench step, which tries again
            print("gpu-check: could not start make_models: %s" % e, flush=True)
    order = {"env": (step_env, 0), "build": (step_build, 60), "correctness": (step_correctness, 20),
             "resume_sigterm": (step_resume_sigterm, 20), "resume_sigkill": (step_resume_sigkill, 20),
             "nccl": (step_nccl, 15), "bench": (step_bench, 60)}
    for name in args.steps.split(","):
        fn, needs = order[name]
        t0 = time.time()
        if name != "env" and name != "build" and not os.path.exists(run.bin):
            entry = {"status": "skipped", "skipped": "no dreamlora binary"}
        elif run.remaining() < needs:
            entry = {"status": "skipped", "skipped": "time budget (%.0f s left)" % run.remaining()}
        else:
            print("== %s (%.0f s left)" % (name, run.remaining()), flush=True)
            try:
                entry = fn(run)
                entry["status"] = "pass" if entry.pop("ok") else "FAIL"
            except Exception as e:  # a broken step is recorded, and the next one runs
                entry = {"status": "FAIL", "error": "%s: %s" % (type(e).__name__, e), "traceback": traceback.format_exc()[-1500:]}
        entry["seconds"] = round(time.time() - t0, 1)
        run.results["steps"][name] = entry
        json.dump(run.results, open(os.path.join(run.out, "gpu-check.json"), "w"), indent=1)
    if run.make_models is not None and run.make_models[0].poll() is None:
        os.killpg(run.make_models[0].pid, signal.SIGKILL)
    run.results["total_s"] = round(time.time() - run.t_start, 1)
    run.results["passed"] = all(s["status"] == "pass" for s in run.results["steps"].values())
    json.dump(run.results, open(os.path.join(run.out, "gpu-check.json"), "w"), indent=1)
    with tarfile.open(os.path.join(run.out, "gpu-check-logs.tar.gz"), "w:gz") as tar:
        tar.add(run.logs, arcname="logs")
    print(table(run.results), flush=True)
    return 0 if run.results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
