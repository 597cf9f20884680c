"""Certificates mounted from a Kubernetes Secret are reloaded when the kubelet rotates them.

The kubelet never rewrites a mounted file: it writes the new files into a fresh hidden
folder, points the `..data` symlink at it with one atomic rename, and deletes the old folder;
`tls.crt` itself is a symlink through `..data`. The server must see the new certificate
through the unchanged path, on the next handshake, without a restart."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service_kit import devcerts
from service_kit.tls import TlsFiles
from tests.keyvault.conftest import StartVault, keyring_of, vault_settings
from tests.keyvault.support import channel, client_credentials


class SecretVolume:
    """A folder laid out as the kubelet lays out a Secret volume."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0

    def write(self, files: dict[str, bytes]) -> None:
        """One kubelet update: a new timestamped folder, an atomic `..data` swap, the old
        folder removed."""
        self.generation += 1
        folder = self.root / f"..2026_12_02_00_00_{self.generation:02d}.{os.getpid()}"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        data_link = self.root / "..data"
        previous = data_link.resolve() if data_link.is_symlink() else None
        staging = self.root / "..data_tmp"
        staging.symlink_to(folder.name)
        os.rename(staging, data_link)  # atomic: readers see the old set or the new one
        for name in files:
            visible = self.root / name
            if not visible.is_symlink():
                visible.symlink_to(f"..data/{name}")
        if previous is not None:
            for stale in previous.iterdir():
                stale.unlink()
            previous.rmdir()

    def tls_files(self) -> TlsFiles:
        return TlsFiles(self.root / "tls.crt", self.root / "tls.key", self.root / "ca.crt")


async def answers(port: int, root: bytes, client: devcerts.Issued) -> bool:
    """Whether a new connection that trusts only `root` is served."""
    async with channel(port, client_credentials(root, client)) as ch:
        try:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE, err
            return False
        return True


async def test_server_reloads_a_certificate_swapped_in_by_the_kubelet(
    start_vault: StartVault, tls_for: Callable[[str], TlsFiles], tmp_path: Path
) -> None:
    # cert-manager issued the first certificate; the renewal comes from another CA here, so
    # that which certificate is served shows in whether a client trusting only one CA connects.
    first_ca = devcerts.make_ca("first CA")
    renewed_ca = devcerts.make_ca("renewed CA")
    volume = SecretVolume(tmp_path)
    first = devcerts.issue(first_ca, "keyvault")
    shipped = tls_for("keyvault")
    client_ca = shipped.ca.read_bytes()  # the one CA clients' certificates come from
    volume.write({"tls.crt": first.cert_pem, "tls.key": first.key_pem, "ca.crt": client_ca})
    settings = vault_settings(volume.tls_files(), keyring_of(1))
    vault = await start_vault(keyring_of(1), server=settings.server)
    app_files = tls_for("app")
    app = devcerts.Issued(app_files.cert.read_bytes(), app_files.key.read_bytes())

    assert await answers(vault.port, first_ca.cert_pem, app)
    assert not await answers(vault.port, renewed_ca.cert_pem, app)

    renewed = devcerts.issue(renewed_ca, "keyvault")
    volume.write({"tls.crt": renewed.cert_pem, "tls.key": renewed.key_pem, "ca.crt": client_ca})

    assert await answers(vault.port, renewed_ca.cert_pem, app)
    assert not await answers(vault.port, first_ca.cert_pem, app)
