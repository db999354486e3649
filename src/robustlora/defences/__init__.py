"""Defences as arms: feature squeezing, adapter switching, and the defences stage's work."""
