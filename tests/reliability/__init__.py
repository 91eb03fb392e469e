"""Reliability and security harness: crash-resume, server faults, bad input, numerics, secrets.

What each module guarantees, and the figures measured, are listed in ``docs/reliability.md``.
"""
