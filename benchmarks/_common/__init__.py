"""Helpers shared by benchmark scripts of several groups.

A script in ``benchmarks/<group>/`` puts ``benchmarks/`` on ``sys.path`` and imports
``from _common.timing import median_seconds``.
"""
