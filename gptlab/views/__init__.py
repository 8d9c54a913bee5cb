"""Views: what a model and its training look like, as numbers (here) and pictures (gptlab/pictures.py)."""
