"""A video latent [B, C, T, H, W] as the one image the composer works on: its frames stacked top to bottom.

The composer and the composition maths work on images [rows, C, H, W], a weight map per image. A video model
(Wan; Qwen-Image, whose latent is a one-frame video) gets a weight map per latent frame, so that a LoRA can
own a region that moves: the frames are stacked into one tall image, each frame padded with zeros to whole
patches so that no patch straddles two frames (zeros add nothing to a patch's similarity), and the composed
image and its weight maps are cut back into frames. A one-frame latent is only squeezed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class StackedFrames:
    """The stacked view of latents shaped like ``x`` [B, C, T, H, W], for patches of ``patch_size``."""

    def __init__(self, x: torch.Tensor, patch_size: int) -> None:
        self.frames, self.height = int(x.shape[2]), int(x.shape[3])
        self.pad = 0 if self.frames == 1 else (-self.height) % patch_size

    def stack(self, x: torch.Tensor) -> torch.Tensor:
        """[R, C, T, H, W] -> [R, C, T * (H + pad), W]."""
        if self.pad:
            x = F.pad(x, (0, 0, 0, self.pad))
        return x.flatten(2, 3)

    def unstack(self, image: torch.Tensor) -> torch.Tensor:
        """[R, C, T * (H + pad), W] -> [R, C, T, H, W] (also for weight maps [rows, N, ...])."""
        frames = image.unflatten(2, (self.frames, self.height + self.pad))
        return frames[:, :, :, : self.height]

    def frame_maps(self, maps: torch.Tensor, frame: int, of: int) -> torch.Tensor:
        """One image's weight maps [N, stacked height, W] over decoded frame ``frame`` of ``of``: the maps of the
        latent frame it comes from (a video VAE decodes each latent frame into several)."""
        return self.unstack(maps[None])[0, :, frame * self.frames // of]

    def maps(self, maps: torch.Tensor) -> torch.Tensor:
        """Weight maps of stacked images as the layers see the latent: a frame axis, or none for one frame."""
        frames = self.unstack(maps)
        return frames.squeeze(2) if self.frames == 1 else frames
