"""Expected values of tests/samplers_properties.rs
(second_order_sde_matches_the_authors_diffusers_scheduler): SDE-DPM-Solver++(2M) as the authors'
diffusers scheduler computes it (`DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")`, diffusers
0.30.0), driven on this crate's time grid: the official DPM-Solver's discrete NoiseScheduleVP of
the linear schedule (float32), 12 time-uniform steps from t = 1 to 1/1000. The scheduler's own
`set_timesteps` is bypassed: its `sigmas` are set to sigma_t / alpha_t at those times, so that
its update formulas (`dpm_solver_first_order_update`, `multistep_dpm_solver_second_order_update`)
run on the same grid. The model is the test's closed-form noise predictor
`0.8 sin(x * t_model / 1000)` at `t_model = (t - 1/1000) * 1000`; x_T and the noise of every step
are closed-form too, so no RNG has to match.

Run: PYTHONPATH=<diffusers 0.30.0 and its deps> python3 gen_sde_dpm_solver.py
"""
import math

import torch
from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler

N, STEPS, NUMEL = 1000, 12, 6


def x_t():
    return torch.tensor([1.2 * math.cos(0.9 * i) for i in range(NUMEL)], dtype=torch.float32)


def noise(k):
    return torch.tensor([1.5 * math.sin(1.3 * i + 0.7 * k + 0.1) for i in range(NUMEL)],
                        dtype=torch.float32)


# NoiseScheduleVP('discrete', betas) of the official dpm_solver_pytorch.py, float32.
betas = torch.linspace(0.0001, 0.02, N, dtype=torch.float64)
log_alphas = (0.5 * torch.log(1.0 - betas).cumsum(0)).to(torch.float32)
t_array = torch.linspace(0.0, 1.0, N + 1)[1:]


def log_alpha(t):
    # interpolate_fn on the monotone grid (t inside it here).
    t = torch.tensor([t], dtype=torch.float32)
    i = int(torch.searchsorted(t_array, t).clamp(1, N - 1))
    x0, x1, y0, y1 = t_array[i - 1], t_array[i], log_alphas[i - 1], log_alphas[i]
    return (y0 + (t - x0) * (y1 - y0) / (x1 - x0))[0]


ts = torch.linspace(1.0, 1.0 / N, STEPS + 1)
for solver_type in ["midpoint", "heun"]:
    s = DPMSolverMultistepScheduler(num_train_timesteps=N, beta_schedule="linear",
                                    algorithm_type="sde-dpmsolver++", solver_order=2,
                                    solver_type=solver_type, lower_order_final=False,
                                    final_sigmas_type="sigma_min")
    la = torch.stack([log_alpha(float(t)) for t in ts])
    alpha, sigma = torch.exp(la), torch.sqrt(1.0 - torch.exp(2.0 * la))
    s.sigmas = (sigma / alpha).to(torch.float32)
    s.timesteps = torch.arange(STEPS)
    s.num_inference_steps = STEPS
    s.model_outputs = [None, None]
    s.lower_order_nums = 0
    s._step_index = 0
    x = x_t()
    for k in range(STEPS):
        t_model = (ts[k] - 1.0 / N) * 1000.0
        eps = 0.8 * torch.sin(x * t_model / 1000.0)
        x = s.step(eps, k, x, variance_noise=noise(k)).prev_sample
    print(solver_type, "[" + ", ".join("%.7f" % v for v in x.tolist()) + "]")
