"""The network ε_θ(x_t, t): the DDPM U-Net (`unet`), and how it is run as an ε-model on a device
in a chosen precision (`precision`). Nothing here knows β or ᾱ."""
