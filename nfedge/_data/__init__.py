"""Data folders installed inside the package (pyproject maps them from the top level of the checkout):
nfedge._data.targets -> targets/, nfedge._data.calibration -> calibration/,
nfedge._data.firmware_harness -> firmware_harness/. Read them with importlib.resources."""
