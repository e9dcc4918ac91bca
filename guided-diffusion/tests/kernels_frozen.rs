//! The frozen-weights scope (`kernels::freeze`): inside it, convolutions with constant weights
//! reuse the weights' derived forms (Winograd transform, flipped weight), giving the same bits
//! as without it; variables are never cached; the cache empties when the last scope ends.
//! One test function, because the scope and its cache are process-wide.
mod support;

use candle_core::{Tensor, Var};
use guided_diffusion::kernels::{self, frozen};
use rand::{rngs::StdRng, SeedableRng};
use support::rand_tensor;

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
}

/// (y, dx) of `sum(conv(x, w, b) * r)` for a constant weight `w` and bias.
fn run(
    x: &Var,
    w: &Tensor,
    b: &Tensor,
    r: &Tensor,
    stride: usize,
    pad: usize,
) -> (Vec<u32>, Vec<u32>) {
    let y = kernels::conv2d(x, w, Some(b), stride, pad).unwrap();
    let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    (bits(&y), bits(g.get(x).unwrap()))
}

#[test]
fn kernels_frozen_scope_reuses_derived_weights_with_identical_results() {
    kernels::set_enabled(true);
    kernels::set_winograd(true);
    kernels::set_frozen_cache(true);
    let mut rng = StdRng::seed_from_u64(3);
    // (n, c, hw, co, k, stride, pad): Winograd both ways (>= 32 channels, 64 tiles), a direct
    // 3x3, a 1x1, a stride-2 3x3.
    let cases = [
        (1, 32, 32, 48, 3, 1, 1),
        (2, 8, 9, 5, 3, 1, 1),
        (2, 16, 8, 24, 1, 1, 0),
        (1, 6, 11, 7, 3, 2, 1),
    ];
    let mut layers = Vec::new();
    for &(n, c, hw, co, k, stride, pad) in &cases {
        let x = Var::from_tensor(&rand_tensor(&mut rng, &[n, c, hw, hw])).unwrap();
        let w = rand_tensor(&mut rng, &[co, c, k, k]);
        let b = rand_tensor(&mut rng, &[co]);
        let ho = (hw + 2 * pad - k) / stride + 1;
        let r = rand_tensor(&mut rng, &[n, co, ho, ho]);
        let plain = run(&x, &w, &b, &r, stride, pad);
        layers.push((x, w, b, r, stride, pad, plain));
    }
    assert!(!frozen::active());
    assert_eq!(frozen::cached_weights(), 0, "no scope, no cache");

    {
        let _outer = kernels::freeze();
        assert!(frozen::active());
        for _ in 0..2 {
            let _inner = kernels::freeze();
            for (i, (x, w, b, r, stride, pad, plain)) in layers.iter().enumerate() {
                let got = run(x, w, b, r, *stride, *pad);
                assert!(got.0 == plain.0, "case {i}: forward differs inside the scope");
                assert!(got.1 == plain.1, "case {i}: input gradient differs inside the scope");
            }
        }
        // The inner scopes ended; the outer one keeps the entries (one per weight).
        assert_eq!(frozen::cached_weights(), cases.len());
        // The Winograd case kept both transforms (the second read straight from the weight,
        // flipped on the fly); the direct 3x3 its flipped weight; the 1x1 and the stride-2
        // case nothing.
        let kept = |i: usize| {
            let d = frozen::lookup(&layers[i].1).unwrap();
            (
                d.winograd.get().is_some(),
                d.flipped.get().is_some(),
                d.flipped_winograd.get().is_some(),
            )
        };
        assert_eq!(kept(0), (true, false, true));
        assert_eq!(kept(1), (false, true, false));
        assert_eq!(kept(2), (false, false, false));
        assert_eq!(kept(3), (false, false, false));

        // A variable weight is never cached: it may change between calls.
        let (x, w, b, r, stride, pad, _) = &layers[0];
        let wv = Var::from_tensor(w).unwrap();
        let before = frozen::cached_weights();
        let y0 = bits(&kernels::conv2d(x, &wv, Some(b), *stride, *pad).unwrap());
        assert_eq!(frozen::cached_weights(), before, "a Var weight got a cache entry");
        wv.set(&(w * 2.0).unwrap()).unwrap();
        let y1 = bits(&kernels::conv2d(x, &wv, Some(b), *stride, *pad).unwrap());
        assert!(y0 != y1, "a changed Var weight must change the output");
        let _ = r;
    }
    assert!(!frozen::active());
    assert_eq!(frozen::cached_weights(), 0, "the last scope's end empties the cache");

    // The switch turns the cache off.
    kernels::set_frozen_cache(false);
    {
        let _s = kernels::freeze();
        assert!(!frozen::active());
        let (x, w, b, r, stride, pad, plain) = &layers[0];
        assert!(run(x, w, b, r, *stride, *pad) == *plain);
        assert_eq!(frozen::cached_weights(), 0);
    }
    kernels::set_frozen_cache(true);
}
