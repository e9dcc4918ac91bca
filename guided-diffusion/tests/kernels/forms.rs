//! Derived weight forms kept by the layer that owns the weight (`kernels::forms`): a
//! convolution given a weight's kept forms reuses them (Winograd transform, flipped weight)
//! with the same bits as without them; variables never keep any; a new generation (a freeze
//! after writing the weights) starts afresh; a `Conv2d` keeps them only while its network is
//! frozen.
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use guided_diffusion::kernels::{self, WeightForms};
use guided_diffusion::models::layers::{Conv2d, Exec};
use rand::{rngs::StdRng, SeedableRng};

use crate::support::rand_tensor;
use crate::FAST;

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
}

/// (y, dx) of `sum(conv(x, w, b) * r)` for a constant weight `w` and bias, with the forms
/// `forms` keeps for generation `generation` (`None`: none kept).
fn run(
    x: &Var,
    (w, b): (&Tensor, &Tensor),
    r: &Tensor,
    (stride, pad): (usize, usize),
    forms: &WeightForms,
    generation: Option<u64>,
) -> (Vec<u32>, Vec<u32>) {
    let kept = forms.for_call(w, generation);
    let y = kernels::conv2d(&FAST, x, w, Some(b), stride, pad, kept).unwrap();
    let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    (bits(&y), bits(g.get(x).unwrap()))
}

#[test]
fn kernels_forms_reuse_derived_weights_with_identical_results() {
    let mut rng = StdRng::seed_from_u64(3);
    // (n, c, hw, co, k, stride, pad): Winograd both ways (>= 32 channels, 64 tiles), a direct
    // 3x3, a 1x1, a stride-2 3x3.
    let cases = [
        (1, 32, 32, 48, 3, 1, 1),
        (2, 8, 9, 5, 3, 1, 1),
        (2, 16, 8, 24, 1, 1, 0),
        (1, 6, 11, 7, 3, 2, 1),
    ];
    for (i, &(n, c, hw, co, k, stride, pad)) in cases.iter().enumerate() {
        let x = Var::from_tensor(&rand_tensor(&mut rng, &[n, c, hw, hw])).unwrap();
        let w = rand_tensor(&mut rng, &[co, c, k, k]);
        let b = rand_tensor(&mut rng, &[co]);
        let ho = (hw + 2 * pad - k) / stride + 1;
        let r = rand_tensor(&mut rng, &[n, co, ho, ho]);
        let forms = WeightForms::default();
        let plain = run(&x, (&w, &b), &r, (stride, pad), &forms, None);
        assert!(!forms.is_kept(), "case {i}: not frozen, nothing kept");
        for _ in 0..2 {
            let got = run(&x, (&w, &b), &r, (stride, pad), &forms, Some(1));
            assert!(got.0 == plain.0, "case {i}: forward differs with kept forms");
            assert!(got.1 == plain.1, "case {i}: input gradient differs with kept forms");
        }
        // The Winograd case kept both transforms (the second read straight from the weight,
        // flipped on the fly); the direct 3x3 its flipped weight; the 1x1 and the stride-2
        // case nothing.
        let d = forms.for_call(&w, Some(1)).unwrap();
        let kept = (
            d.winograd.get().is_some(),
            d.flipped.get().is_some(),
            d.flipped_winograd.get().is_some(),
        );
        let want = [(true, false, true), (false, true, false), (false, false, false)][i.min(2)];
        assert_eq!(kept, want, "case {i}");
        // A new generation (the weights were written, then frozen again) starts empty.
        let fresh = forms.for_call(&w, Some(2)).unwrap();
        assert!(fresh.winograd.get().is_none() && fresh.flipped.get().is_none(), "case {i}");

        // A variable weight never keeps forms: it may change between calls.
        let wv = Var::from_tensor(&w).unwrap();
        let vforms = WeightForms::default();
        assert!(vforms.for_call(&wv, Some(1)).is_none(), "a Var weight got forms");
        let y0 = bits(&kernels::conv2d(&FAST, &x, &wv, Some(&b), stride, pad, None).unwrap());
        wv.set(&(&w * 2.0).unwrap()).unwrap();
        let y1 = bits(&kernels::conv2d(&FAST, &x, &wv, Some(&b), stride, pad, None).unwrap());
        assert!(y0 != y1, "case {i}: a changed Var weight must change the output");
    }
}

/// A `Conv2d` keeps its weight's forms while its network's [`Exec`] is frozen, not otherwise,
/// and a freeze after writing the weight (in place, as the EMA update does) gives the new
/// weight's result, not the old forms'.
#[test]
fn kernels_forms_live_with_the_layer_and_follow_freezes() {
    let mut rng = StdRng::seed_from_u64(9);
    let w = rand_tensor(&mut rng, &[40, 32, 3, 3]);
    let b = rand_tensor(&mut rng, &[40]);
    let x = rand_tensor(&mut rng, &[1, 32, 32, 32]);
    let map = HashMap::from([("weight".to_string(), w.copy().unwrap()), ("bias".to_string(), b)]);
    let vb = VarBuilder::from_tensors(map.clone(), DType::F32, &Device::Cpu);
    let conv = Conv2d::k3(32, 40, false, vb).unwrap();
    let mut ex = Exec::new(FAST);
    let y0 = bits(&conv.forward(&ex, &x).unwrap());
    assert!(!conv.keeps_forms(), "not frozen: nothing kept");
    ex.freeze();
    assert_eq!(bits(&conv.forward(&ex, &x).unwrap()), y0);
    assert!(conv.keeps_forms(), "frozen: the forms are kept");
    // Write the weight in place (the layer shares the map's tensor), then freeze again.
    let shared = &map["weight"];
    shared.inplace_op1(&Double).unwrap();
    ex.freeze();
    let y1 = conv.forward(&ex, &x).unwrap();
    let want = {
        let vb = VarBuilder::from_tensors(map.clone(), DType::F32, &Device::Cpu);
        Conv2d::k3(32, 40, false, vb).unwrap().forward(&Exec::new(FAST), &x).unwrap()
    };
    assert_eq!(bits(&y1), bits(&want), "the new generation must see the written weight");
    ex.thaw();
    assert_eq!(bits(&conv.forward(&ex, &x).unwrap()), bits(&want));
}

/// Doubles an f32 CPU tensor in place.
struct Double;

impl candle_core::InplaceOp1 for Double {
    fn name(&self) -> &'static str {
        "double"
    }
    fn cpu_fwd(
        &self,
        s: &mut candle_core::CpuStorage,
        _l: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let candle_core::CpuStorage::F32(v) = s else { candle_core::bail!("f32 only") };
        v.iter_mut().for_each(|x| *x *= 2.0);
        Ok(())
    }
}
