import os
import sys

# The repository root is the extension folder: make `lib_loratorio` importable without installing.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
