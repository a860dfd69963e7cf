import asyncio
import logging
import os

import pytest

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None


def pytest_asyncio_loop_factories(config, item):
    """fastws runs on uvloop; FASTWS_TEST_LOOPS=uvloop,asyncio runs every test on both."""
    names = os.environ.get("FASTWS_TEST_LOOPS", "uvloop").split(",")
    factories = {"uvloop": uvloop.new_event_loop if uvloop else None, "asyncio": asyncio.new_event_loop}
    return {name: factories[name] for name in names if factories.get(name)}


@pytest.fixture(autouse=True)
def _fail_on_loop_exceptions(request):
    """Fail a test if the event loop's exception handler fired during it."""
    caught = []

    class Handler(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith(("Task exception was never retrieved", "Exception in callback")):
                caught.append(record.getMessage())

    handler = Handler(logging.ERROR)
    logging.getLogger("asyncio").addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger("asyncio").removeHandler(handler)
    assert not caught, caught
