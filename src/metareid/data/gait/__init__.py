"""Gait data: CASIA-B-style datasets and layouts, frame sampling, synthetic CASIA-B, DataModule."""
