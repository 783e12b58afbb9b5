"""``backend/modules/k_prediction.py`` (subset): ``Prediction`` (discrete eps/v schedule, SD1/SDXL) and
``PredictionFlux`` (flow, prediction_type 'const'). Same method names and formulas' meaning:
``calculate_input``, ``calculate_denoised`` (-> x0), ``noise_scaling``, ``timestep(sigma)``,
``sigma(timestep)``, ``percent_to_sigma``, ``sigmas`` buffer (ascending). Stand-in: PredictionFlux uses
1000 pseudo timesteps (Forge: 10000) and a fixed ``mu``."""

import math

import torch


class AbstractPrediction(torch.nn.Module):
    def __init__(self, sigma_data=1.0, prediction_type='epsilon'):
        super().__init__()
        self.sigma_data = sigma_data
        self.prediction_type = prediction_type

    # subclasses register an ascending ``sigmas`` buffer
    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    @staticmethod
    def _b(sigma, like):
        return sigma.reshape(sigma.shape[:1] + (1,) * (like.ndim - 1)) if sigma.ndim else sigma

    def calculate_input(self, sigma, noise):
        if self.prediction_type == 'const':
            return noise
        return noise / (self._b(sigma, noise) ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma, model_output, model_input):
        s = self._b(sigma, model_output)
        if self.prediction_type == 'v_prediction':
            d = s ** 2 + self.sigma_data ** 2
            return model_input * self.sigma_data ** 2 / d - model_output * s * self.sigma_data / d ** 0.5
        return model_input - model_output * s

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        if self.prediction_type == 'const':
            return sigma * noise + (1.0 - sigma) * latent_image
        scale = torch.sqrt(1.0 + sigma ** 2.0) if max_denoise else sigma
        return noise * scale + latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent / (1.0 - sigma) if self.prediction_type == 'const' else latent


class Prediction(AbstractPrediction):
    def __init__(self, sigma_data=1.0, prediction_type='eps', beta_schedule='linear', linear_start=0.00085,
                 linear_end=0.012, timesteps=1000):
        super().__init__(sigma_data=sigma_data, prediction_type=prediction_type)
        betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.register_buffer('alphas_cumprod', alphas_cumprod.float())
        self.set_sigmas(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5)

    def set_sigmas(self, sigmas):
        self.register_buffer('sigmas', sigmas.float())
        self.register_buffer('log_sigmas', sigmas.log().float())

    def timestep(self, sigma):
        dists = sigma.log().reshape(1, -1) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape)

    def sigma(self, timestep):
        t = timestep.float().clamp(0, len(self.sigmas) - 1)
        lo, hi, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi]).exp()

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()


class PredictionFlux(AbstractPrediction):
    def __init__(self, mu=1.15, pseudo_timestep_range=1000):
        super().__init__(sigma_data=1.0, prediction_type='const')
        self.mu = mu
        self.pseudo_timestep_range = pseudo_timestep_range
        t = torch.arange(1, pseudo_timestep_range + 1, dtype=torch.float64) / pseudo_timestep_range
        self.register_buffer('sigmas', (math.exp(mu) / (math.exp(mu) + (1 / t - 1))).float())

    def timestep(self, sigma):
        return sigma

    def sigma(self, timestep):
        return timestep

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return 1.0 - percent
