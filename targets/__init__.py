"""Backends (one per file) and device profiles (data, in profiles.py).

Nothing heavy is imported here: each backend imports its engine lazily.
"""
