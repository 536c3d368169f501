# Makes tests/browser a package ("browser"), so its tests can `from .conftest import ...` the harness helpers
# without clashing with tests/conftest.py (both would otherwise be the top-level module "conftest").
