"""What the sidecar takes out of a request before the app sees it (``sidecar/server.py``):
the hub's and its own cookies, the token query parameter.
"""

import pytest

from jhproxy_routes.sidecar.access import filter_cookies, split_query


@pytest.mark.parametrize(
    "cookie, kept",
    [
        ("jupyterhub-hub-login=a; app=1", "app=1"),
        ("app=1;jupyterhub-session-id=x;  _xsrf=y ; other=2", "app=1; other=2"),
        ("jhproxy-routes-auth=s", ""),
        ("jupyterhub-user-alice=z", ""),
        ("not_jupyterhub-x=1", "not_jupyterhub-x=1"),
        # JupyterHub's cookie_host_prefix_enabled, and the sidecar's own behind HTTPS
        ("__Host-jupyterhub-hub-login=a; __host-jhproxy-routes-session-1=b; __Secure-_xsrf=c; __Host-app=1", "__Host-app=1"),
        ("__Host-service-announcements=t; service-x=1", "service-x=1"),
    ],
)
def test_cookie_filter(cookie, kept):
    assert filter_cookies(cookie) == kept


def test_token_query_parameter_is_removed():
    assert split_query("a=1&proxy_token=t&b=2") == ("t", "a=1&b=2")
    assert split_query("a=1") == (None, "a=1")
    token, rest = split_query("proxy_token=t1&proxy_token=t2")
    assert token == "t1" and "proxy_token" not in rest
    # an encoded name is still the token, and is still removed
    assert split_query("proxy%5Ftoken=t&x=1") == ("t", "x=1")
    assert split_query("proxy_%74oken=t&x=1") == ("t", "x=1")
    assert split_query("jhproxy_routes_%6Cogin=t&x=1", "jhproxy_routes_login") == ("t", "x=1")
    # the rest of the query is passed on byte for byte, not re-encoded
    assert split_query("a=%FF&proxy_token=t&b=\u00e9;c") == ("t", "a=%FF&b=\u00e9;c")
