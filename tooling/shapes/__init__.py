"""Captioned shapes rendered on the fly: the text-to-image reference model's data (numpy only)."""
