"""The admin API (``isoflow.v1.Admin``): tenants, their API tokens and quotas.

Every call carries the node's admin token (``auth.admin_token_file``); a
node without one refuses every call with ``PERMISSION_DENIED``.
"""

from __future__ import annotations

import os

from isoflow._connection import Connection
from isoflow.client import PAGE
from isoflow.v1 import api_pb2 as v1
from isoflow.v1 import api_pb2_grpc


class AdminClient(Connection):
    """A connection to a node's admin API; ``token`` is the admin token.

    Connects as :class:`~isoflow.Client` does. Lists are retried when the
    server is unavailable; changes are not, so that none happens twice.
    """

    def __init__(
        self,
        server: str,
        token: str | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        *,
        retries: int = 4,
    ) -> None:
        super().__init__(server, token, ca_file, retries=retries)
        self._stub = api_pb2_grpc.AdminStub(self._channel)

    def create_tenant(self, name: str, quotas: v1.TenantQuotas | None = None) -> v1.Tenant:
        """Creates a tenant (quotas left unset take the node's defaults);
        ``ALREADY_EXISTS`` when one of that name was created before."""
        request = v1.CreateTenantRequest(name=name, quotas=quotas or v1.TenantQuotas())
        return self._call(self._stub.CreateTenant, request, retry=False)

    def tenants(self) -> list[v1.Tenant]:
        """Every tenant, created here or named by the node's configuration."""

        def page(token: str) -> tuple[list[v1.Tenant], str]:
            request = v1.ListTenantsRequest(page_size=PAGE, page_token=token)
            answer = self._call(self._stub.ListTenants, request)
            return list(answer.tenants), answer.next_page_token

        return list(self._pages(page))

    def set_disabled(self, name: str, disabled: bool) -> v1.Tenant:
        """Disables a tenant (its tokens refused, webhooks 404, cron silent;
        its data kept) or enables it again."""
        call = self._stub.DisableTenant if disabled else self._stub.EnableTenant
        return self._call(call, v1.TenantName(name=name), retry=False)

    def set_quotas(self, name: str, quotas: v1.TenantQuotas) -> v1.Tenant:
        """Replaces a tenant's quotas."""
        request = v1.SetTenantQuotasRequest(name=name, quotas=quotas)
        return self._call(self._stub.SetTenantQuotas, request, retry=False)

    def issue_token(self, tenant: str, label: str = "") -> v1.IssuedToken:
        """A new token for the tenant: ``token`` is shown this once."""
        request = v1.IssueTokenRequest(tenant=tenant, label=label)
        return self._call(self._stub.IssueToken, request, retry=False)

    def tokens(self, tenant: str | None = None) -> list[v1.TokenInfo]:
        """Issued tokens (of one tenant, or every tenant's), without secrets."""

        def page(token: str) -> tuple[list[v1.TokenInfo], str]:
            request = v1.ListTokensRequest(tenant=tenant or "", page_size=PAGE, page_token=token)
            answer = self._call(self._stub.ListTokens, request)
            return list(answer.tokens), answer.next_page_token

        return list(self._pages(page))

    def revoke_token(self, token_id: str) -> v1.TokenInfo:
        """Revokes a token by its id; ``NOT_FOUND`` when none has it."""
        return self._call(
            self._stub.RevokeToken, v1.RevokeTokenRequest(token_id=token_id), retry=False
        )
