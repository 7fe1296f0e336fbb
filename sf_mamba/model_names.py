"""Model names the command line needs without torch (``sf_mamba models --help`` lists the scan
designs); :mod:`sf_mamba.models.sf_mamba` takes them from here, so there is one list."""

SCANS = ("swap", "uni", "bi_parallel", "bi_series", "cross4", "adventurer")
