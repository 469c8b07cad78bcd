"""What a Kubernetes API request does, read from its method, path and query (sans-IO).

Follows the API server's own reading (``k8s.io/apiserver/pkg/endpoints/request``
``RequestInfoFactory``): ``/api/v1/...`` is the core group, ``/apis/GROUP/VERSION/...`` a
named group; ``namespaces/NS/`` scopes a resource; then ``RESOURCE[/NAME[/SUBRESOURCE]]``.
Verbs: GET is ``get`` (``list`` without a name, ``watch`` with ``?watch=true`` or the
legacy ``/watch/`` prefix), POST ``create``, PUT ``update``, PATCH ``patch``, DELETE
``delete`` (``deletecollection`` without a name). The subresources ``exec``, ``attach``,
``portforward`` and ``log`` are verbs of their own here (what policy wants to name).
Anything else (``/version``, ``/healthz``, ``/openapi/v3``) is a non-resource request
whose verb is the method in lower case.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

_SUBRESOURCE_VERBS = frozenset({"exec", "attach", "portforward", "log", "proxy"})
_METHOD_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclass(frozen=True, slots=True)
class KubeRequest:
    verb: str
    resource_request: bool
    group: str = ""  # "" is the core group
    version: str = ""
    namespace: str = ""
    resource: str = ""
    name: str = ""
    subresource: str = ""
    path: str = ""

    def to_record(self) -> dict[str, str]:
        out = {"verb": self.verb}
        if self.resource_request:
            out.update(group=self.group, version=self.version, resource=self.resource)
            for key in ("namespace", "name", "subresource"):
                value = getattr(self, key)
                if value:
                    out[key] = value
        else:
            out["path"] = self.path
        return out


def parse_kube(method: str, target: str) -> KubeRequest:
    """The :class:`KubeRequest` of ``method`` on ``target`` (origin-form path and query)."""
    path, _, query = target.partition("?")
    parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
    verb_of_method = method.lower()
    if len(parts) < 2 or parts[0] not in ("api", "apis"):
        return KubeRequest(verb_of_method, False, path=path)
    if parts[0] == "api":
        group, rest = "", parts[1:]
    else:
        if len(parts) < 3:
            return KubeRequest(verb_of_method, False, path=path)
        group, rest = parts[1], parts[2:]
    version, rest = rest[0], rest[1:]
    watch_prefix = False
    if rest and rest[0] == "watch":
        watch_prefix, rest = True, rest[1:]
    namespace = ""
    if len(rest) >= 2 and rest[0] == "namespaces":
        if len(rest) == 2:
            # /api/v1/namespaces/NAME is the namespace object itself.
            rest = ["namespaces", rest[1]]
        else:
            namespace, rest = rest[1], rest[2:]
    if not rest:
        return KubeRequest(verb_of_method, False, path=path)
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = "/".join(rest[2:]) if len(rest) > 2 else ""
    if namespace == "" and resource == "namespaces" and name:
        namespace = name
    params = parse_qs(query)
    if method in ("GET", "HEAD"):
        if watch_prefix or params.get("watch", [""])[0] in ("true", "1"):
            verb = "watch"
        else:
            verb = "get" if name else "list"
    elif method == "DELETE" and not name:
        verb = "deletecollection"
    else:
        verb = _METHOD_VERBS.get(method, method.lower())
    if subresource in _SUBRESOURCE_VERBS:
        verb = subresource
    return KubeRequest(
        verb=verb,
        resource_request=True,
        group=group,
        version=version,
        namespace=namespace,
        resource=resource,
        name=name,
        subresource=subresource,
        path=path,
    )


__all__ = ["KubeRequest", "parse_kube"]
