"""Forge Neo stand-in: this folder overlaid on the Forge stand-in's (see tests/neo_standin/README.md)."""

from neo_overlay import extend

extend(__path__, __file__)
