"""The training loop, its arguments (flags generated from the config classes) and the presets."""
