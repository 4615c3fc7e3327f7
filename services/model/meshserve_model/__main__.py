"""`python -m meshserve_model`: run the model service."""

from meshserve_runtime.server import serve
from meshserve_runtime.settings import load_settings

from meshserve_model.service import ModelService
from meshserve_model.settings import ModelSettings


def main() -> None:
    settings = load_settings(ModelSettings)  # env read when the process starts, not at import
    serve(ModelService(settings), settings)


if __name__ == "__main__":
    main()
