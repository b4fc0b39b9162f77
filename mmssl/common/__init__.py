"""The bottom layer: helpers the core and the objectives may both import, importing
nothing else of mmssl (tests/test_import_rules.py holds them to it).

    seeding.py     sample_rng: one numpy generator per (seed, key...), for data and evaluation
    clustering.py  spherical k-means, adjusted mutual information, cluster entropy
    atomic.py      whole-or-nothing file writes, OutputError, writability checks
    plots.py       the PNGs runs and evaluations write (matplotlib, Agg)
"""
