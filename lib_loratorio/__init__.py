"""LoRAtorio core: training-free LoRA composition at sampling time.

Pure torch + einops + safetensors; nothing here imports the WebUI or gradio.
"""
