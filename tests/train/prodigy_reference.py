# Reference values of tests/train/optimizers_test.cpp (ProdigyMatchesThePackage): the prodigyopt
# package (1.1.2) on two small parameters with quadratic-loss gradients g = 2 (p - target), five steps.
# Run: PYTHONPATH=<unpacked prodigyopt wheel> python prodigy_reference.py   (torch 2.13 CPU was used)
import torch
from prodigyopt import Prodigy

def run(lrs, **kw):
    p1 = torch.tensor([[0.5, -0.3, 0.2], [0.1, 0.7, -0.4]], requires_grad=True)
    p2 = torch.zeros(3, 2, requires_grad=True)  # like a LoRA up weight: p0 is zero
    t1 = torch.tensor([[1.0, 0.5, -0.5], [0.3, -0.2, 0.1]])
    t2 = torch.tensor([[0.2, -0.1], [0.4, 0.3], [-0.6, 0.05]])
    opt = Prodigy([p1, p2], lr=1.0, **kw)
    for lr in lrs:
        opt.param_groups[0]['lr'] = lr
        p1.grad = 2 * (p1.detach() - t1)
        p2.grad = 2 * (p2.detach() - t2)
        opt.step()
    g = opt.param_groups[0]
    print(kw, 'd', repr(g['d']), 'k', g['k'])
    print('p1', [repr(x) for x in p1.detach().flatten().tolist()])
    print('p2', [repr(x) for x in p2.detach().flatten().tolist()])

# diffusers' script settings, with a warm-up whose first LR is 0 (the package then makes no step)
run([0.0, 0.5, 1.0, 1.0, 1.0], weight_decay=1e-2, decouple=True, use_bias_correction=True, safeguard_warmup=True)
# the package's defaults, with coupled weight decay and other beta3 / d0 / d_coef
run([1.0] * 5, weight_decay=0.1, decouple=False, beta3=0.95, d0=1e-4, d_coef=2.0)
# beta1 = 0: no first moment
run([1.0] * 5, betas=(0.0, 0.99))
