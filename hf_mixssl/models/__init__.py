"""Everything that travels with the weights (``trust_remote_code``): configs, modeling files and the role
modules they import. All are siblings: transformers copies a modeling file and its ``from .x import`` files
flat next to the weights, so nothing here may import from outside this folder (or ``hf_mixssl`` itself)."""
