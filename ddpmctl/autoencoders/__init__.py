"""Autoencoders that map images to a smaller latent space for latent diffusion (plugin group ``ddpmctl.autoencoders``)."""
