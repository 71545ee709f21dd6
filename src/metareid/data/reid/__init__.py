"""ReID data: dataset types, release readers, multi-source sets, transforms, synthetic domains,
the ReID DataModule.

Imports run one way: ``dataset`` (types) <- ``market1501`` <- ``release_formats`` <- ``registry``.
"""
