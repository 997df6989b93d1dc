"""DBC and VSS-mapping files shipped with carledger."""

from importlib.resources import files


def path(name: str) -> str:
    """Filesystem path of a shipped file, e.g. path("carledger_demo.dbc")."""
    return str(files(__name__).joinpath(name))
