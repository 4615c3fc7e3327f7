"""`python -m meshserve_preprocess`: run the preprocess service."""

from meshserve_runtime.server import serve
from meshserve_runtime.settings import load_settings

from meshserve_preprocess.service import PreprocessService
from meshserve_preprocess.settings import PreprocessSettings


def main() -> None:
    settings = load_settings(PreprocessSettings)  # env read when the process starts, not at import
    serve(PreprocessService(settings), settings)


if __name__ == "__main__":
    main()
