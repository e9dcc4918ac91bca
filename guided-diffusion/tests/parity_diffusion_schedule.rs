//! Parity of the f64 schedule arrays, `space_timesteps` and respaced processes with the
//! reference (golden case `schedules`), and of q_sample / q_mean_variance / the posterior
//! (golden case `q_sample`). No network involved.
mod support;

use candle_core::{DType, Tensor};
use guided_diffusion::diffusion::{
    get_named_beta_schedule, space_timesteps, DiffusionArrays, DiffusionConfig, NoiseSchedule,
};
use support::{assert_close, assert_f64_close, Case};

const RTOL: f64 = 1e-12;
const ATOL: f64 = 1e-15;

fn arrays_by_name(a: &DiffusionArrays) -> Vec<(&'static str, &Vec<f64>)> {
    vec![
        ("betas", &a.betas),
        ("alphas_cumprod", &a.alphas_cumprod),
        ("alphas_cumprod_prev", &a.alphas_cumprod_prev),
        ("alphas_cumprod_next", &a.alphas_cumprod_next),
        ("sqrt_alphas_cumprod", &a.sqrt_alphas_cumprod),
        ("sqrt_one_minus_alphas_cumprod", &a.sqrt_one_minus_alphas_cumprod),
        ("log_one_minus_alphas_cumprod", &a.log_one_minus_alphas_cumprod),
        ("sqrt_recip_alphas_cumprod", &a.sqrt_recip_alphas_cumprod),
        ("sqrt_recipm1_alphas_cumprod", &a.sqrt_recipm1_alphas_cumprod),
        ("posterior_variance", &a.posterior_variance),
        ("posterior_log_variance_clipped", &a.posterior_log_variance_clipped),
        ("posterior_mean_coef1", &a.posterior_mean_coef1),
        ("posterior_mean_coef2", &a.posterior_mean_coef2),
    ]
}

fn schedule_config(case: &Case, name: &str) -> DiffusionConfig {
    let s = case.params()["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no schedule {name}"));
    DiffusionConfig {
        steps: s["steps"].as_u64().unwrap() as usize,
        noise_schedule: s["noise_schedule"].as_str().unwrap().parse().unwrap(),
        ..Default::default()
    }
}

#[test]
fn parity_schedule_arrays() {
    let case = Case::load("schedules");
    let mut checked = 0;
    for s in case.params()["schedules"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        let cfg = schedule_config(&case, name);
        let raw = get_named_beta_schedule(cfg.noise_schedule, cfg.steps);
        let r = assert_f64_close(
            &format!("{name}.raw_betas"),
            &raw,
            &case.f64s(&format!("out.{name}.raw_betas")),
            RTOL,
            ATOL,
        );
        println!("{name}.raw_betas: max rel diff {r:e}");
        let d = cfg.build().unwrap();
        assert_eq!(d.num_timesteps(), cfg.steps);
        assert_eq!(d.timestep_map(), (0..cfg.steps).collect::<Vec<_>>().as_slice());
        for (arr, got) in arrays_by_name(d.arrays()) {
            let key = format!("out.{name}.{arr}");
            let r = assert_f64_close(&key, got, &case.f64s(&key), RTOL, ATOL);
            println!("{key}: max rel diff {r:e}");
            checked += 1;
        }
    }
    assert_eq!(checked, 3 * 13);
}

#[test]
fn parity_respacing_timestep_maps_and_arrays() {
    let case = Case::load("schedules");
    let mut n_cases = 0;
    for r in case.params()["respacings"].as_array().unwrap() {
        let base = r["base"].as_str().unwrap();
        let respacing = r["respacing"].as_str().unwrap();
        let prefix = format!("out.{base}@{respacing}");
        let mut cfg = schedule_config(&case, base);

        let sorted: Vec<usize> =
            space_timesteps(cfg.steps, respacing).unwrap().into_iter().collect();
        assert_eq!(
            sorted,
            case.usizes(&format!("{prefix}.space_timesteps_sorted")),
            "{prefix} space_timesteps"
        );

        cfg.timestep_respacing = respacing.to_string();
        let d = cfg.build().unwrap();
        assert_eq!(
            d.timestep_map(),
            case.usizes(&format!("{prefix}.timestep_map")).as_slice(),
            "{prefix} map"
        );
        assert_eq!(d.original_num_steps(), cfg.steps);
        let a = d.arrays();
        for (arr, got) in [
            ("betas", &a.betas),
            ("alphas_cumprod", &a.alphas_cumprod),
            ("alphas_cumprod_prev", &a.alphas_cumprod_prev),
            ("posterior_variance", &a.posterior_variance),
            ("posterior_log_variance_clipped", &a.posterior_log_variance_clipped),
        ] {
            let key = format!("{prefix}.{arr}");
            assert_f64_close(&key, got, &case.f64s(&key), RTOL, ATOL);
        }
        n_cases += 1;
    }
    assert_eq!(n_cases, 9);
}

/// The banker's-rounding case of the pitfalls list: "3,5,7" of 1000 steps hits round(166.5) = 166.
#[test]
fn parity_respacing_bankers_rounding() {
    let steps: Vec<usize> = space_timesteps(1000, "3,5,7").unwrap().into_iter().collect();
    assert!(steps.contains(&166), "{steps:?}");
    assert!(!steps.contains(&167), "{steps:?}");
    let ddim25: Vec<usize> = space_timesteps(1000, "ddim25").unwrap().into_iter().collect();
    assert_eq!(ddim25, (0..1000).step_by(40).collect::<Vec<_>>());
}

#[test]
fn parity_q_sample_and_posterior() {
    let case = Case::load("q_sample");
    let d = Case::diffusion_config(&case.params()["diffusion"]).build().unwrap();
    let x_start = case.get("in.x_start");
    let noise = case.get("in.noise");
    let t = case.usizes("in.t");
    assert_eq!(x_start.dtype(), DType::F32);

    let x_t = d.q_sample(x_start, &t, noise).unwrap();
    assert_close("x_t", &x_t, case.get("out.x_t"), case.atol("x_t"));

    let (mean, var, logvar) = d.q_mean_variance(x_start, &t).unwrap();
    assert_close("q_mean", &mean, case.get("out.q_mean"), case.atol("q_mean"));
    assert_close("q_variance", &var, case.get("out.q_variance"), case.atol("q_variance"));
    assert_close(
        "q_log_variance",
        &logvar,
        case.get("out.q_log_variance"),
        case.atol("q_log_variance"),
    );

    let (pm, pv, plv) = d.q_posterior_mean_variance(x_start, &x_t, &t).unwrap();
    assert_close(
        "posterior_mean",
        &pm,
        case.get("out.posterior_mean"),
        case.atol("posterior_mean"),
    );
    assert_close(
        "posterior_variance",
        &pv,
        case.get("out.posterior_variance"),
        case.atol("posterior_variance"),
    );
    assert_close(
        "posterior_log_variance_clipped",
        &plv,
        case.get("out.posterior_log_variance_clipped"),
        case.atol("posterior_log_variance_clipped"),
    );
}

/// The reference gathers f64 coefficients and casts them to f32 (`_extract_into_tensor`): with
/// the reference's inputs, the q_sample output should be bit-identical, not just close.
#[test]
fn parity_q_sample_bit_exact() {
    let case = Case::load("q_sample");
    let d = Case::diffusion_config(&case.params()["diffusion"]).build().unwrap();
    let t = case.usizes("in.t");
    let x_t = d.q_sample(case.get("in.x_start"), &t, case.get("in.noise")).unwrap();
    let want: &Tensor = case.get("out.x_t");
    assert_eq!(support::max_abs_diff(&x_t, want), 0.0);
    let _ = NoiseSchedule::Cosine;
}
