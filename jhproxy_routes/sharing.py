"""The ``shared`` visibility: whoever the hub lets access a server, as JupyterHub decides it.

A user may access ``alice/<name>`` when their permissions hold the scope
``access:servers!server=alice/<name>``, or a broader one covering it (``!user=alice``,
``!group=<a group of alice's>``, unfiltered): from their roles and their groups' roles, and
from shares with them or with their groups (JupyterHub's sharing; an accepted share code is a
share). Both answers here are read from the hub's database when asked, nothing is copied:
a share revoked, a role or a group changed counts from the next question on.

- ``may_access``: for the sidecar, about one visitor (``handlers.ServerAccessHandler``);
  the sidecar caches the answer for ``login_cache_max_age`` seconds.
- ``shared_with``: for the page, who that is now besides the owner (users and groups, and
  whether roles with access to every server exist, unnamed).
"""

from __future__ import annotations

import warnings

from jupyterhub import orm
from jupyterhub.scopes import expand_scopes, get_scopes_for, has_scope

ALL_SERVERS = "access:servers"  # unfiltered: every server of every user


def access_scope(owner: str, servername: str) -> str:
    return f"access:servers!server={owner}/{servername}"


def may_access(db, orm_user, owner: str, servername: str) -> bool:
    """Whether ``orm_user`` may now access the server ``owner/servername``: the user's own
    permissions (roles, groups, shares), whatever credential asked."""
    return bool(has_scope(access_scope(owner, servername), get_scopes_for(orm_user), db=db))


def shared_with(db, orm_spawner) -> dict:
    """Who besides the owner may access the server now, as the page shows it:
    ``{"users": [...], "groups": [...], "all_servers": bool}``. Named: the server's shares
    (with users and groups) and the members of roles whose scopes grant access to this server
    in particular (``!server=``, ``!user=`` its owner, ``!group=`` one of the owner's groups).
    Roles that grant access to every server (the hub's admins, a support role) are not named,
    as the owner may not see who holds them: ``all_servers`` says that there are such
    users. (A role's ``self`` scopes are each member's own servers: they add nobody here.)"""
    owner = orm_spawner.user.name
    target = access_scope(owner, orm_spawner.name)
    users: set[str] = set()
    groups: set[str] = set()
    all_servers = False
    for share in orm_spawner.shares:
        if target in share.scopes:
            if share.user is not None:
                users.add(share.user.name)
            elif share.group is not None:
                groups.add(share.group.name)
    for role in db.query(orm.Role):  # members loaded only for roles that grant access
        with warnings.catch_warnings():  # owner-relative scopes, expanded without an owner: dropped
            warnings.simplefilter("ignore")
            scopes = expand_scopes(role.scopes)
        if ALL_SERVERS in scopes:
            all_servers = all_servers or bool(role.users or role.groups)
        elif has_scope(target, scopes, db=db):
            users.update(user.name for user in role.users)
            groups.update(group.name for group in role.groups)
    users.discard(owner)
    return {"users": sorted(users), "groups": sorted(groups), "all_servers": all_servers}
