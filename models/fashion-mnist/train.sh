#!/usr/bin/env bash
# Retrains the built-in Fashion-MNIST models with gdiff itself, on the CPU, exactly as shipped:
# the class-conditional and the unconditional diffusion model, the noise-aware guidance
# classifier and the clean "judge" classifier of the guidance sweep. The four runs go in
# parallel, one thread each (on 2 cores that is as fast as running them one after another
# with two threads, and one thread keeps the arithmetic order of the shipped runs).
# Needs Debian's dataset-fashion-mnist. Usage:
#   models/fashion-mnist/train.sh [WORK_DIR]     (then copy the files as printed at the end)
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-fashion-mnist-runs}
cargo build --release -p gdiff
gdiff=target/release/gdiff
DIFF_STEPS=${DIFF_STEPS:-1500}     # the shipped diffusion models' step
export RAYON_NUM_THREADS=1
mkdir -p "$work"

unet="--data_dir fashion-mnist --image_size 32 --in_channels 1 --num_channels 32 --num_res_blocks 1
  --channel_mult 1,2,2 --attention_resolutions 8 --num_head_channels 32 --learn_sigma True
  --resblock_updown True --use_scale_shift_norm True --noise_schedule cosine --batch_size 32
  --lr 3e-4 --save_interval 100 --log_interval 25 --seed 1"
clf="--data_dir fashion-mnist --val_data_dir fashion-mnist:test --image_size 32 --in_channels 1
  --num_classes 10 --channel_mult 1,2,2 --classifier_width 32 --classifier_attention_resolutions 8
  --classifier_use_scale_shift_norm True --classifier_resblock_updown True --classifier_pool attention
  --noise_schedule cosine --batch_size 64 --weight_decay 0.05 --anneal_lr True --eval_interval 50
  --save_interval 100 --log_interval 25"

# Phase 1. (The diffusion runs' EMA rates turned out too slow for so few steps: see README.md.)
$gdiff train $unet --class_cond True --ema_rate 0.999,0.9995 --max_steps 700 --log_dir "$work/cond" > "$work/cond.log" 2>&1 &
$gdiff train $unet --class_cond False --ema_rate 0.999,0.9995 --max_steps 700 --log_dir "$work/uncond" > "$work/uncond.log" 2>&1 &
$gdiff train-classifier $clf --noised True --classifier_depth 1 --lr 3e-4 --iterations 1500 --seed 2 \
  --log_dir "$work/classifier" > "$work/classifier.log" 2>&1 &
$gdiff train-classifier $clf --noised False --classifier_depth 2 --lr 1e-3 --iterations 600 --seed 3 \
  --log_dir "$work/judge" > "$work/judge.log" 2>&1 &
wait
# Phase 2: each run resumes from its latest checkpoint; the new EMA rates start from the model.
$gdiff train $unet --class_cond True --ema_rate 0.99,0.995 --max_steps $DIFF_STEPS --log_dir "$work/cond" >> "$work/cond.log" 2>&1 &
$gdiff train $unet --class_cond False --ema_rate 0.99,0.995 --max_steps $DIFF_STEPS --log_dir "$work/uncond" >> "$work/uncond.log" 2>&1 &
$gdiff train-classifier $clf --noised False --classifier_depth 2 --lr 1e-3 --iterations 1000 --seed 3 \
  --log_dir "$work/judge" >> "$work/judge.log" 2>&1 &
wait
step=$(printf %06d "$DIFF_STEPS")
echo "cp $work/cond/ema_0.995_$step.safetensors models/fashion-mnist/model.safetensors"
echo "cp $work/uncond/ema_0.995_$step.safetensors models/fashion-mnist/unconditional.safetensors"
echo "cp $work/classifier/model001500.safetensors models/fashion-mnist/classifier.safetensors"
echo "cp $work/judge/model001000.safetensors models/fashion-mnist/judge.safetensors"
