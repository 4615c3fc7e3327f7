"""`python -m meshserve_preprocess`: run the preprocess service."""

from meshserve_runtime.server import serve

from meshserve_preprocess.service import PreprocessService
from meshserve_preprocess.settings import PreprocessSettings


def main() -> None:
    settings = PreprocessSettings()
    serve(PreprocessService(settings), settings)


if __name__ == "__main__":
    main()
