"""`python -m meshserve_features`: run the features service."""

from meshserve_runtime.server import serve
from meshserve_runtime.settings import load_settings

from meshserve_features.service import FeaturesService
from meshserve_features.settings import FeaturesSettings


def main() -> None:
    settings = load_settings(FeaturesSettings)  # env read when the process starts, not at import
    serve(FeaturesService(settings), settings)


if __name__ == "__main__":
    main()
