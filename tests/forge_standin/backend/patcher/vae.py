"""``backend/patcher/vae.py`` (subset): ``VAE`` with ``latent_channels`` (processing uses it for the RNG
shape), ``first_stage_model``, ``decode``/``encode``. Stand-in: a toy decoder (first 3 latent channels,
tanh, nearest x8 upscale) and encoder; no weights."""

import torch


class VAE:
    def __init__(self, latent_channels=4):
        self.latent_channels = latent_channels
        self.first_stage_model = None
        self.patcher = None

    def clone(self):
        n = VAE(self.latent_channels)
        n.first_stage_model, n.patcher = self.first_stage_model, self.patcher
        return n

    def decode(self, samples):
        """[B, C, h, w] latents -> [B, H, W, 3] in [0, 1] (Forge's VAE.decode layout)."""
        x = torch.nn.functional.interpolate(torch.tanh(samples[:, :3].float()), scale_factor=8, mode="nearest")
        return ((x + 1) / 2).movedim(1, -1)

    def encode(self, pixel_samples):
        """[B, H, W, 3] in [0, 1] -> [B, C, h, w]."""
        x = pixel_samples.movedim(-1, 1) * 2 - 1
        x = torch.nn.functional.avg_pool2d(x, 8).clamp(-0.999, 0.999)
        z = torch.atanh(x)
        pad = z.new_zeros(z.shape[0], self.latent_channels - 3, *z.shape[2:])
        return torch.cat([z, pad], dim=1)
