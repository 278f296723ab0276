"""Bounded work: expensive requests run in a small pool of worker processes (pool.py)."""
