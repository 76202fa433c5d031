"""Shared pytest settings: every test module is imported by path (no __init__ files needed)."""
