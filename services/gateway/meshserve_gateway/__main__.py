"""`python -m meshserve_gateway`: run the gateway."""

from meshserve_runtime.server import serve

from meshserve_gateway.service import GatewayService
from meshserve_gateway.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    serve(GatewayService(settings), settings)


if __name__ == "__main__":
    main()
