"""The diffusion math, as tensor functions: no files, no devices of its own, no network.

    schedule   β_t, ᾱ_t, λ_t and the timestep sub-sequences τ (uniform, quad, trailing, logsnr)
    loss       q(x_t | x_0) and DDPM's simple loss
    samplers   DDIM (eq. 12, σ from eq. 16), DPM-Solver++(2M), DDPM ancestral, encoding
               (eqs. 13/14), slerp
    oracle     the exact ε-predictor for Gaussian data, the samplers' exact output moments, and
               the probability-flow ODE's exact solution
    eps_model  the calling contract eps_model(x_t, t) -> ε̂ that all of them use
"""
