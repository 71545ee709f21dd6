"""Data for both systems: ``gait/`` (silhouette sequences) and ``reid/`` (person crops).

What both use lives here: the identity-balanced P×K sampler (:mod:`metareid.data.samplers`).
"""
