"""`python -m meshserve_gateway`: run the gateway."""

from meshserve_runtime.server import serve
from meshserve_runtime.settings import load_settings

from meshserve_gateway.service import GatewayService
from meshserve_gateway.settings import GatewaySettings


def main() -> None:
    settings = load_settings(GatewaySettings)  # env read when the process starts, not at import
    serve(GatewayService(settings), settings)


if __name__ == "__main__":
    main()
