"""The benchmark harness of the router (`python -m bench`): a realistic corpus generated in memory, the
router's stages timed against floors measured in the same run, and the targets of issue #7 as ratios.

Nothing here is a test: timings are reported, never asserted. See docs/PERFORMANCE.md.
"""
