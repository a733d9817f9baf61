"""The hub scopes of jhproxy-routes (granted by ``wiring.py``, checked by ``handlers.py``)."""

from .contract import SERVICE_NAME

SCOPE = "custom:jhproxy-routes:tokens"
SCOPE_DESCRIPTION = "Read and change the port tokens and port access of servers."
# a hub login reaches restricted ports through the sidecar's OAuth client: users need access
LOGIN_SCOPE = f"access:services!service={SERVICE_NAME}"
