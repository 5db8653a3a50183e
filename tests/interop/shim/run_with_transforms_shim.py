"""Runs a diffusers example training script with a stand-in for `torchvision.transforms`.

PyPI's torchvision does not import beside the local CPU torch 2.13.0 wheel ("operator torchvision::nms does
not exist"), and diffusers' train_dreambooth_lora.py needs nothing of it but a few PIL transforms
(transforms_shim.py). The libraries are imported first, so that transformers and diffusers record
torchvision as absent and take their own PIL paths; only the script sees the stand-in.
Usage: python run_with_transforms_shim.py SCRIPT [script arguments]
"""
import os
import runpy
import sys
import types

import accelerate  # noqa: F401
import diffusers  # noqa: F401
import peft  # noqa: F401
import transformers
from transformers.utils import import_utils

assert not import_utils.is_torchvision_available(), "a real torchvision is installed: run the script directly"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import transforms_shim  # noqa: E402

torchvision = types.ModuleType("torchvision")
torchvision.transforms = transforms_shim
sys.modules["torchvision"] = torchvision
sys.modules["torchvision.transforms"] = transforms_shim

script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
