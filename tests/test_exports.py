import types

import fastws


def test_all_matches_exports():
    public = {
        name for name, value in vars(fastws).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(fastws.__all__) - {"__version__"} == public
    for name in fastws.__all__:
        assert getattr(fastws, name) is not None
