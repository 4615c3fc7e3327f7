"""TLS and mutual TLS for meshserve's gRPC servers and channels.

Policy (plaintext only by explicit choice):
- a server with a certificate and key configured serves TLS only on its gRPC port; with a
  client CA as well, only to clients presenting a certificate that CA signed (mutual TLS);
- a server without a certificate serves plaintext on a loopback address (a laptop, the
  tests), and refuses to start on any other address unless `plaintext` was chosen (a mesh
  such as Istio encrypts between the sidecars, or a network the operator trusts);
- the same rule holds for a client: a channel to a non-loopback target without a CA
  configured needs the caller's explicit plaintext choice.

PEM files are read and checked at start-up with the standard library's `ssl` module (each
file parses, the key matches the certificate), and every error names the setting to fix.
A server's files are re-read when they change on disk (a rotated Kubernetes Secret), for
new connections; a half-written rotation is ignored until it is complete.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

from meshserve_runtime.settings import setting_name

log = logging.getLogger("meshserve.tls")


class TLSConfigError(ValueError):
    """TLS material or the transport policy is wrong; the message names the setting to fix."""


@dataclass(frozen=True)
class PemSetting:
    """A PEM file and the setting (environment variable or flag) it came from."""

    setting: str
    path: Path

    def __str__(self) -> str:
        return f"{self.setting}={self.path}"


def _read(pem: PemSetting) -> bytes:
    try:
        data = pem.path.read_bytes()
    except FileNotFoundError:
        raise TLSConfigError(f"{pem}: no such file") from None
    except OSError as err:
        raise TLSConfigError(f"{pem}: cannot read it ({err.strerror or err})") from None
    if not data.strip():
        raise TLSConfigError(f"{pem}: the file is empty")
    return data


def read_certificates(pem: PemSetting) -> bytes:
    """Read a PEM file of one or more X.509 certificates (a chain or a CA bundle)."""
    data = _read(pem)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TLSConfigError(f"{pem}: not a PEM certificate file (no '-----BEGIN CERTIFICATE-----' block)")
    try:
        # Parses every certificate in the file; the context itself is thrown away.
        ssl.create_default_context(cadata=data.decode("ascii", errors="replace"))
    except ssl.SSLError as err:
        raise TLSConfigError(f"{pem}: a certificate in it does not parse ({err.reason or err})") from None
    return data


def read_private_key(pem: PemSetting) -> bytes:
    """Read an unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1)."""
    data = _read(pem)
    if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data:
        raise TLSConfigError(f"{pem}: the private key is encrypted; give an unencrypted key (gRPC takes no passphrase)")
    if b"PRIVATE KEY-----" not in data:
        raise TLSConfigError(f"{pem}: not a PEM private key (no '-----BEGIN ... PRIVATE KEY-----' block)")
    return data


def check_key_pair(cert: PemSetting, key: PemSetting) -> None:
    """Fail unless the key parses and belongs to the certificate (the first one of the chain)."""

    def no_passphrase() -> bytes:
        raise TLSConfigError(f"{key}: the private key is encrypted; give an unencrypted key")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert.path), str(key.path), password=no_passphrase)
    except ssl.SSLError as err:
        if "KEY_VALUES_MISMATCH" in str(err):
            raise TLSConfigError(f"{key} is not the private key of {cert}") from None
        raise TLSConfigError(f"{key} / {cert}: OpenSSL cannot load them together ({err.reason or err})") from None


@dataclass(frozen=True)
class _ServerMaterial:
    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None


@dataclass(frozen=True)
class ServerTLS:
    """A server's TLS material (certificate chain + key; a client CA turns on mutual TLS)."""

    cert: PemSetting
    key: PemSetting
    client_ca: PemSetting | None = None

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def load(self) -> _ServerMaterial:
        """Read and check every file (raises TLSConfigError naming the setting)."""
        chain = read_certificates(self.cert)
        key = read_private_key(self.key)
        check_key_pair(self.cert, self.key)
        client_ca = read_certificates(self.client_ca) if self.client_ca is not None else None
        return _ServerMaterial(chain, key, client_ca)

    def _stamp(self) -> tuple[tuple[int, int, int], ...]:
        files = [self.cert, self.key] + ([self.client_ca] if self.client_ca else [])
        stamps = []
        for pem in files:
            try:
                st = os.stat(pem.path)
                stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append((0, 0, 0))
        return tuple(stamps)

    def credentials(self, reload: bool = True) -> grpc.ServerCredentials:
        """Server credentials; with `reload`, files changed on disk apply to new connections."""
        material = self.load()
        if not reload:
            return _static_credentials(material)
        return grpc.dynamic_ssl_server_credentials(
            _certificate_configuration(material),
            _Reloader(self),
            require_client_authentication=self.mutual,
        )


def _static_credentials(m: _ServerMaterial) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(m.private_key, m.cert_chain)],
        root_certificates=m.client_ca,
        require_client_auth=m.client_ca is not None,
    )


def _certificate_configuration(m: _ServerMaterial) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(m.private_key, m.cert_chain)], root_certificates=m.client_ca)


class _Reloader:
    """grpc's certificate-config fetcher: called by gRPC for each new TLS handshake.

    Returns a new configuration only when a file changed (a stat per handshake; connections
    are long-lived) and the new files are complete and consistent; None keeps the current one.
    """

    def __init__(self, tls: ServerTLS) -> None:
        self._tls = tls
        self._stamp = tls._stamp()

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        stamp = self._tls._stamp()
        if stamp == self._stamp:
            return None
        try:
            material = self._tls.load()
        except TLSConfigError as err:
            # A rotation caught half-way (certificate written, key not yet): try again on
            # the next handshake; the previous certificate keeps serving meanwhile.
            log.warning("TLS files changed but cannot be loaded yet; still serving the previous certificate: %s", err)
            return None
        self._stamp = stamp
        log.info("TLS certificate reloaded", extra={"cert_file": str(self._tls.cert.path)})
        return _certificate_configuration(material)


@dataclass(frozen=True)
class ClientTLS:
    """What a client needs to call a TLS server: the CA that signed the server's certificate,
    optionally its own certificate and key (mutual TLS), and a server-name override."""

    ca: PemSetting | None
    cert: PemSetting | None = None
    key: PemSetting | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials (raises TLSConfigError naming the setting). No CA: system roots."""
        ca = read_certificates(self.ca) if self.ca is not None else None
        cert = key = None
        if self.cert is not None and self.key is not None:
            cert = read_certificates(self.cert)
            key = read_private_key(self.key)
            check_key_pair(self.cert, self.key)
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def _pem(settings: object, field: str) -> PemSetting | None:
    value = getattr(settings, field)
    return None if value is None else PemSetting(setting_name(settings, field), Path(value))


def server_tls_from_settings(settings: object) -> ServerTLS | None:
    """The server TLS of a ServerSettings (None: no certificate configured); checks the pairing."""
    cert, key, client_ca = (_pem(settings, f) for f in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"))
    if cert is None and key is None:
        if client_ca is not None:
            raise TLSConfigError(
                f"{client_ca.setting} is set but {setting_name(settings, 'tls_cert_file')} is not: "
                "mutual TLS needs the server's own certificate and key as well"
            )
        return None
    if cert is None or key is None:
        have, missing = (cert, "tls_key_file") if key is None else (key, "tls_cert_file")
        assert have is not None
        raise TLSConfigError(f"{have.setting} is set but {setting_name(settings, missing)} is not: set both to serve TLS")
    return ServerTLS(cert, key, client_ca)


def client_tls(
    ca: PemSetting | None,
    cert: PemSetting | None = None,
    key: PemSetting | None = None,
    server_name: str | None = None,
    *,
    ca_setting: str = "CA",
) -> ClientTLS | None:
    """A ClientTLS (None when nothing is set: a plaintext client); checks the pairing."""
    if cert is None and key is None and ca is None:
        if server_name:
            raise TLSConfigError(f"a TLS server name ({server_name!r}) is set but no {ca_setting}: it applies to TLS only")
        return None
    if (cert is None) != (key is None):
        have = cert or key
        assert have is not None
        raise TLSConfigError(f"{have.setting} is set without its pair: a client certificate needs both the certificate and its key")
    if ca is None:
        assert cert is not None  # the pair is complete and something is set
        raise TLSConfigError(f"{cert.setting} is set but {ca_setting} is not: set the CA that signed the server's certificate")
    return ClientTLS(ca, cert, key, server_name or None)


# ---------------------------------------------------------------- the plaintext policy

def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1); the empty host is every address."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def target_hosts(target: str) -> list[str] | None:
    """Hosts of a gRPC target (None: a local socket, e.g. unix:). Understands host:port,
    [v6]:port, dns:[//authority/]host:port, ipv4:/ipv6: address lists."""
    scheme, sep, rest = target.partition(":")
    scheme = scheme.lower() if sep else ""
    if scheme in ("unix", "unix-abstract", "vsock"):
        return None
    if scheme == "dns":
        # dns:host:port, dns:///host:port or dns://authority/host:port
        addresses = [rest.lstrip("/").rsplit("/", 1)[-1] if rest.startswith("//") else rest]
    elif scheme in ("ipv4", "ipv6"):
        addresses = rest.split(",")
    elif rest.startswith("//"):
        # Another resolver (xds:///, ...): its addresses are unknown here, so never loopback.
        return [target]
    else:
        addresses = [target]
    return [_host_of(a) for a in addresses]


def _host_of(address: str) -> str:
    address = address.strip()
    if address.startswith("["):
        return address[1 : address.find("]")] if "]" in address else address
    return address.rsplit(":", 1)[0] if address.count(":") == 1 else address


def is_loopback_target(target: str) -> bool:
    hosts = target_hosts(target)
    return hosts is None or all(is_loopback_host(h) for h in hosts)


def check_plaintext_server(host: str, port: int, plaintext_setting: str, cert_setting: str, key_setting: str, plaintext: bool) -> None:
    """Refuse a plaintext gRPC port off loopback unless plaintext was chosen."""
    if plaintext or is_loopback_host(host):
        return
    raise TLSConfigError(
        f"refusing to serve plaintext gRPC on {host or '*'}:{port}, a non-loopback address: set "
        f"{cert_setting} and {key_setting} to serve TLS, or {plaintext_setting}=true to choose "
        "plaintext explicitly (behind a service mesh that encrypts, or on a trusted network)"
    )


def check_plaintext_targets(targets: Iterable[tuple[str, str]], plaintext_setting: str, ca_setting: str, plaintext: bool) -> None:
    """Refuse plaintext channels to non-loopback targets unless plaintext was chosen.

    targets: (setting, target) pairs, so the message names the setting of each.
    """
    if plaintext:
        return
    remote = [f"{setting}={target}" for setting, target in targets if not is_loopback_target(target)]
    if remote:
        raise TLSConfigError(
            f"refusing plaintext gRPC calls to non-loopback targets ({', '.join(remote)}): set {ca_setting} "
            f"(and a client certificate for mutual TLS) to call them over TLS, or {plaintext_setting}=true "
            "to choose plaintext explicitly (behind a service mesh that encrypts, or on a trusted network)"
        )


def client_tls_from_settings(settings: object, prefix: str, target_fields: Iterable[str]) -> ClientTLS | None:
    """The ClientTLS of a service's outgoing channels, from `<prefix>_ca_file`, `_cert_file`,
    `_key_file` and `_server_name` (None: plaintext, which the plaintext policy must allow
    for every target in `target_fields`)."""
    tls = client_tls(
        _pem(settings, f"{prefix}_ca_file"),
        _pem(settings, f"{prefix}_cert_file"),
        _pem(settings, f"{prefix}_key_file"),
        getattr(settings, f"{prefix}_server_name") or None,
        ca_setting=setting_name(settings, f"{prefix}_ca_file"),
    )
    if tls is None:
        check_plaintext_targets(
            [(setting_name(settings, f), getattr(settings, f)) for f in target_fields],
            setting_name(settings, "plaintext"),
            setting_name(settings, f"{prefix}_ca_file"),
            bool(getattr(settings, "plaintext", False)),
        )
    return tls
