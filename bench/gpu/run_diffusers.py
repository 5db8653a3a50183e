#!/usr/bin/env python3
"""Runs one of diffusers' DreamBooth LoRA training scripts unchanged and times it from the outside.

  run_diffusers.py --script train_dreambooth_lora.py --result timing.json --steps N -- <the script's own flags>

Hooks (installed before the script is imported, nothing in it is patched): the end of every optimizer step
(torch.optim.AdamW.step, followed by a CUDA synchronize) and every accelerate.Accelerator.save_state call
(the scripts' synchronous checkpoint), and the return of every from_pretrained of a diffusers or transformers
model. After the N-th optimizer step the timings, torch.cuda's peak memory, the peak RSS and versions go to
--result and the process exits, skipping the script's final pipeline reload and LoRA export, which are not
part of the measurement. GPU_CHECK_T0 (Unix seconds) is when the parent started it.
"""
import argparse
import json
import os
import resource
import runpy
import sys
import time


def install_transforms_shim(folder):
    """PyPI's torchvision does not import beside the local CPU torch wheel; the scripts need only a few PIL
    transforms of it (tests/interop/shim/transforms_shim.py). Called after diffusers and transformers are
    imported, so they take their own paths without torchvision; only the script sees the stand-in."""
    try:
        import torchvision  # noqa: F401
        return
    except Exception:
        pass
    import types

    sys.path.insert(0, folder)
    import transforms_shim

    functional = types.ModuleType("torchvision.transforms.functional")
    functional.crop = transforms_shim.crop
    transforms_shim.functional = functional
    torchvision = types.ModuleType("torchvision")
    torchvision.transforms = transforms_shim
    sys.modules.update({"torchvision": torchvision, "torchvision.transforms": transforms_shim,
                        "torchvision.transforms.functional": functional})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--script", required=True)
    ap.add_argument("--result", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--transforms-shim", help="folder of transforms_shim.py, used where torchvision does not import")
    ours, theirs = sys.argv[1:], []
    if "--" in ours:
        i = ours.index("--")
        ours, theirs = ours[:i], ours[i + 1:]
    args = ap.parse_args(ours)

    import torch
    import accelerate

    t0 = float(os.environ.get("GPU_CHECK_T0", time.time()))
    step_ends, saves, loads = [], [], []

    def sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def finish():
        import diffusers
        result = {
            "t0": t0, "step_end_times": step_ends, "save_state_s": saves,
            "model_loaded_times": loads,
            "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "max_memory_allocated": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
            "max_memory_reserved": torch.cuda.max_memory_reserved() if torch.cuda.is_available() else None,
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "accelerate": accelerate.__version__},
        }
        with open(args.result + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(args.result + ".tmp", args.result)

    adamw_step = torch.optim.AdamW.step

    def timed_step(self, *a, **k):
        out = adamw_step(self, *a, **k)
        sync()
        step_ends.append(time.time())
        print("[run_diffusers] optimizer step %d at %.3f s" % (len(step_ends), step_ends[-1] - t0), flush=True)
        if len(step_ends) >= args.steps:
            finish()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        return out

    torch.optim.AdamW.step = timed_step

    # When each from_pretrained of a model (diffusers' and transformers') returned: the load's end.
    import diffusers
    import transformers

    def timed_loader(cls):
        original = cls.from_pretrained.__func__

        def from_pretrained(klass, *a, **k):
            out = original(klass, *a, **k)
            loads.append(time.time())
            return out

        cls.from_pretrained = classmethod(from_pretrained)

    timed_loader(diffusers.ModelMixin)
    timed_loader(transformers.PreTrainedModel)

    save_state = accelerate.Accelerator.save_state

    def timed_save_state(self, *a, **k):
        sync()
        t = time.perf_counter()
        out = save_state(self, *a, **k)
        sync()
        saves.append(time.perf_counter() - t)
        return out

    accelerate.Accelerator.save_state = timed_save_state

    if args.transforms_shim:
        install_transforms_shim(args.transforms_shim)
    sys.argv = [args.script] + theirs
    runpy.run_path(args.script, run_name="__main__")
    # The script ended before the N-th step (fewer steps than asked): still report what was seen.
    finish()


if __name__ == "__main__":
    main()
