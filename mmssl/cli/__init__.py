"""Command-line entry points (console scripts and tools/ call these)."""
