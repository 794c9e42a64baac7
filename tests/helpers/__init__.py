"""Shared test helpers (not tests): references, process launchers and checks the tests of several rooms use."""
