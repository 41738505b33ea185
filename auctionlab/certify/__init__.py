"""Certifiers: exact MIP regret certificates per profile (seed 004)."""
