//! `--preset NAME`: the MODEL_FLAGS / CLASSIFIER_FLAGS of the reference README for each released
//! checkpoint family. A preset is spliced into the command line before the user's own flags, so
//! any flag given explicitly overrides it (clap keeps the last occurrence).

/// (name, what it is, flags)
pub const PRESETS: &[(&str, &str, &str)] = &[
    (
        "imagenet64",
        "64x64_diffusion.pt + 64x64_classifier.pt",
        "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 \
         --image_size 64 --learn_sigma True --noise_schedule cosine --num_channels 192 \
         --num_head_channels 64 --num_res_blocks 3 --resblock_updown True \
         --use_new_attention_order True --use_fp16 True --use_scale_shift_norm True \
         --classifier_scale 1.0 --classifier_depth 4",
    ),
    (
        "imagenet128",
        "128x128_diffusion.pt + 128x128_classifier.pt",
        "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 128 \
         --learn_sigma True --noise_schedule linear --num_channels 256 --num_heads 4 \
         --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True \
         --classifier_scale 0.5",
    ),
    (
        "imagenet256",
        "256x256_diffusion.pt + 256x256_classifier.pt",
        "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 256 \
         --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 \
         --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True \
         --classifier_scale 1.0",
    ),
    (
        "imagenet256-uncond",
        "256x256_diffusion_uncond.pt + 256x256_classifier.pt",
        "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 256 \
         --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 \
         --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True \
         --classifier_scale 10.0",
    ),
    (
        "imagenet512",
        "512x512_diffusion.pt + 512x512_classifier.pt",
        "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 512 \
         --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 \
         --num_res_blocks 2 --resblock_updown True --use_fp16 False --use_scale_shift_norm True \
         --classifier_scale 4.0",
    ),
    (
        "upsample64-256",
        "64_256_upsampler.pt (gdiff super-res)",
        "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --large_size 256 \
         --small_size 64 --learn_sigma True --noise_schedule linear --num_channels 192 \
         --num_heads 4 --num_res_blocks 2 --resblock_updown True --use_fp16 True \
         --use_scale_shift_norm True",
    ),
    (
        "upsample128-512",
        "128_512_upsampler.pt (gdiff super-res)",
        "--attention_resolutions 32,16 --class_cond True --diffusion_steps 1000 --large_size 512 \
         --small_size 128 --learn_sigma True --noise_schedule linear --num_channels 192 \
         --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True \
         --use_scale_shift_norm True",
    ),
    (
        "lsun",
        "lsun_bedroom.pt / lsun_cat.pt / lsun_horse.pt (use --dropout 0.0 for lsun_horse_nodropout.pt)",
        "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout 0.1 \
         --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 \
         --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True \
         --use_scale_shift_norm True",
    ),
];

/// The flags of a preset, or an error listing the known names.
pub fn preset_flags(name: &str) -> Result<Vec<String>, String> {
    PRESETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, flags)| flags.split_whitespace().map(str::to_string).collect())
        .ok_or_else(|| {
            let names: Vec<&str> = PRESETS.iter().map(|(n, _, _)| *n).collect();
            format!("--preset {name:?}: unknown preset; known: {}", names.join(", "))
        })
}

/// Splices the flags of `--preset NAME` (or `--preset=NAME`) right after the subcommand, so the
/// user's flags, which come later, win. Flags of the other command (e.g. `--large_size` for
/// `sample`) are dropped.
pub fn expand(argv: Vec<String>, accepts: impl Fn(&str) -> bool) -> Result<Vec<String>, String> {
    let mut name = None;
    for (i, a) in argv.iter().enumerate() {
        if a == "--preset" {
            name = argv.get(i + 1).cloned();
        } else if let Some(v) = a.strip_prefix("--preset=") {
            name = Some(v.to_string());
        }
    }
    let Some(name) = name else { return Ok(argv) };
    let flags = preset_flags(&name)?;
    let mut kept = Vec::new();
    for pair in flags.chunks(2) {
        if accepts(pair[0].trim_start_matches("--")) {
            kept.extend_from_slice(pair);
        }
    }
    let mut out = argv[..2.min(argv.len())].to_vec();
    out.extend(kept);
    out.extend_from_slice(&argv[2.min(argv.len())..]);
    Ok(out)
}
