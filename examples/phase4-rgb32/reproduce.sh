#!/usr/bin/env bash
# Phase 4: 32x32 RGB on the emoji32 image folder, in pixel space and in latent space.
#   1. a grid of the data;
#   2. the pixel model (config.toml);
#   3. the autoencoder (autoencoder.toml), its reconstructions and reconstruction FID (the floor
#      a latent model can reach), then the latent model on its latents (config.toml --latent);
#   4. 64 samples of each (Heun, 25 steps), memorisation (1,401 images can be learnt by heart) and
#      FID against the training images, each beside its real-vs-real floor.
# docs/benchmarks.md (phase 4) gives the measured figures; benchmarks/phase4.py is the timed version.
# Sizes can be reduced (tests/test_examples.py does): RUNS, FIGURES, N, STEPS, TRAIN_ARGS, AE_ARGS, LATENT_STEPS.
set -euo pipefail
runs=${RUNS:-runs}
figures=${FIGURES:-docs/figures}
n=${N:-350}           # the held-out quarter: 350 images
steps=${STEPS:-25}
run=$runs/phase4-emoji32
ae=$runs/phase4-emoji32-ae
latent=$runs/phase4-emoji32-latent
mkdir -p "$figures"
ddpmctl data show imagefolder -o root=../shared/data/emoji32 -o size=32 --out "$figures/phase4-data.png"
read -r -a extra <<< "${TRAIN_ARGS:-}"  # flags added to the training commands, e.g. a smaller --steps
read -r -a ae_extra <<< "${AE_ARGS:-}"
[ -f "$run/latest" ] || ddpmctl train --config examples/phase4-rgb32/config.toml --runs-dir "$runs" ${extra[@]+"${extra[@]}"}
[ -f "$ae/latest" ] || ddpmctl autoencoder train --config examples/phase4-rgb32/autoencoder.toml --runs-dir "$runs" ${ae_extra[@]+"${ae_extra[@]}"}
cp "$ae/reconstructions.png" "$figures/phase4-reconstructions.png"
[ -f "$latent/latest" ] || ddpmctl train --config examples/phase4-rgb32/config.toml --latent "$ae" --name phase4-emoji32-latent \
  --steps "${LATENT_STEPS:-5465}" --runs-dir "$runs" ${extra[@]+"${extra[@]}"}
ddpmctl sample "$run" --n 64 --sampler heun --steps "$steps" --grid "$figures/phase4-samples.png" --out "$run/samples"
ddpmctl sample "$latent" --n 64 --sampler heun --steps "$steps" --grid "$figures/phase4-latent-samples.png" --out "$latent/samples"
ddpmctl autoencoder eval "$ae" --metric fid --n "$n"
ddpmctl eval "$run" --metric memorisation --metric fid --n "$n" --sampler heun --steps "$steps"
ddpmctl eval "$latent" --metric memorisation --metric fid --n "$n" --sampler heun --steps "$steps"
