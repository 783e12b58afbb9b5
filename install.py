"""Run by the WebUI at start-up: install what the WebUI lacks for LoRAtorio (einops), nothing else."""
import launch

if not launch.is_installed("einops"):
    launch.run_pip("install einops", "einops for LoRAtorio")
