"""metareid: MetaGait gait recognition and DR50 generalizable person re-identification."""

__version__ = "0.1.0"
