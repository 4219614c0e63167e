"""Drives the emulator with the official Python Key Vault SDK (run by tests/python_sdk.rs).

Usage: kv_sdk.py managed|workload NAME VERSION
Environment: KVFS_VAULT_URL, KVFS_CLIENT_ID; for workload also AZURE_AUTHORITY_HOST,
AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE; for managed AZURE_POD_IDENTITY_AUTHORITY_HOST.
The CA comes from REQUESTS_CA_BUNDLE. Prints one JSON object: every listed secret name, the
versions of NAME, the latest value of every secret, and NAME's value at VERSION.
"""

import json
import os
import sys

from azure.identity import ManagedIdentityCredential, WorkloadIdentityCredential
from azure.keyvault.secrets import SecretClient


def credential(mode):
    client_id = os.environ["KVFS_CLIENT_ID"]
    if mode == "managed":
        return ManagedIdentityCredential(client_id=client_id)
    if mode == "workload":
        # A custom authority host is not one MSAL knows; without this it would ask
        # login.microsoftonline.com to vouch for it.
        return WorkloadIdentityCredential(client_id=client_id, disable_instance_discovery=True)
    raise SystemExit(f"unknown mode {mode}")


def main():
    mode, name, version = sys.argv[1:4]
    client = SecretClient(
        os.environ["KVFS_VAULT_URL"], credential(mode), verify_challenge_resource=False
    )
    names = [p.name for p in client.list_properties_of_secrets()]
    versions = sorted(p.version for p in client.list_properties_of_secret_versions(name))
    values = {n: client.get_secret(n).value for n in names}
    pinned = client.get_secret(name, version)
    print(
        json.dumps(
            {
                "names": names,
                "versions": versions,
                "values": values,
                "pinned": {"name": pinned.name, "version": pinned.properties.version, "value": pinned.value},
                "api_version": client.api_version,
            }
        )
    )


if __name__ == "__main__":
    main()
