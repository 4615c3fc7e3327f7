"""`python -m meshserve_features`: run the features service."""

from meshserve_runtime.server import serve

from meshserve_features.service import FeaturesService
from meshserve_features.settings import FeaturesSettings


def main() -> None:
    settings = FeaturesSettings()  # built here, not at import: env is read when the process starts
    serve(FeaturesService(settings), settings)


if __name__ == "__main__":
    main()
