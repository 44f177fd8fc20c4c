"""The reliability suite (make reliability, make reliability-quick).

A package on purpose: its conftest is then imported as
reliability.conftest and never shadows t/conftest.py, which the other test
files import as plain "conftest"."""
