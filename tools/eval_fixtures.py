#!/usr/bin/env python3
"""Regenerates the evaluation fixtures in guided-diffusion/tests/fixtures/eval/.

The expected values come from independent Python implementations of the reference evaluator's
formulas (openai/guided-diffusion evaluations/evaluator.py), computed with numpy/scipy, and from
PyTorch running pytorch-fid's own FID Inception classes. CI does not run this script; its outputs
are committed (small). Subcommands, each needing only what it imports:

  metrics    numpy + scipy >= 1.16  (the scipy a fresh install of the reference's unpinned
                                     requirements gets; its sqrtm returns finite values for
                                     singular products, so the eps fallback is not taken; older
                                     versions may take it when two covariances have zero rows at
                                     different positions: see eval/frechet.rs)
  npz        numpy (+ scipy, same version note)  npz reader cases and end-to-end `gdiff eval` batches
  degenerate numpy + scipy >= 1.16  prints the constants of eval_metrics.rs's degenerate-covariance test
  inception  numpy + torch + torchvision + pytorch-fid + tensorflow (TF only for its legacy
             ResizeBilinear)

    python tools/eval_fixtures.py metrics npz
    python tools/eval_fixtures.py inception
    python tools/eval_fixtures.py bench   # prints the constants of tests/eval_bench.rs
"""
import json
import os
import struct
import sys
import warnings

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "guided-diffusion", "tests", "fixtures", "eval")


# ----------------------------------------------------------------------------------------------
# helpers


def write_safetensors(path, arrays, metadata=None):
    """Minimal safetensors writer (little-endian, C order)."""
    codes = {np.dtype("float32"): "F32", np.dtype("float64"): "F64", np.dtype("uint8"): "U8",
             np.dtype("int64"): "I64", np.dtype("float16"): "F16"}
    header, blobs, off = {}, [], 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        b = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": codes[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")


# ----------------------------------------------------------------------------------------------
# the reference's formulas, restated


def frechet(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """Fréchet distance as FIDStatistics.frechet_distance; returns (value, used_eps_fallback)."""
    from scipy import linalg

    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    fallback = False
    if not np.isfinite(covmean).all():
        fallback = True
        offset = np.eye(sigma1.shape[0]) * eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError("Imaginary component {}".format(np.max(np.abs(covmean.imag))))
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)), fallback


def stats(x):
    x = x.astype(np.float64)
    return x.mean(0), np.cov(x, rowvar=False)


def inception_score_logits(logits, split_size):
    z = logits.astype(np.float64)
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    preds = np.exp(logp)
    scores = []
    for i in range(0, len(preds), split_size):
        part, lp = preds[i:i + split_size], logp[i:i + split_size]
        kl = part * (lp - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def dist_f32(u, v):
    u, v = u.astype(np.float32), v.astype(np.float32)
    nu = (u * u).sum(1)[:, None]
    nv = (v * v).sum(1)[None, :]
    return np.maximum(nu - 2 * (u @ v.T) + nv, np.float32(0))


def dist_f16(u, v):
    """The reference's float16 DistanceBlock, rounding to f16 after each graph op."""
    u, v = u.astype(np.float16), v.astype(np.float16)
    nu = (u * u).astype(np.float32).sum(1).astype(np.float16)[:, None]
    nv = (v * v).astype(np.float32).sum(1).astype(np.float16)[None, :]
    mm = (u.astype(np.float32) @ v.astype(np.float32).T).astype(np.float16)
    d = (nu - mm * np.float16(2)) + nv
    d = np.maximum(d, np.float16(0)).astype(np.float32)
    if not np.isfinite(d).all():
        return dist_f32(u.astype(np.float32), v.astype(np.float32))
    return d


def manifold_radii(feats, dist, k=3, rows=10000, cols=10000):
    n = len(feats)
    radii = np.zeros([n], np.float32)
    for b1 in range(0, n, rows):
        e1 = min(b1 + rows, n)
        block = np.zeros([e1 - b1, n], np.float32)
        for b2 in range(0, n, cols):
            e2 = min(b2 + cols, n)
            block[:, b2:e2] = dist(feats[b1:e1], feats[b2:e2])
        radii[b1:e1] = np.partition(block, k, axis=1)[:, k]
    return radii


def precision_recall(ref, sam, dist, rows=10000, cols=10000):
    r1, r2 = manifold_radii(ref, dist, rows=rows, cols=cols), manifold_radii(sam, dist, rows=rows, cols=cols)
    s1 = np.zeros(len(ref), bool)
    s2 = np.zeros(len(sam), bool)
    for b1 in range(0, len(ref), rows):
        for b2 in range(0, len(sam), cols):
            d = dist(ref[b1:b1 + rows], sam[b2:b2 + cols])
            s1[b1:b1 + rows] |= (d <= r2[None, b2:b2 + cols]).any(1)
            s2[b2:b2 + cols] |= (d <= r1[b1:b1 + rows, None]).any(0)
    return float(s2.mean()), float(s1.mean()), r1, r2


# ----------------------------------------------------------------------------------------------
# subcommands


def cmd_metrics():
    import scipy

    assert tuple(int(x) for x in scipy.__version__.split(".")[:2]) >= (1, 16), "needs scipy >= 1.16, see docstring"
    rng = np.random.default_rng(20210601)
    arrays, expect = {}, {"scipy": scipy.__version__, "numpy": np.__version__}

    def fid_case(name, a, b):
        a, b = a.astype(np.float32), b.astype(np.float32)
        (m1, s1), (m2, s2) = stats(a), stats(b)
        fid, fb = frechet(m1, s1, m2, s2)
        arrays[f"{name}_a"], arrays[f"{name}_b"] = a, b
        arrays[f"{name}_mu_a"], arrays[f"{name}_sigma_a"] = m1, s1
        expect[name] = {"fid": fid, "eps_fallback": fb}

    d = 24
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    fid_case("fullrank", rng.standard_normal((300, d)) @ mix + 0.3,
             rng.standard_normal((250, d)) @ (mix + 0.2 * rng.standard_normal((d, d)) / np.sqrt(d)))
    fid_case("rankdef", rng.standard_normal((30, 40)), rng.standard_normal((25, 40)) * 1.2 + 0.1)
    a, b = rng.standard_normal((100, 16)), rng.standard_normal((90, 16))
    a[:, 3], a[:, 5], b[:, 3], b[:, 9] = 1.0, 2.0, 0.5, -1.0
    fid_case("constant3", a, b)
    a, b = rng.standard_normal((100, 16)), rng.standard_normal((90, 16))
    a[:, 4] = 0.25
    fid_case("constant1", a, b)
    # constant3's zero rows differ between a and b: scipy < 1.16 fell back to eps there
    assert not any(expect[k]["eps_fallback"] for k in ("fullrank", "rankdef", "constant1", "constant3"))

    logits = (rng.standard_normal((1300, 12)) * 3).astype(np.float32)
    logits[:, 0] += 2
    arrays["is_logits"] = logits
    expect["is_split500"] = inception_score_logits(logits, 500)
    expect["is_split5000"] = inception_score_logits(logits, 5000)

    ref = rng.standard_normal((150, 20)).astype(np.float32)
    sam = (rng.standard_normal((130, 20)) * 1.1 + 0.15).astype(np.float32)
    arrays["pr_ref"], arrays["pr_sample"] = ref, sam
    for mode, dist in [("f32", dist_f32), ("f16", dist_f16)]:
        p, r, r1, r2 = precision_recall(ref, sam, dist, rows=64, cols=50)
        p_one, r_one, _, _ = precision_recall(ref, sam, dist)
        assert (p, r) == (p_one, r_one), "batching changed the result"
        expect[f"pr_{mode}"] = {"precision": p, "recall": r}
        arrays[f"pr_{mode}_radii_ref"], arrays[f"pr_{mode}_radii_sample"] = r1, r2
    write_safetensors(os.path.join(OUT, "metrics.safetensors"), arrays)
    write_json(os.path.join(OUT, "metrics.json"), expect)


def cmd_npz():
    rng = np.random.default_rng(7)
    d = os.path.join(OUT, "npz")
    os.makedirs(d, exist_ok=True)
    imgs = rng.integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)
    np.savez(os.path.join(d, "images.npz"), arr_0=imgs)
    np.savez_compressed(os.path.join(d, "images_compressed.npz"), arr_0=imgs)
    feats = rng.standard_normal((7, 3))
    np.savez(os.path.join(d, "fortran_f64.npz"), arr_0=np.asfortranarray(feats))
    np.savez(os.path.join(d, "bigendian_f4.npz"), arr_0=feats.astype(">f4"))
    np.savez(os.path.join(d, "float16.npz"), arr_0=feats.astype(np.float16))
    with open(os.path.join(d, "v2_header.npy.tmp"), "wb") as f:
        np.lib.format.write_array(f, feats.astype(np.float32), version=(2, 0))
    import zipfile
    with zipfile.ZipFile(os.path.join(d, "v2_header.npz"), "w") as z:
        z.write(os.path.join(d, "v2_header.npy.tmp"), "arr_0.npy")
    os.remove(os.path.join(d, "v2_header.npy.tmp"))
    np.savez(os.path.join(d, "bad_missing_arr0.npz"), images=imgs)
    np.savez(os.path.join(d, "bad_dtype.npz"), arr_0=np.array([["a", "bc"]] * 3))
    np.savez(os.path.join(d, "bad_shape.npz"), arr_0=imgs[:, :, :, 0])
    np.savez(os.path.join(d, "bad_channels_first.npz"), arr_0=imgs.transpose(0, 3, 1, 2))
    with open(os.path.join(d, "not_a_zip.npz"), "wb") as f:
        f.write(b"this is not a zip archive")
    write_json(os.path.join(d, "expected.json"), {
        "images": imgs.reshape(-1).tolist(), "images_shape": list(imgs.shape),
        "feats": feats.reshape(-1).tolist(), "feats_shape": list(feats.shape)})

    # end-to-end `gdiff eval --features` batches
    e = os.path.join(OUT, "e2e")
    os.makedirs(e, exist_ok=True)
    dp, ds, c = 10, 6, 7
    mix = rng.standard_normal((dp, dp)) / np.sqrt(dp)
    ref_pool = (rng.standard_normal((60, dp)) @ mix).astype(np.float32)
    ref_sp = np.abs(rng.standard_normal((60, ds))).astype(np.float32)
    sam_pool = (rng.standard_normal((50, dp)) @ mix * 1.2 + 0.2).astype(np.float32)
    sam_sp = np.abs(rng.standard_normal((50, ds)) * 1.1).astype(np.float32)
    sam_logits = (rng.standard_normal((50, c)) * 2).astype(np.float32)
    np.savez(os.path.join(e, "ref_features.npz"), pool=ref_pool, spatial=ref_sp)
    np.savez(os.path.join(e, "sample_features.npz"), pool=sam_pool, spatial=sam_sp, logits=sam_logits)
    # a reference batch with precomputed statistics that differ from its features' own
    other_pool = (rng.standard_normal((80, dp)) @ mix - 0.1).astype(np.float32)
    other_sp = np.abs(rng.standard_normal((80, ds)) * 0.9).astype(np.float32)
    (mu, sigma), (mu_s, sigma_s) = stats(other_pool), stats(other_sp)
    np.savez(os.path.join(e, "ref_features_with_stats.npz"), pool=ref_pool, spatial=ref_sp,
             mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    (rm, rs), (rms, rss) = stats(ref_pool), stats(ref_sp)
    (sm, ss), (sms, sss) = stats(sam_pool), stats(sam_sp)
    out = {}
    for mode, dist in [("f32", dist_f32), ("f16", dist_f16)]:
        p, r, _, _ = precision_recall(ref_pool, sam_pool, dist)
        out[f"precision_{mode}"], out[f"recall_{mode}"] = p, r
    out["inception_score"] = inception_score_logits(sam_logits, 5000)
    out["fid"] = frechet(sm, ss, rm, rs)[0]
    out["sfid"] = frechet(sms, sss, rms, rss)[0]
    out["fid_with_stats"] = frechet(sm, ss, mu, sigma)[0]
    out["sfid_with_stats"] = frechet(sms, sss, mu_s, sigma_s)[0]
    write_json(os.path.join(e, "expected.json"), out)


def synthetic_values(key, shape):
    """Same as guided_diffusion::eval::inception::synthetic::synthetic_values."""
    u = uniforms(key, int(np.prod(shape)))
    if key.endswith(".conv.weight"):
        s = np.sqrt(6.0 / np.prod(shape[1:]))
        v = -s + 2 * s * u
    elif key.endswith(".bn.weight"):
        v = 0.8 + 0.4 * u
    elif key.endswith(".bn.bias") or key.endswith(".bn.running_mean"):
        v = -0.2 + 0.4 * u
    elif key.endswith(".bn.running_var"):
        v = 0.5 + 1.0 * u
    elif key == "fc.weight":
        s = np.sqrt(3.0 / shape[1])
        v = -s + 2 * s * u
    else:
        v = -0.1 + 0.2 * u
    return v.astype(np.float32).reshape(shape)


def tf_legacy_resize(images_nhwc_f32, size):
    """TensorFlow's ResizeBilinear(align_corners=False, half_pixel_centers=False): the op in the
    reference's Inception graph."""
    import tensorflow as tf

    return tf.raw_ops.ResizeBilinear(images=images_nhwc_f32, size=size, align_corners=False,
                                     half_pixel_centers=False).numpy()


def cmd_inception():
    import torch
    import torch.nn.functional as F
    import torchvision
    from pytorch_fid import inception as pfi

    # TensorFlow first, in its own step, so the two frameworks do not share a process state.
    rng = np.random.default_rng(1512)
    images = rng.integers(0, 256, (2, 48, 40, 3), dtype=np.uint8)
    small = rng.integers(0, 256, (1, 5, 7, 2), dtype=np.uint8).astype(np.float32)
    tf_resized = tf_legacy_resize(images.astype(np.float32), [299, 299])
    tf_small_up = tf_legacy_resize(small, [13, 11])
    tf_small_down = tf_legacy_resize(tf_legacy_resize(small, [13, 11]), [4, 3])

    torch.manual_seed(0)
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
    sd = net.state_dict()
    new = {k: (torch.from_numpy(synthetic_values(k, tuple(v.shape))) if v.is_floating_point() else v) for k, v in sd.items()}
    net.load_state_dict(new)
    net.eval()
    # pytorch-fid's blocks 0..3 (what InceptionV3(output_blocks=[3]) runs, built here from the
    # same modules because its constructor downloads weights), with a hook on the 1x1 branch of
    # Mixed_6d for mixed_6/conv
    blocks = [[net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, torch.nn.MaxPool2d(3, 2)],
              [net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, torch.nn.MaxPool2d(3, 2)],
              [net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e],
              [net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, torch.nn.AdaptiveAvgPool2d((1, 1))]]
    fid_blocks = torch.nn.Sequential(*[torch.nn.Sequential(*b) for b in blocks]).eval()
    grabbed = {}
    net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: grabbed.__setitem__("s", o))

    def run(x):
        with torch.no_grad():
            pool = fid_blocks(x)[:, :, 0, 0]
            spatial = grabbed["s"][:, :7].permute(0, 2, 3, 1).reshape(x.shape[0], -1)
            logits = pool @ net.fc.weight.T  # the reference's softmax/logits/MatMul: no bias
        return pool.numpy(), spatial.numpy(), logits.numpy()

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x_pt = F.interpolate(x / 255.0, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
    x_tf = (torch.from_numpy(tf_resized).permute(0, 3, 1, 2) - 128.0) * (1.0 / 128.0)
    arrays = {"images": images}
    for name, inp in [("pytorch_fid", x_pt), ("tf_reference", x_tf)]:
        pool, spatial, logits = run(inp)
        arrays[f"{name}_pool"], arrays[f"{name}_spatial"], arrays[f"{name}_logits"] = pool, spatial, logits
    arrays["pytorch_fid_input_corner"] = x_pt[:, :, :5, :5].numpy()
    arrays["tf_reference_input_corner"] = x_tf[:, :, :5, :5].numpy()
    # small resize cases: tensorflow legacy and torch half-pixel
    arrays["resize_small"] = small
    arrays["resize_tf_up"] = tf_small_up
    arrays["resize_tf_down"] = tf_small_down
    s_t = torch.from_numpy(small).permute(0, 3, 1, 2)
    up = F.interpolate(s_t, size=(13, 11), mode="bilinear", align_corners=False)
    arrays["resize_pt_up"] = up.permute(0, 2, 3, 1).numpy()
    arrays["resize_pt_down"] = F.interpolate(up, size=(4, 3), mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
    write_safetensors(os.path.join(OUT, "inception_forward.safetensors"), arrays,
                      {"torch": torch.__version__, "torchvision": torchvision.__version__})
    # a tiny .pt state dict for the loader
    keep = ["Conv2d_1a_3x3.conv.weight", "Conv2d_1a_3x3.bn.running_var", "Conv2d_1a_3x3.bn.num_batches_tracked"]
    torch.save({k: new[k] for k in keep}, os.path.join(OUT, "tiny_state_dict.pt"))
    print("pool range", float(np.abs(arrays["tf_reference_pool"]).mean()), float(arrays["tf_reference_pool"].max()))
    print("spatial mean", float(arrays["tf_reference_spatial"].mean()), "logits std", float(arrays["tf_reference_logits"].std()))


def uniforms(key, n):
    """Same as guided_diffusion::eval::inception::synthetic::uniforms."""
    h = np.uint64(0xCBF29CE484222325)
    with np.errstate(over="ignore"):
        for b in key.encode():
            h = np.uint64(h ^ np.uint64(b)) * np.uint64(0x100000001B3)
        z = h + (np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def cmd_bench():
    """Prints the scipy FID constants of tests/eval_bench.rs (2048-d generated features)."""
    n, d = 3000, 2048
    a = (uniforms("bench_a", n * d).reshape(n, d) - 0.5).astype(np.float32)
    b = ((uniforms("bench_b", n * d).reshape(n, d) - 0.5) * 1.1 + 0.01).astype(np.float32)
    for rows in (3000, 1000):
        (m1, s1), (m2, s2) = stats(a[:rows]), stats(b[:rows])
        print(rows, repr(frechet(m1, s1, m2, s2)[0]))


def cmd_degenerate():
    """Prints the constants of eval_metrics.rs's degenerate-covariance test: features with
    constant columns (zero rows and columns in the covariances), the same formula as the test."""
    import scipy

    def feats(n, d, salt, consts, scale=1.0, shift=0.0):
        i, j = np.meshgrid(np.arange(n), np.arange(d), indexing="ij")
        x = (((i * 37 + j * 101 + i * j * 7 + salt * 11) % 23) * 0.25 * scale - 2.0 + shift).astype(np.float32)
        for col, c in consts.items():
            x[:, col] = c
        return x

    print("scipy", scipy.__version__)
    cases = [("same", {1: 0.0, 4: 3.0}, {1: 0.0, 4: 3.0}), ("one_side", {1: 0.0, 4: 3.0}, {}),
             ("crossing", {0: 0.0, 1: 3.0}, {4: 0.0, 5: -1.5})]
    for name, ca, cb in cases:
        (m1, s1), (m2, s2) = stats(feats(20, 6, 1, ca)), stats(feats(24, 6, 2, cb, 1.25, 0.5))
        print(name, *map(repr, frechet(m1, s1, m2, s2)))


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    cmds = {"metrics": cmd_metrics, "npz": cmd_npz, "inception": cmd_inception, "bench": cmd_bench,
            "degenerate": cmd_degenerate}
    if len(sys.argv) < 2 or any(a not in cmds for a in sys.argv[1:]):
        sys.exit(__doc__)
    for a in sys.argv[1:]:
        cmds[a]()
