"""`python -m meshserve_model`: run the model service."""

from meshserve_runtime.server import serve

from meshserve_model.service import ModelService
from meshserve_model.settings import ModelSettings


def main() -> None:
    settings = ModelSettings()
    serve(ModelService(settings), settings)


if __name__ == "__main__":
    main()
