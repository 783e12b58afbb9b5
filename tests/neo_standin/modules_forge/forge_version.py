"""``modules_forge/forge_version.py`` of Forge Neo 2.26."""
version = "neo"
release = "2.26"
