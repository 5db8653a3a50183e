"""dreamlora <-> today's diffusers / peft / TensorBoard, run by tests/interop/interop_test.cpp with the Python
of build/pyenv-interop (scripts/install-python-clients.sh). Each subcommand prints one JSON line of figures
(prefixed "interop-result ") and exits non-zero on the first failed check.

  load     dreamlora trains a LoRA on a fixture pipeline; diffusers' load_lora_weights() loads its diffusers
           and kohya files with no warning and every module adapted; UNet and text-encoder outputs with the
           LoRA equal dreamlora's `run-component --lora`.
  reverse  a LoRA trained by diffusers' examples/dreambooth/train_dreambooth_lora.py (SD1, when
           build/diffusers-examples has it) or else by train_lora_like_diffusers.py (our routine making the
           same diffusers/peft calls and saving the same way; SD1 and SDXL), and the same LoRA loaded into
           diffusers then taken out with peft's get_peft_model_state_dict: dreamlora's outputs with each equal
           diffusers', and `dreamlora sample --lora` writes an image.
  tensorboard  a training run stopped with SIGTERM and resumed: TensorBoard's own EventAccumulator reads one
           continuous curve (every step once, values equal to metrics.jsonl).
"""
import argparse
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

TOL = 1e-4


def fail(msg):
    print("interop-failure: " + msg, flush=True)
    sys.exit(1)


def run(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if r.returncode != 0:
        fail("command failed (%d): %s\n%s" % (r.returncode, " ".join(map(str, cmd)), r.stdout[-4000:]))
    return r.stdout


def write_images(folder, count=3, size=32, seed=0):
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        a = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(a).save(folder / ("img%d.png" % i))


def dreamlora_train(args, model, out, steps=3, extra=()):
    images = out.parent / "images"
    if not images.exists():
        write_images(images)
    cmd = [args.dreamlora, "--threads", "2", "train", "--model", model, "--image-path", images, "--prompt",
           "a photo of sks toy", "--resolution", "32", "--num-steps", steps, "--lr", "5e-2", "--seed", "1",
           "--checkpointing-steps", "0", "--save-format", "both", "--output-dir", out] + list(extra)
    run(cmd)
    return out


class CapturedLogs:
    """Everything diffusers, peft, transformers and Python's warnings say while active."""

    def __enter__(self):
        self.messages = []
        self.handler = logging.Handler()
        self.handler.emit = lambda record: self.messages.append("%s: %s" % (record.name, record.getMessage()))
        self.loggers = [logging.getLogger(n) for n in ("diffusers", "peft", "transformers", "")]
        for lg in self.loggers:
            lg.addHandler(self.handler)
        self.warn = warnings.catch_warnings(record=True)
        self.caught = self.warn.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self.warn.__exit__(*exc)
        for lg in self.loggers:
            lg.removeHandler(self.handler)
        self.messages += ["warning: %s" % w.message for w in self.caught]
        return False


def load_pipeline(model, arch):
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
    kw = {"safety_checker": None, "requires_safety_checker": False} if arch != "sdxl" else {}
    pipe = cls.from_pretrained(model, torch_dtype=torch.float32, **kw)
    return pipe


def lora_module_count(module):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(1 for m in module.modules() if isinstance(m, BaseTunerLayer) and m.active_adapters)


def modules_in_file(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    groups = {"unet": 0, "text_encoder": 0, "text_encoder_2": 0}
    for k in keys:
        # diffusers: .lora.down.weight (UNet), .lora_linear_layer.down.weight (text encoders); kohya:
        # .lora_down.weight; peft: .lora_A.weight
        if not (k.endswith(".down.weight") or k.endswith(".lora_down.weight") or k.endswith(".lora_A.weight")):
            continue
        if k.startswith("unet.") or k.startswith("lora_unet_") or k.startswith("lora_A") or not (
                k.startswith("text_encoder") or k.startswith("lora_te")):
            groups["unet"] += 1
        elif k.startswith("text_encoder_2.") or k.startswith("lora_te2_"):
            groups["text_encoder_2"] += 1
        else:
            groups["text_encoder"] += 1
    return groups


def unet_inputs(pipe, arch, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    cfg = pipe.unet.config
    inputs = {
        "sample": torch.randn(2, cfg.in_channels, 16, 16, generator=g),
        "timesteps": torch.tensor([10, 999], dtype=torch.int64),
        "encoder_hidden_states": torch.randn(2, 8, cfg.cross_attention_dim, generator=g),
    }
    if arch == "sdxl":
        inputs["text_embeds"] = torch.randn(2, pipe.text_encoder_2.config.projection_dim, generator=g)
        inputs["time_ids"] = torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)
    return inputs


def diffusers_unet(pipe, arch, inputs):
    import torch

    kw = {}
    if arch == "sdxl":
        kw["added_cond_kwargs"] = {"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]}
    with torch.no_grad():
        return pipe.unet(inputs["sample"], inputs["timesteps"], inputs["encoder_hidden_states"], **kw).sample


def diffusers_text(pipe, name, ids):
    import torch

    with torch.no_grad():
        return getattr(pipe, name)(ids).last_hidden_state


def dreamlora_component(args, model, component, inputs, lora, work, tag):
    from safetensors.torch import load_file, save_file

    src, dst = work / ("in-%s-%s.safetensors" % (tag, component)), work / ("out-%s-%s.safetensors" % (tag, component))
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(src))
    run([args.dreamlora, "--threads", "2", "run-component", "--model", model, "--component", component, "--inputs",
         src, "--out", dst, "--lora", lora])
    return load_file(str(dst))


def compare_with_dreamlora(args, pipe, arch, model, lora, work, tag, components):
    """Max |diffusers - dreamlora| per component, both with `lora` applied (diffusers: already loaded)."""
    import torch

    figures = {}
    if "unet" in components:
        inputs = unet_inputs(pipe, arch)
        ours_unet = dreamlora_component(args, model, "unet", inputs, lora, work, tag)["sample"]
        figures["unet"] = (diffusers_unet(pipe, arch, inputs) - ours_unet).abs().max().item()
    for name in ("text_encoder", "text_encoder_2"):
        if name not in components:
            continue
        ids = torch.randint(0, getattr(pipe, name).config.vocab_size - 2, (2, 77), generator=torch.Generator().manual_seed(3))
        ours = dreamlora_component(args, model, name, {"input_ids": ids}, lora, work, tag)["last_hidden_state"]
        figures[name] = (diffusers_text(pipe, name, ids) - ours).abs().max().item()
    for k, v in figures.items():
        if not v <= TOL:
            fail("%s: %s output differs from dreamlora's by %g (> %g)" % (tag, k, v, TOL))
    # the comparison means something only if the LoRA moves the outputs well beyond the tolerance
    pipe.disable_lora()
    effect = {}
    if "unet" in components:
        effect["unet"] = (diffusers_unet(pipe, arch, inputs) - ours_unet).abs().max().item()
    pipe.enable_lora()
    if "unet" in effect and effect["unet"] < 10 * TOL:
        fail("%s: the LoRA changes the UNet output by only %g" % (tag, effect["unet"]))
    figures["lora_effect_on_unet"] = effect.get("unet")
    return figures


def load_into_diffusers(pipe, lora):
    with CapturedLogs() as logs:
        pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="interop")
    # diffusers says "No LoRA keys associated to CLIPTextModel found" for a UNet-only file: expected there
    has_text = any(n for c, n in modules_in_file(lora).items() if c != "unet")
    key_messages = [m for m in logs.messages if any(w in m.lower() for w in (
        "missing", "unexpected", "not found", "incompatible", "were not", "not be loaded", "ignored", "unused"))
        and (has_text or "No LoRA keys associated to" not in m)]
    if key_messages:
        fail("%s: diffusers reported while loading:\n  %s" % (lora.name, "\n  ".join(key_messages)))
    return logs.messages


def check_module_counts(pipe, lora, components):
    expected = modules_in_file(lora)
    got = {"unet": lora_module_count(pipe.unet)}
    for name in ("text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is not None:
            got[name] = lora_module_count(getattr(pipe, name))
    for name in components:
        if got.get(name, 0) != expected[name] or expected[name] == 0:
            fail("%s: %d %s modules in the file, %d adapted by diffusers" % (lora.name, expected[name], name, got.get(name, 0)))
    return got


def cmd_load(args):
    work = Path(args.work)
    model = args.model
    extra = ["--train-text-encoder"] if args.text_encoder else []
    out = dreamlora_train(args, model, work / "dreamlora-out", extra=extra)
    components = ["unet"] + (["text_encoder", "text_encoder_2"] if args.text_encoder and args.arch == "sdxl" else
                             ["text_encoder"] if args.text_encoder else [])
    result = {"arch": args.arch, "text_encoder": args.text_encoder}
    for fname in ("pytorch_lora_weights.safetensors", "pytorch_lora_weights_kohya.safetensors"):
        lora = out / fname
        pipe = load_pipeline(model, args.arch)
        messages = load_into_diffusers(pipe, lora)
        counts = check_module_counts(pipe, lora, components)
        figures = compare_with_dreamlora(args, pipe, args.arch, model, lora, work, fname.split(".")[0], components)
        result[fname] = {"max_abs_diff": figures, "modules": counts, "other_messages": len(messages)}
    print("interop-result " + json.dumps(result), flush=True)


def save_peft_state_dict(pipe, path, components):
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = {}
    for name in components:
        # peft's own layout: <module>.lora_A.weight; the component prefix as diffusers' loaders expect it
        sd = get_peft_model_state_dict(getattr(pipe, name), adapter_name="interop")
        state.update({"%s.%s" % (name, k): v.contiguous() for k, v in sd.items()})
    save_file(state, str(path))
    return len(state)


def train_with_diffusers(args, work):
    script = Path(args.diffusers_script)
    images = work / "images"
    write_images(images)
    out = work / "diffusers-out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="2")
    run([sys.executable, Path(__file__).parent / "shim" / "run_with_transforms_shim.py", script, "--pretrained_model_name_or_path", args.model, "--instance_data_dir", images,
         "--instance_prompt", "a photo of sks toy", "--resolution", "32", "--train_batch_size", "1",
         "--max_train_steps", "3", "--learning_rate", "5e-2", "--lr_warmup_steps", "0", "--seed", "0",
         "--rank", "4", "--output_dir", out, "--report_to", "tensorboard",
         "--checkpointing_steps", "1000"], env=env)
    return out / "pytorch_lora_weights.safetensors"


def dreamlora_sample(args, model, lora, out):
    """`dreamlora sample --lora` takes the file (the same loader as run-component) and writes an image."""
    run([args.dreamlora, "--threads", "2", "sample", "--model", model, "--lora", lora, "--prompt", "a photo of sks toy",
         "--steps", "2", "--num-images", "1", "--width", "32", "--height", "32", "--out", out])
    pngs = sorted(Path(out).glob("*.png"))
    if not pngs:
        fail("dreamlora sample --lora %s wrote no image" % lora)
    return len(pngs)


def cmd_reverse(args):
    work = Path(args.work)
    result = {"arch": args.arch}
    if args.trainer == "dreamlora":
        # text encoders too: dreamlora's LoRA goes through diffusers and comes back as peft's dict
        lora = dreamlora_train(args, args.model, work / "dreamlora-out",
                               extra=["--train-text-encoder"]) / "pytorch_lora_weights.safetensors"
        components = ["unet", "text_encoder", "text_encoder_2"] if args.arch == "sdxl" else ["unet", "text_encoder"]
        label = "dreamlora via diffusers"
    elif args.arch == "sd" and args.diffusers_script:
        # UNet only: with --train_text_encoder the script calls transformers' add_adapter, which in
        # transformers 5.24 demands peft >= 0.22.0, newer than any peft release (0.21.2)
        lora = train_with_diffusers(args, work)
        components = ["unet"]
        label = "train_dreambooth_lora.py"
    else:
        # no example script here (not in the wheel, not committable): our routine makes the same calls
        from train_lora_like_diffusers import train_and_save

        images = work / "images"
        write_images(images)
        lora, components, text_skipped = train_and_save(args.model, args.arch, images, work / "diffusers-out",
                                                        "a photo of sks toy")
        label = "train_lora_like_diffusers.py"
        result["text_encoders_not_trained_because"] = text_skipped
    result["trained_by"] = label
    print("interop-trained-by %s (components: %s)" % (label, ", ".join(components)), flush=True)
    pipe = load_pipeline(args.model, args.arch)
    load_into_diffusers(pipe, lora)
    counts = check_module_counts(pipe, lora, components)
    result[label] = {"max_abs_diff": compare_with_dreamlora(args, pipe, args.arch, args.model, lora, work, "trained",
                                                            components), "modules": counts}
    result[label]["sample_images"] = dreamlora_sample(args, args.model, lora, work / "sample-trained")
    peft_file = work / "peft_state_dict.safetensors"
    tensors = save_peft_state_dict(pipe, peft_file, components)
    result["peft_state_dict"] = {"tensors": tensors, "max_abs_diff": compare_with_dreamlora(
        args, pipe, args.arch, args.model, peft_file, work, "peft", components),
        "sample_images": dreamlora_sample(args, args.model, peft_file, work / "sample-peft")}
    print("interop-result " + json.dumps(result), flush=True)


def cmd_tensorboard(args):
    from tensorboard.backend.event_processing import event_accumulator

    work = Path(args.work)
    out = work / "tb-out"
    images = work / "images"
    write_images(images)
    base = [args.dreamlora, "--threads", "2", "train", "--model", args.model, "--image-path", images, "--prompt",
            "a photo of sks toy", "--resolution", "32", "--num-steps", "12", "--lr", "1e-2", "--seed", "1",
            "--checkpointing-steps", "3", "--log-every", "1", "--output-dir", out, "--validation-prompt",
            "a photo of sks toy", "--validation-inference-steps", "2", "--num-validation-images", "1"]
    log = open(work / "first-run.log", "w")
    p = subprocess.Popen([str(c) for c in base], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    # stop it past its second checkpoint (step 6): SIGTERM checkpoints where it stops; SIGKILL loses the
    # steps after 6 that were already logged, so the resumed run logs them again
    stop_sig = signal.SIGKILL if args.kill else signal.SIGTERM
    while time.time() < deadline and p.poll() is None:
        steps = [json.loads(l).get("step", 0) for l in (out / "metrics.jsonl").read_text().splitlines()
                 if l.strip().endswith("}")] if (out / "metrics.jsonl").exists() else []
        if steps and max(steps) >= 7:
            p.send_signal(stop_sig)
            break
        time.sleep(0.02)
    first_status = p.wait(timeout=300)
    log.close()
    killed_file_steps = []
    if args.kill:  # keep the killed run's file as it was, before the resume trims it
        untrimmed = work / "untrimmed"
        shutil.copytree(out / "logs", untrimmed)
        from tensorboard.backend.event_processing import event_file_loader as efl

        for f in untrimmed.glob("*tfevents*"):
            for e in efl.EventFileLoader(str(f)).Load():
                killed_file_steps += [e.step for v in e.summary.value if v.tag == "train/loss"]
    files_before = sorted((out / "logs").glob("*tfevents*"))
    run(base)
    files = sorted((out / "logs").glob("*tfevents*"))
    if len(files) != len(files_before) + 1:
        fail("expected one new event file per run, got %s then %s" % (files_before, files))
    acc = event_accumulator.EventAccumulator(str(out / "logs"), size_guidance={event_accumulator.SCALARS: 0,
                                                                                event_accumulator.IMAGES: 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("train/loss", "train/lr", "train/step_time_s"):
        if tag not in tags["scalars"]:
            fail("no scalar %s in %s" % (tag, tags))
    loss = acc.Scalars("train/loss")
    steps = [e.step for e in loss]
    if steps != list(range(1, 13)):
        fail("train/loss steps are not 1..12 once each: %s" % steps)
    jsonl = {}
    for l in (out / "metrics.jsonl").read_text().splitlines():
        j = json.loads(l)
        if "loss" in j:
            jsonl[j["step"]] = j["loss"]
    worst = max(abs(e.value - jsonl[e.step]) for e in loss)
    if worst > 1e-6 * max(1.0, max(abs(v) for v in jsonl.values())):
        fail("TensorBoard loss differs from metrics.jsonl by %g" % worst)
    if not tags["images"]:
        fail("no validation image summaries: %s" % tags)
    img = acc.Images(tags["images"][0])[-1]
    from PIL import Image

    decoded = Image.open(io.BytesIO(img.encoded_image_string))
    if decoded.size != (img.width, img.height):
        fail("image summary %dx%d holds a %s PNG" % (img.width, img.height, decoded.size))
    # the raw event stream (all files, in TensorBoard's order) has each loss step once: nothing to purge
    from tensorboard.backend.event_processing import event_file_loader

    raw = []
    for f in files:
        for e in event_file_loader.EventFileLoader(str(f)).Load():
            raw += [e.step for v in e.summary.value if v.tag == "train/loss"]
    live_steps = None
    if args.kill:
        # What a TensorBoard that had already read the killed run's file sees: that file untrimmed, then the
        # resumed run's file, whose SessionLog START makes it drop the orphaned steps.
        shutil.copy(files[-1], work / "untrimmed")
        live = event_accumulator.EventAccumulator(str(work / "untrimmed"), size_guidance={event_accumulator.SCALARS: 0})
        live.Reload()
        live_steps = [e.step for e in live.Scalars("train/loss")]
        if max(killed_file_steps) <= 6:
            fail("the killed run logged no step after its checkpoint (%s): nothing was tested" % killed_file_steps)
        if live_steps != list(range(1, 13)):
            fail("with the untrimmed file TensorBoard shows steps %s" % live_steps)
    print("interop-result " + json.dumps({
        "signal": "KILL" if args.kill else "TERM", "killed_run_logged_steps": killed_file_steps,
        "steps_seen_by_live_tensorboard": live_steps,
        "first_run_status": first_status, "event_files": len(files), "steps": steps, "raw_loss_events": len(raw),
        "raw_steps_sorted": raw == sorted(raw), "loss_vs_jsonl_max_abs_diff": worst,
        "images": {t: len(acc.Images(t)) for t in tags["images"]}}), flush=True)
    if raw != list(range(1, 13)):
        fail("raw event stream is not steps 1..12 once each: %s" % raw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["load", "reverse", "tensorboard"])
    ap.add_argument("--dreamlora", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--arch", choices=["sd", "sdxl"], default="sd")
    ap.add_argument("--work", required=True)
    ap.add_argument("--text-encoder", action="store_true")
    ap.add_argument("--kill", action="store_true", help="tensorboard: stop the first run with SIGKILL")
    ap.add_argument("--diffusers-script", default="")
    ap.add_argument("--trainer", choices=["diffusers", "dreamlora"], default="diffusers",
                    help="reverse: who trains the LoRA (diffusers: the example script if given, else "
                         "train_lora_like_diffusers.py)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    {"load": cmd_load, "reverse": cmd_reverse, "tensorboard": cmd_tensorboard}[args.command](args)


if __name__ == "__main__":
    main()
