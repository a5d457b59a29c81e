"""Utilities of vos_det."""
