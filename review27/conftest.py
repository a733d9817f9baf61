"""Review probes (review-27), outside the suite's testpaths: they use the suite's fixtures.

Run one: ``JHPROXY_ROUTES_TEST_PORT_BASE=21500 .venv/bin/python -m pytest -p no:cacheprovider
-n 0 -s review27/test_probes.py`` (add ``JHPROXY_ROUTES_KEEP_PODMAN=1`` for the podman ones).
``test_docker_bypass.py`` fails while the finding it shows stands.
"""

from tests.conftest import *  # noqa: F403
