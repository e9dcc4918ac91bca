#!/usr/bin/env python3
"""The PyTorch side of the side-by-side benchmark: the workloads of
`guided-diffusion/benches/workloads.rs`, run with the reference implementation's own code
(openai/guided-diffusion: `script_util.create_model_and_diffusion`, `create_classifier`,
`GaussianDiffusion.ddim_sample`, `training_losses`, `MixedPrecisionTrainer`, `update_ema`),
with the same configs, shapes, thread count and timing rule (one warm-up call, then the median
of GD_BENCH_REPS calls, default 3), float32 on the CPU. `inception_fid_64` runs pytorch-fid's
FID Inception (torchvision's Inception3 with pytorch-fid's FIDInception blocks, random
weights) as pytorch-fid's `InceptionV3` does: bilinear resize to 299x299, then to pool_3, with
the 1x1 branch of Mixed_6d (sFID) and the logits kept; it needs torchvision and pytorch-fid
(`pip install torchvision pytorch-fid`) but not the reference checkout.

Every workload prints a human-readable line and one `RESULT {json}` line with
`"impl": "pytorch"`; `bench/compare.sh` joins them with ours. `gflops` is measured with
`torch.utils.flop_counter.FlopCounterMode` (convolution and matrix-product FLOPs, 2 per
multiply-add) in one extra, untimed call.

Prerequisites: PyTorch and numpy for this python3, and a checkout of openai/guided-diffusion
given by `--reference PATH` or the environment variable GUIDED_DIFFUSION_REF (or an installed
`guided_diffusion` package). When one is missing the script says what and how to get it and
exits with status 2.
"""

import argparse
import copy
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time

# (name, needs GD_BENCH_BIG), in the order workloads.rs runs them.
WORKLOADS = [
    ("unet_fwd_small", False),
    ("train_step_small", False),
    ("unet_fwd_64", True),
    ("clf_grad_64", True),
    ("guided_ddim_step_64", True),
    ("train_step_64", True),
    ("inception_fid_64", True),
]

# Workloads that need no openai/guided-diffusion checkout.
STANDALONE = {"inception_fid_64"}

# The label every workload conditions on / guides towards (as workloads.rs).
LABEL = 1


def env_flag(name):
    """True when the variable is set to anything but "" or "0" (as benches/common::flag)."""
    v = os.environ.get(name, "")
    return v != "" and v != "0"


def parse_args():
    p = argparse.ArgumentParser(
        description="Time the benchmark workloads with the PyTorch reference (openai/guided-diffusion)."
    )
    p.add_argument(
        "--reference",
        default=os.environ.get("GUIDED_DIFFUSION_REF", ""),
        help="path of an openai/guided-diffusion checkout (default: $GUIDED_DIFFUSION_REF)",
    )
    default_threads = os.environ.get("RAYON_NUM_THREADS") or str(os.cpu_count() or 1)
    p.add_argument(
        "--threads",
        type=int,
        default=int(default_threads),
        help="torch.set_num_threads(N) (default: $RAYON_NUM_THREADS or the CPU count)",
    )
    p.add_argument(
        "--workloads",
        default=os.environ.get("GD_WORKLOADS", ""),
        help="comma list of workloads (default: $GD_WORKLOADS, else all enabled ones)",
    )
    p.add_argument(
        "--big",
        action="store_true",
        default=env_flag("GD_BENCH_BIG"),
        help="also run the 64x64 workloads (default: $GD_BENCH_BIG=1)",
    )
    p.add_argument(
        "--reps",
        type=int,
        default=int(os.environ.get("GD_BENCH_REPS") or 3),
        help="timed calls after the warm-up; the median is reported (default: $GD_BENCH_REPS or 3)",
    )
    p.add_argument("--no-flops", action="store_true", help="skip the untimed FLOP-counting call")
    a = p.parse_args()
    if a.threads < 1 or a.reps < 1:
        p.error("--threads and --reps must be positive")
    return a


def selection(args):
    known = [w for w, _ in WORKLOADS]
    asked = [s.strip() for s in args.workloads.split(",") if s.strip()] if args.workloads.strip() else None
    if asked is not None:
        unknown = [w for w in asked if w not in known]
        if unknown:
            print(f"unknown workload(s) {unknown}; known: {','.join(known)}", file=sys.stderr)
            sys.exit(2)
    out = []
    for w, big in WORKLOADS:
        if asked is not None and w not in asked:
            continue
        if big and not args.big:
            if asked is not None:
                print(f"# {w}: skipped (a 64x64 workload: set GD_BENCH_BIG=1 or --big)")
            continue
        out.append(w)
    if asked is None and not args.big:
        print("# 64x64 workloads skipped (set GD_BENCH_BIG=1 or --big to run them)")
    return out


def load_prerequisites(reference, names):
    """Imports torch and what the workloads `names` need (the reference's modules, or
    torchvision and pytorch-fid); on anything missing, explains and exits 2."""
    missing = []
    need_reference = any(n not in STANDALONE for n in names)
    if "inception_fid_64" in names:
        for mod, pkg in [("torchvision", "torchvision"), ("pytorch_fid", "pytorch-fid")]:
            if importlib.util.find_spec(mod) is None:
                missing.append(
                    f"{pkg} (inception_fid_64 runs pytorch-fid's FID Inception) is not installed for "
                    f"{sys.executable}:\n      {sys.executable} -m pip install {pkg}"
                )
    th = None
    try:
        import torch as th  # noqa: F401
    except ImportError:
        missing.append(
            f"PyTorch is not installed for {sys.executable}. Install the CPU build:\n"
            f"      {sys.executable} -m pip install torch --index-url https://download.pytorch.org/whl/cpu"
        )
    try:
        import numpy  # noqa: F401
    except ImportError:
        missing.append(
            f"numpy (which the reference imports) is not installed for {sys.executable}:\n"
            f"      {sys.executable} -m pip install numpy"
        )
    how_to_get = (
        "      git clone https://github.com/openai/guided-diffusion /path/to/guided-diffusion\n"
        "    then pass --reference /path/to/guided-diffusion or set GUIDED_DIFFUSION_REF"
    )
    if not need_reference:
        pass
    elif reference:
        ref = os.path.abspath(os.path.expanduser(reference))
        if not os.path.isfile(os.path.join(ref, "guided_diffusion", "script_util.py")):
            missing.append(
                f"{ref} is not an openai/guided-diffusion checkout (no guided_diffusion/script_util.py). Get one:\n"
                + how_to_get
            )
        else:
            sys.path.insert(0, ref)
    elif importlib.util.find_spec("guided_diffusion") is None:
        missing.append("the reference implementation (openai/guided-diffusion) was not given. Get it:\n" + how_to_get)
    if missing:
        print("pytorch_reference.py: cannot run the PyTorch side:", file=sys.stderr)
        for m in missing:
            print("  - " + m, file=sys.stderr)
        sys.exit(2)
    if not need_reference:
        return th, "no checkout needed"
    try:
        from guided_diffusion import logger, script_util  # noqa: F401
        from guided_diffusion import fp16_util, nn, resample, unet  # noqa: F401
    except ImportError as e:
        print(
            f"pytorch_reference.py: the reference's modules do not import ({e}); "
            "check the checkout (--reference / GUIDED_DIFFUSION_REF) and its dependencies",
            file=sys.stderr,
        )
        sys.exit(2)
    import guided_diffusion

    return th, os.path.dirname(os.path.dirname(os.path.abspath(guided_diffusion.__file__)))


# ------------------------------------------------------------------------------------------
# Networks, with the configs of benches/common/mod.rs


def small_unet():
    """common::small_flags(): what create_model would pass for image_size 32, channel_mult
    "1,2,2", 32 channels, one res block, attention at 8x8 (ds 4), 32 head channels, learn_sigma,
    resblock_updown, scale-shift norm, 10 classes, 1 input channel. UNetModel is called directly
    because create_model hard-codes 3 input channels and 1000 classes."""
    from guided_diffusion.unet import UNetModel

    return UNetModel(
        image_size=32,
        in_channels=1,
        model_channels=32,
        out_channels=2,
        num_res_blocks=1,
        attention_resolutions=(32 // 8,),
        dropout=0.0,
        channel_mult=(1, 2, 2),
        num_classes=10,
        use_checkpoint=False,
        use_fp16=False,
        num_heads=4,
        num_head_channels=32,
        num_heads_upsample=-1,
        use_scale_shift_norm=True,
        resblock_updown=True,
        use_new_attention_order=False,
    )


def small_diffusion():
    from guided_diffusion.script_util import create_gaussian_diffusion

    return create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule="cosine")


def imagenet64(timestep_respacing=""):
    """common::imagenet64_flags() (the README's 64x64 MODEL_FLAGS, float32, dropout 0 as the
    Rust benches use) with a cosine schedule, through create_model_and_diffusion."""
    from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults

    kw = model_and_diffusion_defaults()
    kw.update(
        image_size=64,
        attention_resolutions="32,16,8",
        class_cond=True,
        learn_sigma=True,
        num_channels=192,
        num_head_channels=64,
        num_res_blocks=3,
        resblock_updown=True,
        use_new_attention_order=True,
        use_scale_shift_norm=True,
        use_fp16=False,
        dropout=0.0,
        diffusion_steps=1000,
        noise_schedule="cosine",
        timestep_respacing=timestep_respacing,
    )
    return create_model_and_diffusion(**kw)


def classifier64():
    """The released 64x64 classifier: create_classifier with classifier_depth 4 (the other
    classifier_defaults are the released ones: width 128, attention 32,16,8, attention pool,
    resblock_updown, scale-shift norm)."""
    from guided_diffusion.script_util import classifier_defaults, create_classifier

    kw = classifier_defaults()
    kw.update(image_size=64, classifier_depth=4, classifier_use_fp16=False)
    return create_classifier(**kw)


def n_params(*models):
    return sum(p.numel() for m in models for p in m.parameters())


# ------------------------------------------------------------------------------------------
# Workloads: each returns (batch, params, fn) with fn() one call of the workload.


def make_cond_fn(th, classifier, scale=1.0):
    """classifier_sample.py's cond_fn: scale * d/dx sum_i log_softmax(classifier(x, t))[i, y_i]."""
    import torch.nn.functional as F

    def cond_fn(x, t, y=None):
        with th.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = F.log_softmax(classifier(x_in, t), dim=-1)
            chosen = log_probs[range(log_probs.shape[0]), y.view(-1)]
            return th.autograd.grad(chosen.sum(), x_in)[0] * scale

    return cond_fn


def unet_forward(th, model, batch, channels, size):
    model.eval()
    x = th.randn(batch, channels, size, size)
    t = th.full((batch,), 500, dtype=th.long)
    y = th.full((batch,), LABEL, dtype=th.long)

    def fn():
        with th.no_grad():
            model(x, t, y)

    return batch, n_params(model), fn


def classifier_grad(th, batch):
    clf = classifier64()
    clf.eval()
    cond_fn = make_cond_fn(th, clf)
    x = th.randn(batch, 3, 64, 64)
    t = th.full((batch,), 500, dtype=th.long)
    y = th.full((batch,), LABEL, dtype=th.long)
    return batch, n_params(clf), lambda: cond_fn(x, t, y=y)


def guided_ddim_step(th, batch):
    """One step of ddim_sample_loop_progressive as classifier_sample.py runs it (--use_ddim True
    --timestep_respacing ddim25 --classifier_scale 1.0): under no_grad, ddim_sample with the
    classifier's cond_fn; the middle step (index 12 of 25)."""
    model, diffusion = imagenet64("ddim25")
    model.eval()
    clf = classifier64()
    clf.eval()
    cond_fn = make_cond_fn(th, clf)

    def model_fn(x, t, y=None):
        return model(x, t, y)

    x = th.randn(batch, 3, 64, 64)
    t = th.full((batch,), 12, dtype=th.long)
    kwargs = {"y": th.full((batch,), LABEL, dtype=th.long)}

    def fn():
        with th.no_grad():
            diffusion.ddim_sample(model_fn, x, t, clip_denoised=True, cond_fn=cond_fn, model_kwargs=kwargs, eta=0.0)

    return batch, n_params(model, clf), fn


def log_loss_dict(logger, diffusion, ts, losses):
    """What train_util.log_loss_dict logs (means and per-quartile means of every loss term);
    train_util itself is not imported because it needs mpi4py and blobfile."""
    for key, values in losses.items():
        logger.logkv_mean(key, values.mean().item())
        for sub_t, sub_loss in zip(ts.cpu().numpy(), values.detach().cpu().numpy()):
            logger.logkv_mean(f"{key}_q{int(4 * sub_t / diffusion.num_timesteps)}", sub_loss)


def train_step(th, model, diffusion, batch, channels, size, num_classes):
    """TrainLoop.run_step for one micro-batch = the batch, use_fp16 False, lr 1e-4, weight decay
    0, ema_rate 0.9999, uniform timestep sampler: zero_grad, training_losses, weighted mean,
    log_loss_dict, backward, MixedPrecisionTrainer.optimize (norms + AdamW.step), update_ema."""
    from guided_diffusion import logger
    from guided_diffusion.fp16_util import MixedPrecisionTrainer
    from guided_diffusion.nn import update_ema
    from guided_diffusion.resample import UniformSampler

    logger.configure(dir=tempfile.mkdtemp(prefix="gd-bench-torch-"), format_strs=[])
    model.train()
    mp = MixedPrecisionTrainer(model=model, use_fp16=False)
    opt = th.optim.AdamW(mp.master_params, lr=1e-4, weight_decay=0.0)
    ema_rates = [0.9999]
    ema_params = [copy.deepcopy(mp.master_params) for _ in ema_rates]
    sampler = UniformSampler(diffusion)
    x = th.rand(batch, channels, size, size) * 2 - 1
    cond = {"y": th.full((batch,), LABEL % num_classes, dtype=th.long)}

    def fn():
        mp.zero_grad()
        t, weights = sampler.sample(batch, "cpu")
        losses = diffusion.training_losses(model, x, t, model_kwargs=cond)
        loss = (losses["loss"] * weights).mean()
        log_loss_dict(logger, diffusion, t, {k: v * weights for k, v in losses.items()})
        mp.backward(loss)
        if mp.optimize(opt):
            for rate, params in zip(ema_rates, ema_params):
                update_ema(params, mp.master_params, rate=rate)

    return batch, n_params(model), fn


def inception_fid(th, batch, size):
    """pytorch-fid's InceptionV3(output_blocks=[3], resize_input=True, normalize_input=True)
    on uint8-valued `size`x`size` RGB images, built from the same modules as its
    fid_inception_v3() (whose constructor downloads weights): torchvision's Inception3 with
    pytorch-fid's FIDInceptionA/C/E_1/E_2, random weights; plus the sFID features (Mixed_6d's
    1x1 branch, first 7 channels, NHWC) and the logits without bias, as gdiff eval computes
    them. One call: resize, forward, the three outputs as numpy arrays."""
    import numpy as np
    import torch.nn.functional as F
    import torchvision
    from pytorch_fid import inception as pfi

    net = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    net.eval()
    blocks = th.nn.Sequential(
        net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, th.nn.MaxPool2d(3, 2),
        net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, th.nn.MaxPool2d(3, 2),
        net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c,
        net.Mixed_6d, net.Mixed_6e, net.Mixed_7a, net.Mixed_7b, net.Mixed_7c,
        th.nn.AdaptiveAvgPool2d((1, 1)),
    ).eval()
    grabbed = {}
    net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: grabbed.__setitem__("s", o))
    rng = np.random.default_rng(0)
    images = th.from_numpy(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))

    def fn():
        with th.no_grad():
            x = images.permute(0, 3, 1, 2).float() / 255.0
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            pool = blocks(2 * x - 1)[:, :, 0, 0]
            spatial = grabbed["s"][:, :7].permute(0, 2, 3, 1).reshape(batch, -1)
            logits = pool @ net.fc.weight.T
            return pool.numpy(), spatial.numpy(), logits.numpy()

    return batch, n_params(net), fn


def build(th, name):
    if name == "unet_fwd_small":
        return unet_forward(th, small_unet(), 32, 1, 32)
    if name == "train_step_small":
        return train_step(th, small_unet(), small_diffusion(), 32, 1, 32, 10)
    if name == "unet_fwd_64":
        model, _ = imagenet64()
        return unet_forward(th, model, 1, 3, 64)
    if name == "clf_grad_64":
        return classifier_grad(th, 1)
    if name == "guided_ddim_step_64":
        return guided_ddim_step(th, 1)
    if name == "train_step_64":
        model, diffusion = imagenet64()
        return train_step(th, model, diffusion, 2, 3, 64, 1000)
    if name == "inception_fid_64":
        return inception_fid(th, 64, 64)
    raise AssertionError(name)


# ------------------------------------------------------------------------------------------
# Measurement


def cpu_clock():
    """GD_BENCH_CLOCK=cpu: time in process CPU seconds (as benches/common::clock)."""
    return os.environ.get("GD_BENCH_CLOCK", "").strip().lower() == "cpu"


def clock():
    """Wall seconds, or with GD_BENCH_CLOCK=cpu the CPU time of the whole process (all
    threads). At one thread that is the work done whatever else the machine runs; with more,
    OpenMP's spin-waiting counts too."""
    return time.process_time() if cpu_clock() else time.perf_counter()


def median_secs(fn, reps):
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def reset_peak_rss():
    """VmHWM := current RSS (Linux: "5" to /proc/self/clear_refs); best effort."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except Exception:
        return None


class _GlobalOnly:
    """Stands in for FlopCounterMode's per-module tracker: everything is counted under "Global"
    only. The tracker's hooks fail inside the reference's attention blocks, which always run
    through its own gradient checkpointing (nn.checkpoint: forward under no_grad)."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None


def count_flops(th, fn):
    """FLOPs of one call by torch.utils.flop_counter (PyTorch >= 2.1), or None."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    try:
        counter = FlopCounterMode(display=False)
        if hasattr(counter, "mod_tracker"):
            counter.mod_tracker = _GlobalOnly()
        with counter:
            fn()
        return float(counter.get_total_flops())
    except Exception as e:  # the count is optional: omit it rather than fail the workload
        print(f"note: FLOP counting failed ({type(e).__name__}: {e}); gflops omitted", file=sys.stderr)
        return None


def main():
    args = parse_args()
    names = selection(args)
    th, ref_root = load_prerequisites(args.reference, names)
    th.set_num_threads(args.threads)
    th.manual_seed(0)
    import numpy as np

    np.random.seed(0)
    threads = th.get_num_threads()
    print(
        f"# PyTorch reference ({ref_root}), torch {th.__version__}, {threads} threads, float32, "
        f"median of {args.reps} after 1 warm-up"
    )
    failed = False
    for name in names:
        reset_peak_rss()
        try:
            batch, params, fn = build(th, name)
            seconds = median_secs(fn, args.reps)
            rss = peak_rss_mib()
            flop = None if args.no_flops else count_flops(th, fn)
        except Exception as e:  # report and go on with the next workload
            print(f"{name}: failed: {type(e).__name__}: {e}", file=sys.stderr)
            failed = True
            continue
        ips = batch / seconds
        gflops = flop / seconds / 1e9 if flop else None
        rate = f"{gflops:6.1f} GFLOP/s" if gflops else "   -- GFLOP/s"
        rss_s = f"{rss:6.0f}" if rss is not None else "    --"
        print(
            f"{name:<20} batch {batch:>3}  {seconds * 1e3:>10.1f} ms  {ips:>8.2f} img/s  {rate}  "
            f"params {params:>10}  peak RSS {rss_s} MiB"
        )
        rec = {
            "impl": "pytorch",
            "workload": name,
            "batch": batch,
            "threads": threads,
            "torch": th.__version__,
            "reps": args.reps,
            "seconds": seconds,
            "images_per_s": ips,
            "params": params,
            "peak_rss_mib": rss,
        }
        if gflops:
            rec.update(gflop_per_call=flop / 1e9, gflops=gflops, flops_source="torch.utils.flop_counter")
        print("RESULT " + json.dumps(rec), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
