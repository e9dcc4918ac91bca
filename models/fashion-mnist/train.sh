#!/usr/bin/env bash
# Retrains the built-in Fashion-MNIST models with gdiff itself, on the CPU, exactly as shipped:
#  - model.safetensors: the class-conditional UNet trained with label dropout (classifier-free
#    guidance; its null class 10 is also the unconditional model);
#  - classifier.safetensors: the noise-aware guidance classifier;
#  - judge.safetensors: the clean classifier that only judges samples (guidance sweep); it is
#    the judge of the earlier built-in models, unchanged, so its commands are the earlier ones.
# The runs go in parallel, one thread each (on 2 cores that is as fast as one after another with
# two threads, and one thread fixes the arithmetic order). Every run resumes from its --log_dir,
# so the script can be stopped and rerun; resuming is bitwise the same as not stopping.
# Needs Debian's dataset-fashion-mnist. Usage:
#   models/fashion-mnist/train.sh [WORK_DIR]     (then copy the files as printed at the end)
# SHIP_STEP and CLF_STEP (multiples of 500 and 1000) choose the shipped checkpoints; the
# diffusion model's learning rate is constant to COOL_FROM, then anneals linearly to 0 at
# SHIP_STEP (the reference's --lr_anneal_steps, which also ends the run there).
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-fashion-mnist-runs}
cargo build --release -p gdiff
gdiff=target/release/gdiff
SHIP_STEP=${SHIP_STEP:-21000}
COOL_FROM=${COOL_FROM:-16000}
CLF_STEP=${CLF_STEP:-4000}
export RAYON_NUM_THREADS=1
mkdir -p "$work"

unet="--data_dir fashion-mnist --image_size 32 --in_channels 1 --num_channels 32 --num_res_blocks 2
  --channel_mult 1,2,2 --attention_resolutions 8 --num_head_channels 32 --learn_sigma True
  --resblock_updown True --use_scale_shift_norm True --noise_schedule cosine --class_cond True
  --class_dropout_prob 0.1 --random_flip False --lr 3e-4 --batch_size 32 --save_interval 500
  --log_interval 50 --seed 1"
clf="--data_dir fashion-mnist --val_data_dir fashion-mnist:test --image_size 32 --in_channels 1
  --num_classes 10 --channel_mult 1,2,2 --classifier_attention_resolutions 8
  --classifier_use_scale_shift_norm True --classifier_resblock_updown True
  --classifier_pool attention --noise_schedule cosine --weight_decay 0.05 --anneal_lr True"

# Phase 1: the diffusion model to step 2500 with slow EMAs, the guidance classifier (its
# learning rate anneals over 8000 iterations; CLF_STEP is one of its checkpoints on the way),
# and the judge (as before: 600 iterations, then resumed to 1000).
$gdiff train $unet --ema_rate 0.999,0.9995 --max_steps 2500 --log_dir "$work/model" > "$work/model.log" 2>&1 &
model_pid=$!
$gdiff train-classifier $clf --classifier_width 32 --classifier_depth 2 --noised True --batch_size 64 \
  --lr 3e-4 --iterations 8000 --eval_interval 250 --save_interval 1000 --log_interval 50 --seed 2 \
  --log_dir "$work/classifier" > "$work/classifier.log" 2>&1 &
( $gdiff train-classifier $clf --classifier_width 32 --classifier_depth 2 --noised False --batch_size 64 \
    --lr 1e-3 --iterations 600 --eval_interval 50 --save_interval 100 --log_interval 25 --seed 3 \
    --random_flip True --log_dir "$work/judge" > "$work/judge.log" 2>&1
  $gdiff train-classifier $clf --classifier_width 32 --classifier_depth 2 --noised False --batch_size 64 \
    --lr 1e-3 --iterations 1000 --eval_interval 50 --save_interval 100 --log_interval 25 --seed 3 \
    --random_flip True --log_dir "$work/judge" >> "$work/judge.log" 2>&1 ) &
wait "$model_pid"
# Phase 2: a fast EMA (0.995) is added; it starts from the model at 2500. Constant lr to COOL_FROM.
$gdiff train $unet --ema_rate 0.999,0.9995,0.995 --max_steps "$COOL_FROM" --log_dir "$work/model" >> "$work/model.log" 2>&1
# Phase 3: the cool-down: lr = 3e-4 * (1 - step / SHIP_STEP), from 7.1e-5 at 16000 to 0 at 21000.
$gdiff train $unet --ema_rate 0.999,0.9995,0.995 --lr_anneal_steps "$SHIP_STEP" --log_dir "$work/model" >> "$work/model.log" 2>&1
wait
step=$(printf %06d "$SHIP_STEP")
echo "cp $work/model/ema_0.995_$step.safetensors models/fashion-mnist/model.safetensors"
echo "cp $work/classifier/model$(printf %06d "$CLF_STEP").safetensors models/fashion-mnist/classifier.safetensors"
echo "cp $work/judge/model001000.safetensors models/fashion-mnist/judge.safetensors"
