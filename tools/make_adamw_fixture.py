#!/usr/bin/env python3
"""Writes guided-diffusion/tests/fixtures/adamw/adamw_steps.json for tests/train_adamw.rs.

The float32 operations of torch.optim.AdamW's single-tensor path (torch >= 2.0, amsgrad off),
one numpy op per torch op, in torch's order:
    param.mul_(1 - lr * wd); exp_avg.lerp_(grad, 1 - beta1);
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2);
    denom = (exp_avg_sq.sqrt() / sqrt(1 - beta2**t)).add_(eps);
    param.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**t)).
Run from the repository root: python3 tools/make_adamw_fixture.py
"""
import json
import math
import os

import numpy as np

F = np.float32


def adamw(p, grads, lr, betas, eps, wd):
    b1, b2 = betas
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    out = []
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, dtype=F)
        p = p * F(1 - lr * wd)
        m = m + F(1 - b1) * (g - m)  # lerp, weight < 0.5 branch
        v = v * F(b2) + (F(1 - b2) * g) * g
        denom = np.sqrt(v) / F(math.sqrt(1 - b2 ** t)) + F(eps)
        p = p - F(lr / (1 - b1 ** t)) * (m / denom)
        out.append({"param": p.tolist(), "exp_avg": m.tolist(), "exp_avg_sq": v.tolist()})
    return out


def main():
    p0 = np.array([0.5, -1.25, 2.0, 0.0, 3e-3], dtype=F)
    grads = [
        [0.1, -0.2, 0.3, 0.0, 1e-6],
        [-0.4, 0.05, 0.3, 2.0, -1e-6],
        [0.2, 0.2, -0.1, -1.5, 5e-4],
        [1e-3, -3.0, 0.0, 0.25, 0.0],
    ]
    cases = []
    for lr, wd in [(1e-2, 0.0), (3e-4, 0.1), (0.1, 0.5)]:
        cases.append({
            "lr": lr, "weight_decay": wd, "betas": [0.9, 0.999], "eps": 1e-8,
            "param0": p0.tolist(), "grads": grads,
            "steps": adamw(p0.copy(), grads, lr, (0.9, 0.999), 1e-8, wd),
        })
    path = os.path.join("guided-diffusion", "tests", "fixtures", "adamw", "adamw_steps.json")
    with open(path, "w") as f:
        json.dump({"cases": cases}, f, indent=1)


if __name__ == "__main__":
    main()
