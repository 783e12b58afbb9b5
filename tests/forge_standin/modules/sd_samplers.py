"""Forge ``modules/sd_samplers.py`` stand-in: registry of the k-diffusion samplers only ("Euler", "Heun").
Left out: the timesteps samplers (DDIM/PLMS/UniPC; in Forge they run through ``CFGDenoiserTimesteps``
with ``classic_ddim_eps_estimation``) and LCM/other extras.
Implementation: a private copy of the A1111 stand-in file whose ``all_samplers`` is narrowed to the
k-diffusion ones, then ``set_samplers()`` rebuilds ``samplers`` / ``samplers_map``."""

from modules import _load_a1111, sd_samplers_kdiffusion

_base = _load_a1111("sd_samplers")
_base.all_samplers = [*sd_samplers_kdiffusion.samplers_data_k_diffusion]
_base.all_samplers_map = {x.name: x for x in _base.all_samplers}
_base.set_samplers()

all_samplers = _base.all_samplers
all_samplers_map = _base.all_samplers_map
samplers = _base.samplers
samplers_for_img2img = _base.samplers_for_img2img
samplers_map = _base.samplers_map
find_sampler_config = _base.find_sampler_config
create_sampler = _base.create_sampler
set_samplers = _base.set_samplers
visible_sampler_names = _base.visible_sampler_names
